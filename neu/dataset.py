"""Find the NEU images on disk, check every one, decode them once into one uint8 tensor.

Three steps, each usable on its own:

  scan()          lists files and classes for one of four layouts, no decoding. Anything it
                  cannot place (a name that matches no class, a non-image file, an empty file,
                  an empty class folder) becomes a Problem; companion files (README, LICENSE,
                  checksum lists, hidden files, ...) are listed in `ignored`.
  load_dataset()  hashes every file's bytes, then either reads the decoded tensor from the
                  on-disk cache (keyed by those hashes) or decodes every image with
                  neu.image.load_image, the same function the deployed runtime uses. Corrupt
                  images and exact pixel duplicates are found here.
  inspect_dataset() the report behind `python -m neu inspect`.

Nothing is dropped silently: any problem raises DatasetError listing the files and the fix,
unless exclude_bad=True, in which case Dataset.excluded says exactly what was left out.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
import warnings
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from neu import NEU_CLASSES, NEU_CODES
from neu._io import atomic_path
from neu.download import download_command
from neu.image import IMAGE_EXTENSIONS, RESIZE_METHOD, load_image

LAYOUTS = ("neu-cls", "folder", "kaggle", "neu-det")

# Bump when the cached arrays or their metadata change meaning: old cache files then miss.
CACHE_VERSION = 1

FIX = "remove or repair these files, or pass --exclude-bad (exclude_bad=True) to skip them"

# --- names -------------------------------------------------------------------------------

# Folder names that mean a NEU class: NEU-CLS codes, NEU-DET long names, the Kaggle mirror's
# folder names. Compared after lower-casing and dropping everything but letters and digits,
# so "Rolled-in Scale", "rolled_in_scale" and "RS" all land on the same class.
_FOLDER_ALIASES = {
    **{code.lower(): i for i, code in enumerate(NEU_CODES)},
    **{re.sub(r"[^a-z0-9]", "", name): i for i, name in enumerate(NEU_CLASSES)},
    "crazing": 0,
    "inclusion": 1,
    "inclusions": 1,
    "patches": 2,
    "patch": 2,
    "pitted": 3,
    "pittedsurface": 3,
    "rolled": 4,
    "rolledinscale": 4,
    "scratches": 5,
    "scratch": 5,
}

# Flat folders: the class is the file-name prefix before the number. NEU-CLS codes are
# case-sensitive (README: "PS" and "RS" are upper case); NEU-DET long names are lower case
# in the release, accepted in any case since they cannot be confused.
_FLAT_NAME = re.compile(r"^(?P<prefix>.+)_(?P<num>\d+)(?:\D.*)?$")
_LONG_NAMES = {name.lower(): i for i, name in enumerate(NEU_CLASSES)}

_SPLIT_DIRS = {"train": "train", "valid": "val", "val": "val", "validation": "val", "test": "test"}
_ANNOTATION_DIRS = {"annotations"}
_IMAGE_DIRS = {"images"}

_COMPANION_PREFIXES = ("readme", "license", "licence", "copying", "notice", "citation")
_COMPANION_SUFFIXES = (".sha256", ".sha1", ".sha512", ".md5", ".sha256sum", ".sha1sum", ".md5sum")
_COMPANION_NAMES = {
    "sha256sums",
    "sha1sums",
    "sha512sums",
    "md5sums",
    "checksums",
    "thumbs.db",
    "desktop.ini",
    "__macosx",
}

# Pillow modes that can only hold gray pixels (P and RGB are checked pixel by pixel).
_GRAY_MODES = {"1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"}


def is_companion(name: str) -> bool:
    """README, LICENSE, checksum lists, OS litter and hidden files: shipped with data, not data."""
    low = name.lower()
    return (
        name.startswith(".")
        or low in _COMPANION_NAMES
        or low.startswith(_COMPANION_PREFIXES)
        or low.endswith(_COMPANION_SUFFIXES)
    )


def neu_class_of_folder(name: str) -> int | None:
    """Index into NEU_CLASSES for a class-folder name (code, long name, Kaggle name), or None."""
    return _FOLDER_ALIASES.get(re.sub(r"[^a-z0-9]", "", name.lower()))


def neu_class_of_file(name: str) -> int | None:
    """Index into NEU_CLASSES for a flat-folder file name (Cr_1.bmp, crazing_12.jpg), or None."""
    m = _FLAT_NAME.match(Path(name).stem)
    if not m:
        return None
    prefix = m.group("prefix")
    if prefix in NEU_CODES:
        return NEU_CODES.index(prefix)
    return _LONG_NAMES.get(prefix.lower())


def _natural_key(s: str):
    # "Cr_2" before "Cr_10". re.split with a group alternates text/number, so lists compare.
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s)]


# --- results -----------------------------------------------------------------------------


@dataclass
class Problem:
    file: str  # relative to the dataset root, posix; folders end with "/"
    problem: str


class DatasetError(ValueError):
    """Bad input. str() says what is wrong, lists the first 5 files, and says how to fix it."""

    def __init__(self, message: str, problems=(), fix: str | None = FIX):
        self.problems: list[Problem] = list(problems)
        lines = [message + (":" if self.problems else "")]
        for p in self.problems[:5]:
            lines.append(f"  {p.file}: {p.problem}")
        if len(self.problems) > 5:
            lines.append(f"  (and {len(self.problems) - 5} more)")
        if fix:
            lines.append(f"Fix: {fix}.")
        super().__init__("\n".join(lines))


@dataclass
class Scan:
    root: Path
    layout: str
    classes: list[str]
    files: list[str]  # candidate images, relative posix paths, sorted by (class, natural name)
    labels: list[int]
    layout_split: list[str] | None  # kaggle only: "train" / "val" / "test" per file
    problems: list[Problem] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)


@dataclass
class Dataset:
    root: Path
    layout: str
    classes: list[str]
    files: list[str]
    labels: np.ndarray  # int64 (N,)
    images: torch.Tensor  # uint8 (N, C, S, S)
    channels: int
    image_size: int
    pixel_hashes: list[str]  # sha256 of the stored pixels (bytes + shape)
    file_hashes: list[str]  # sha256 of the file bytes; what manifests and the cache key use
    duplicates: list[list[str]]  # groups of files with identical pixels
    excluded: list[Problem]
    ignored: list[str]
    layout_split: list[str] | None
    dataset_hash: str
    original_sizes: dict[str, int]  # "WxH" -> count, before resizing
    modes: dict[str, int]  # Pillow mode -> count
    resize_method: str = RESIZE_METHOD
    cache_file: Path | None = None
    from_cache: bool = False
    timings_s: dict[str, float] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.files)

    def class_counts(self) -> dict[str, int]:
        counts = np.bincount(self.labels, minlength=len(self.classes))
        return {c: int(n) for c, n in zip(self.classes, counts, strict=True)}


# --- scanning ----------------------------------------------------------------------------


def _entries(d: Path, rel: str, ignored: list[str]) -> tuple[list[os.DirEntry], list[os.DirEntry]]:
    """Visible files and folders of d, sorted; companions go to `ignored`."""
    files, dirs = [], []
    for e in sorted(os.scandir(d), key=lambda e: e.name):
        if is_companion(e.name):
            ignored.append(rel + e.name + ("/" if e.is_dir() else ""))
        elif e.is_dir():
            dirs.append(e)
        else:
            files.append(e)
    return files, dirs


def _scan_flat(d: Path, rel: str, items, problems, ignored, *, det: bool) -> None:
    files, dirs = _entries(d, rel, ignored)
    for sub in dirs:
        problems.append(
            Problem(
                rel + sub.name + "/",
                "unexpected folder in a flat image folder (the class comes from the file name);"
                " move its images up, or use --layout folder",
            )
        )
    for e in files:
        relname = rel + e.name
        if not _check_path(e, relname, problems, where="an image folder"):
            continue
        ci = neu_class_of_file(e.name)
        if ci is None:
            prefix = e.name.split("_")[0]
            hint = ""
            for code in NEU_CODES:
                if prefix.lower() == code.lower() and prefix != code:
                    hint = f" (prefixes are case-sensitive: did you mean {code!r}?)"
            expected = "crazing_1.jpg" if det else "Cr_1.bmp"
            problems.append(
                Problem(
                    relname,
                    f"file name matches no class{hint}; expected <class>_<n> like {expected}"
                    f" with class one of {', '.join(NEU_CODES)} or {', '.join(NEU_CLASSES)}",
                )
            )
            continue
        items.append((relname, NEU_CLASSES[ci], None))


def _scan_class_folders(d: Path, rel: str, items, problems, ignored, split=None) -> None:
    """One sub-folder per class; images anywhere below it (like torchvision's ImageFolder)."""
    files, dirs = _entries(d, rel, ignored)
    for e in files:
        problems.append(
            Problem(rel + e.name, "file outside the class folders (its class is unknown)")
        )
    for cdir in dirs:
        crel = rel + cdir.name + "/"
        n_before = len(items)
        n_seen = 0
        for dirpath, dirnames, filenames in os.walk(cdir.path):
            drel = crel + Path(os.path.relpath(dirpath, cdir.path)).as_posix() + "/"
            drel = drel.replace("/./", "/")
            for sub in sorted(dirnames):
                if is_companion(sub):
                    ignored.append(drel + sub + "/")
            dirnames[:] = sorted(s for s in dirnames if not is_companion(s))
            for name in sorted(filenames):
                if is_companion(name):
                    ignored.append(drel + name)
                    continue
                n_seen += 1
                path = Path(dirpath) / name
                relname = drel + name
                if _check_path(path, relname, problems, where="a class folder"):
                    items.append((relname, cdir.name, split))
        if len(items) == n_before and n_seen == 0:
            problems.append(Problem(crel, "class folder has no images (empty class)"))


def _check_path(path, relname: str, problems: list[Problem], *, where: str) -> bool:
    """True if `path` (a Path or os.DirEntry) looks like an image worth decoding; else
    records why not."""
    ext = os.path.splitext(path.name)[1].lower()
    if ext not in IMAGE_EXTENSIONS:
        problems.append(
            Problem(relname, f"not an image file (extension {ext or 'none'!r}) in {where}")
        )
        return False
    if path.stat().st_size == 0:
        problems.append(Problem(relname, "empty file (0 bytes)"))
        return False
    return True


def _visible(d: Path) -> tuple[list[str], list[str]]:
    files, dirs = [], []
    for e in os.scandir(d):
        if not is_companion(e.name):
            (dirs if e.is_dir() else files).append(e.name)
    return files, dirs


def _find_images_dir(d: Path) -> Path | None:
    _, dirs = _visible(d)
    for name in sorted(dirs):
        if name.lower() in _IMAGE_DIRS:
            return d / name
    return None


def _is_kaggle(d: Path) -> bool:
    _, dirs = _visible(d)
    names = {n.lower() for n in dirs}
    return "train" in names and names <= set(_SPLIT_DIRS)


def detect_layout(root: str | Path) -> tuple[str, Path]:
    """(layout, base folder) for `root`; base differs from root only when root wraps one
    Kaggle / NEU-DET folder (e.g. "NEU Metal Surface Defects Data/")."""
    root = Path(root)
    files, dirs = _visible(root)
    if _is_kaggle(root):
        return "kaggle", root
    if _find_images_dir(root) is not None:
        return "neu-det", root
    if any(os.path.splitext(f)[1].lower() in IMAGE_EXTENSIONS for f in files):
        return "neu-cls", root
    if not files and len(dirs) == 1:
        inner = root / dirs[0]
        if _is_kaggle(inner):
            return "kaggle", inner
        if _find_images_dir(inner) is not None:
            return "neu-det", inner
    if dirs:
        return "folder", root
    return "neu-cls", root


def _class_names(folder_names: list[str]) -> tuple[list[str], dict[str, str]]:
    """Class list + folder->class map: canonical NEU names/order when every folder is a NEU
    class (and no two folders claim the same one), else the folder names sorted."""
    idx = {n: neu_class_of_folder(n) for n in folder_names}
    values = list(idx.values())
    if folder_names and None not in values and len(set(values)) == len(values):
        order = sorted(set(values))
        return [NEU_CLASSES[i] for i in order], {n: NEU_CLASSES[i] for n, i in idx.items()}
    names = sorted(set(folder_names))
    return names, {n: n for n in names}


def scan(root: str | Path, *, layout: str = "auto") -> Scan:
    """List images, classes, problems and ignored companions under `root`. Does not decode."""
    root = Path(root).expanduser()
    if not root.exists():
        raise DatasetError(
            f"dataset path {root} does not exist",
            fix=f"download NEU-CLS there with `{download_command(root)}`, or pass the folder "
            "that holds the images (e.g. .../NEU-CLS) or set NEU_DATA",
        )
    if not root.is_dir():
        raise DatasetError(
            f"dataset path {root} is a file, not a folder",
            fix="pass the folder that holds the images (e.g. .../NEU-CLS)",
        )
    if layout != "auto" and layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; choose auto or one of {', '.join(LAYOUTS)}")

    detected, base = detect_layout(root)
    if layout == "auto":
        layout = detected
    elif layout in ("kaggle", "neu-det") and detected == layout:
        pass  # keep the base found by detection (may be one level down)
    else:
        base = root
    rel0 = "" if base == root else base.relative_to(root).as_posix() + "/"

    items: list[tuple[str, str, str | None]] = []  # (relpath, class key, layout split)
    problems: list[Problem] = []
    ignored: list[str] = []
    if layout == "neu-cls":
        _scan_flat(base, rel0, items, problems, ignored, det=False)
    elif layout == "folder":
        _scan_class_folders(base, rel0, items, problems, ignored)
    elif layout == "kaggle":
        files, dirs = _entries(base, rel0, ignored)
        splits = [d for d in dirs if d.name.lower() in _SPLIT_DIRS]
        if not any(d.name.lower() == "train" for d in splits):
            raise DatasetError(
                f"{base} is not in the Kaggle layout: no train/ folder",
                fix="point at the folder holding train/ valid/ test/, or pick another --layout",
            )
        for e in files:
            problems.append(Problem(rel0 + e.name, "file outside train/ valid/ test/"))
        for d in dirs:
            if d.name.lower() not in _SPLIT_DIRS:
                problems.append(
                    Problem(rel0 + d.name + "/", "unexpected folder next to train/ valid/ test/")
                )
        for d in splits:
            _scan_class_folders(
                Path(d.path),
                rel0 + d.name + "/",
                items,
                problems,
                ignored,
                _SPLIT_DIRS[d.name.lower()],
            )
    elif layout == "neu-det":
        images_dir = _find_images_dir(base)
        if images_dir is None:
            raise DatasetError(
                f"{base} is not in the NEU-DET layout: no IMAGES/ or images/ folder",
                fix="point at the NEU-DET folder (holding IMAGES/ and ANNOTATIONS/) or pick another --layout",
            )
        files, dirs = _entries(base, rel0, ignored)
        for d in dirs:
            if d.name.lower() in _ANNOTATION_DIRS:
                ignored.append(rel0 + d.name + "/")
            elif d.path != str(images_dir):
                problems.append(
                    Problem(rel0 + d.name + "/", "unexpected folder next to IMAGES/ (ignored?)")
                )
        for e in files:
            problems.append(Problem(rel0 + e.name, "file outside the IMAGES/ folder"))
        irel = rel0 + images_dir.name + "/"
        _, idirs = _visible(images_dir)
        if idirs and not any(
            os.path.splitext(f)[1].lower() in IMAGE_EXTENSIONS for f in _visible(images_dir)[0]
        ):
            # Some NEU-DET repacks sort IMAGES/ into one folder per class.
            _scan_class_folders(images_dir, irel, items, problems, ignored)
        else:
            _scan_flat(images_dir, irel, items, problems, ignored, det=True)

    # Class list: flat layouts already carry canonical names; folder layouts map folder names.
    if layout == "neu-cls" or (layout == "neu-det" and all(k in NEU_CLASSES for _, k, _ in items)):
        present = {k for _, k, _ in items}
        classes = [c for c in NEU_CLASSES if c in present]
        mapping = {c: c for c in classes}
    else:
        folder_names = sorted({k for _, k, _ in items} | _empty_class_folders(problems))
        classes, mapping = _class_names(folder_names)
        classes = [c for c in classes if c in {mapping[k] for _, k, _ in items}]
    index = {c: i for i, c in enumerate(classes)}
    rows = sorted(
        ((f, index[mapping[k]], s) for f, k, s in items), key=lambda r: (r[1], _natural_key(r[0]))
    )
    return Scan(
        root=root,
        layout=layout,
        classes=classes,
        files=[r[0] for r in rows],
        labels=[r[1] for r in rows],
        layout_split=[r[2] for r in rows] if layout == "kaggle" else None,
        problems=problems,
        ignored=ignored,
    )


def _empty_class_folders(problems: list[Problem]) -> set[str]:
    # An empty class folder still counts when deciding whether the names are NEU classes.
    return {
        p.file.rstrip("/").rsplit("/", 1)[-1]
        for p in problems
        if p.problem.startswith("class folder has no images")
    }


# --- hashing, decoding, cache ------------------------------------------------------------


def _workers(n_items: int) -> int:
    # Small BMPs decode in ~0.15 ms, mostly Python overhead under the GIL: on 2 cores, two
    # threads were ~2x SLOWER than one (measured on NEU-CLS). Big JPEG/PNG decodes release
    # the GIL and do gain, so use half the cores (capped), overridable via NEU_DECODE_THREADS.
    env = os.environ.get("NEU_DECODE_THREADS")
    n = int(env) if env else max(1, min(8, (os.cpu_count() or 2) // 2))
    return max(1, min(n, n_items))


def _chunked_map(fn, items: list, workers: int, chunk: int = 64) -> list:
    """fn over items on a thread pool, in order; chunks keep per-task overhead small."""
    chunks = [items[i : i + chunk] for i in range(0, len(items), chunk)]
    if workers <= 1:
        return [fn(x) for x in items]
    with ThreadPoolExecutor(workers) as ex:
        return [r for part in ex.map(lambda c: [fn(x) for x in c], chunks) for r in part]


def _hash_file(path: Path) -> str | Exception:
    try:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        return h.hexdigest()
    except OSError as e:
        return e


def pixel_hash(pixels: np.ndarray) -> str:
    h = hashlib.sha256(repr(tuple(pixels.shape)).encode())
    h.update(np.ascontiguousarray(pixels).tobytes())
    return h.hexdigest()


def _is_gray(path: Path) -> tuple[bool, tuple[int, int], str]:
    """(gray?, (w, h), mode). Header only for gray modes; RGB/P are checked pixel by pixel so
    an RGB file that only holds gray pixels is stored with 1 channel."""
    with Image.open(path) as im:
        size, mode = im.size, im.mode
        if mode in _GRAY_MODES:
            return True, size, mode
        rgb = np.asarray(im.convert("RGB"))
    gray = bool((rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all())
    return gray, size, mode


def _decode(path: Path, image_size: int, channels: int | None):
    """-> (pixels (C,S,S) uint8, (w, h), mode) or an error message."""
    try:
        gray, size, mode = _is_gray(path)
        c = channels or (1 if gray else 3)
        return load_image(path, size=image_size, channels=c), size, mode
    except Exception as e:  # any decoder failure is a per-file problem
        msg = str(e).strip() or type(e).__name__
        return f"cannot be decoded as an image ({type(e).__name__}: {msg})"


def default_cache_dir() -> Path:
    env = os.environ.get("NEU_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "neu-bench"


def _cache_key(file_hashes: list[str], image_size: int, channels: int | None) -> str:
    h = hashlib.sha256(
        f"neu-bench decode cache v{CACHE_VERSION} size={image_size} channels={channels or 'auto'}"
        f" resize={RESIZE_METHOD}\n".encode()
    )
    for fh in file_hashes:
        h.update(fh.encode() + b"\n")
    return h.hexdigest()


def _cache_read(path: Path, n_files: int):
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(bytes(z["meta"]).decode())
            images = z["images"]
        if meta.get("version") != CACHE_VERSION or len(meta["results"]) != n_files:
            return None
        return images, meta
    except Exception as e:  # a broken cache is just a miss
        warnings.warn(f"ignoring unreadable decode cache {path}: {e}", stacklevel=3)
        return None


def _cache_write(path: Path, images: np.ndarray, meta: dict) -> None:
    try:
        blob = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.savez(f, images=images, meta=blob)
    except OSError as e:
        warnings.warn(f"could not write decode cache {path}: {e}", stacklevel=3)


def _decode_all(paths: list[Path], image_size: int, channels: int | None, workers: int):
    """Decode every path once. -> (images (M,C,S,S) for the good ones, per-file meta)."""
    out = _chunked_map(lambda p: _decode(p, image_size, channels), paths, workers)
    good = [r for r in out if not isinstance(r, str)]
    c = channels or (3 if any(r[0].shape[0] == 3 for r in good) else 1)
    images = np.empty((len(good), c, image_size, image_size), dtype=np.uint8)
    results = []
    k = 0
    for r in out:
        if isinstance(r, str):
            results.append({"error": r})
            continue
        px, (w, h), mode = r
        # Gray decoded to 1 channel, repeated: identical to load_image(channels=3) for gray
        # pixels (Pillow's L->RGB copies the value, bilinear resize works per channel).
        images[k] = px if px.shape[0] == c else np.repeat(px, c, axis=0)
        results.append({"size": f"{w}x{h}", "mode": mode, "pixel_hash": pixel_hash(images[k])})
        k += 1
    return images, {"version": CACHE_VERSION, "channels": c, "results": results}


def load_dataset(
    root: str | Path,
    *,
    image_size: int = 200,
    layout: str = "auto",
    exclude_bad: bool = False,
    cache_dir: str | Path | bool | None = None,
    channels: int | None = None,
) -> Dataset:
    """Scan, check and decode `root` into a Dataset (see module docstring).

    channels=None stores 1 channel when every image is gray, else 3; pass 1 or 3 to force.
    cache_dir=None uses $NEU_CACHE_DIR or ~/.cache/neu-bench; False disables the cache.
    """
    t0 = time.perf_counter()
    if channels not in (None, 1, 3):
        raise ValueError(f"channels must be None, 1 or 3, got {channels}")
    sc = scan(root, layout=layout)
    problems = list(sc.problems)
    if not sc.files:
        empty = not any(Path(sc.root).iterdir())
        raise DatasetError(
            f"no images found in {sc.root} (layout {sc.layout}; looked for "
            f"{', '.join(sorted(IMAGE_EXTENSIONS))})",
            problems,
            fix=f"the folder is empty: remove it and run `{download_command(sc.root)}`"
            if empty
            else "point at the folder that holds the images, or pick the right --layout",
        )
    workers = _workers(len(sc.files))
    paths = [sc.root / f for f in sc.files]

    # 1. Hash every file's bytes: the cache key, the manifest's tamper check, the split order.
    hashes = _chunked_map(_hash_file, paths, workers)
    readable = [i for i, h in enumerate(hashes) if isinstance(h, str)]
    for i, h in enumerate(hashes):
        if not isinstance(h, str):
            problems.append(Problem(sc.files[i], f"cannot be read ({h})"))
    t_hash = time.perf_counter()

    # 2. Decode, or read the decoded tensor from the cache.
    file_hashes = [hashes[i] for i in readable]
    key = _cache_key(file_hashes, image_size, channels)
    cache_file = None
    if cache_dir is not False:
        cache_file = Path(cache_dir or default_cache_dir()).expanduser() / f"neu-{key[:40]}.npz"
    hit = _cache_read(cache_file, len(readable)) if cache_file and cache_file.exists() else None
    if hit is None:
        images, meta = _decode_all([paths[i] for i in readable], image_size, channels, workers)
        if cache_file is not None:
            _cache_write(cache_file, images, meta)
    else:
        images, meta = hit
    t_decode = time.perf_counter()

    # 3. Per-file results -> problems; pixel duplicates; label conflicts among duplicates.
    keep, errors = [], []  # keep: (scan index, row in images)
    row = 0
    for j, i in enumerate(readable):
        r = meta["results"][j]
        if "error" in r:
            problems.append(Problem(sc.files[i], r["error"]))
            errors.append(i)
        else:
            keep.append((i, row, r))
            row += 1
    groups: dict[str, list[int]] = {}
    for pos, (_, _, r) in enumerate(keep):
        groups.setdefault(r["pixel_hash"], []).append(pos)
    conflict: set[int] = set()
    for members in groups.values():
        labels = {sc.labels[keep[p][0]] for p in members}
        if len(labels) > 1:
            first = keep[members[0]][0]
            for p in members:
                i = keep[p][0]
                other = first if i != first else keep[members[1]][0]
                problems.append(
                    Problem(
                        sc.files[i],
                        f"same pixels as {sc.files[other]} but labelled "
                        f"{sc.classes[sc.labels[i]]!r} here and "
                        f"{sc.classes[sc.labels[other]]!r} there",
                    )
                )
            conflict.update(members)

    if problems and not exclude_bad:
        raise DatasetError(f"{len(problems)} problem(s) in {sc.root}", problems)
    keep = [k for p, k in enumerate(keep) if p not in conflict]
    if not keep:
        raise DatasetError(f"no usable images left in {sc.root}", problems)

    rows = np.array([k[1] for k in keep], dtype=np.int64)
    if len(rows) != len(images) or not np.array_equal(rows, np.arange(len(images))):
        images = images[rows]
    idx = [k[0] for k in keep]
    files = [sc.files[i] for i in idx]
    labels = np.array([sc.labels[i] for i in idx], dtype=np.int64)
    fh = [hashes[i] for i in idx]
    ph = [k[2]["pixel_hash"] for k in keep]
    by_hash: dict[str, list[str]] = {}
    for f, h in zip(files, ph, strict=True):
        by_hash.setdefault(h, []).append(f)
    duplicates = sorted(
        (sorted(g, key=_natural_key) for g in by_hash.values() if len(g) > 1),
        key=lambda g: _natural_key(g[0]),
    )
    # Used classes only: exclusions may have emptied one (an empty class is itself a problem).
    present = sorted(set(labels.tolist()))
    classes = [sc.classes[i] for i in present]
    if len(classes) != len(sc.classes):
        remap = {old: new for new, old in enumerate(present)}
        labels = np.array([remap[int(x)] for x in labels], dtype=np.int64)
    dataset_hash = hashlib.sha256(
        json.dumps(
            sorted([f, classes[int(lab)], h] for f, lab, h in zip(files, labels, fh, strict=True))
        ).encode()
    ).hexdigest()
    t_end = time.perf_counter()
    return Dataset(
        root=sc.root,
        layout=sc.layout,
        classes=classes,
        files=files,
        labels=labels,
        images=torch.from_numpy(np.ascontiguousarray(images)),
        channels=int(meta["channels"]),
        image_size=image_size,
        pixel_hashes=ph,
        file_hashes=fh,
        duplicates=duplicates,
        excluded=problems,
        ignored=sc.ignored,
        layout_split=[sc.layout_split[i] for i in idx] if sc.layout_split is not None else None,
        dataset_hash=dataset_hash,
        original_sizes=dict(Counter(k[2]["size"] for k in keep).most_common()),
        modes=dict(Counter(k[2]["mode"] for k in keep).most_common()),
        cache_file=cache_file,
        from_cache=hit is not None,
        timings_s={
            "hash_s": t_hash - t0,
            "decode_s" if hit is None else "cache_load_s": t_decode - t_hash,
            "total_s": t_end - t0,
        },
    )


# --- inspect -----------------------------------------------------------------------------


def inspect_dataset(
    root: str | Path,
    *,
    layout: str = "auto",
    exclude_bad: bool = False,
    image_size: int = 200,
    cache_dir: str | Path | bool | None = None,
) -> dict:
    """Everything `python -m neu inspect` shows, as one JSON-able dict; `usable` says whether
    load_dataset would succeed with these options."""
    report: dict = {"root": str(root), "layout": layout, "usable": False, "num_images": 0}
    try:
        ds = load_dataset(
            root, image_size=image_size, layout=layout, exclude_bad=True, cache_dir=cache_dir
        )
    except DatasetError as e:
        report.update(
            error=str(e),
            classes={},
            duplicates=[],
            problems=[vars(p) for p in e.problems],
            ignored=[],
            excluded=[],
        )
        return report
    found = [vars(p) for p in ds.excluded]
    report.update(
        layout=ds.layout,
        usable=exclude_bad or not found,
        num_images=len(ds),
        num_classes=len(ds.classes),
        classes=ds.class_counts(),
        channels=ds.channels,
        image_size=ds.image_size,
        sizes=ds.original_sizes,
        modes=ds.modes,
        duplicates=ds.duplicates,
        problems=[] if exclude_bad else found,
        excluded=found if exclude_bad else [],
        ignored=ds.ignored,
        dataset_hash=ds.dataset_hash,
    )
    if ds.layout_split is not None:
        report["layout_split"] = dict(Counter(ds.layout_split))
    if not exclude_bad and found:
        report["error"] = str(DatasetError(f"{len(found)} problem(s) in {ds.root}", ds.excluded))
    return report


def print_inspect(report: dict) -> None:
    """Rich tables for an inspect report; problems go to stderr."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    out, err = Console(), Console(stderr=True)
    out.print(f"[bold]{report['root']}[/bold]  layout: [cyan]{report['layout']}[/cyan]")
    if report.get("classes"):
        t = Table(title=f"{report['num_images']} images, {len(report['classes'])} classes")
        t.add_column("#", justify="right")
        t.add_column("class")
        t.add_column("images", justify="right")
        for i, (c, n) in enumerate(report["classes"].items()):
            t.add_row(str(i), c, str(n))
        out.print(t)
        sizes = ", ".join(f"{k} x{v}" for k, v in report["sizes"].items())
        modes = ", ".join(f"{k} x{v}" for k, v in report["modes"].items())
        out.print(f"original sizes: {sizes}")
        out.print(f"modes: {modes}  -> stored as {report['channels']} channel(s)")
        if "layout_split" in report:
            out.print(f"layout's own split: {report['layout_split']}")
        out.print(f"duplicates (identical pixels, kept in one split): {len(report['duplicates'])}")
        for g in report["duplicates"]:
            out.print("  " + " = ".join(g))
        out.print(f"dataset_hash: {report['dataset_hash']}")
    if report["ignored"]:
        out.print(f"ignored companion files: {', '.join(report['ignored'])}")

    def problem_table(title: str, items: list[dict]) -> Table:
        t = Table(title=title)
        t.add_column("file")
        t.add_column("problem")
        for p in items:
            t.add_row(p["file"], p["problem"])
        return t

    if report["excluded"]:
        out.print(
            problem_table(
                f"excluded ({len(report['excluded'])}, --exclude-bad)", report["excluded"]
            )
        )
    if report["problems"]:
        err.print(
            problem_table(f"[red]problems ({len(report['problems'])})[/red]", report["problems"])
        )
    if not report["usable"]:
        if report["problems"] and report["num_images"]:
            err.print(f"[red]not usable[/red] as is. Fix: {FIX}.", soft_wrap=True)
        else:
            msg = report.get("error", "see problems above")
            err.print(Text("not usable: ", style="red") + Text(msg), soft_wrap=True)
    else:
        out.print("[green]usable[/green]")
