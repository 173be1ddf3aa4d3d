"""Where the images are: detect one of four layouts and list files, classes and problems.

scan() lists files and classes for one of four layouts (NEU-CLS flat folder, folder per
class, the Kaggle mirror's train/valid/test, NEU-DET), without decoding anything. Anything
it cannot place (a name that matches no class, a non-image file, an empty file, an empty
class folder) becomes a Problem; companion files (README, LICENSE, checksum lists, hidden
files, ...) are listed in `ignored`. DatasetError is the one error type for bad input.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from neu import NEU_CLASSES, NEU_CODES
from neu.download import download_command
from neu.image import IMAGE_EXTENSIONS

LAYOUTS = ("neu-cls", "folder", "kaggle", "neu-det")

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


def natural_key(s: str):
    """Sort key for file names: "Cr_2" before "Cr_10"."""
    # re.split with a group alternates text/number, so lists compare.
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
    _check_root(root)
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
        _scan_kaggle(base, rel0, items, problems, ignored)
    elif layout == "neu-det":
        _scan_neu_det(base, rel0, items, problems, ignored)

    classes, rows = _labelled_rows(layout, items, problems)
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


def _check_root(root: Path) -> None:
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


def _scan_kaggle(base: Path, rel0: str, items, problems, ignored) -> None:
    """train/ valid/ test/, each holding one folder per class; anything else is a problem."""
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


def _scan_neu_det(base: Path, rel0: str, items, problems, ignored) -> None:
    """IMAGES/ (flat, or one folder per class) next to ANNOTATIONS/, which is ignored."""
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


def _labelled_rows(
    layout: str, items: list[tuple[str, str, str | None]], problems: list[Problem]
) -> tuple[list[str], list[tuple[str, int, str | None]]]:
    """(classes, (relpath, label, layout split) per image, by label then natural file order)."""
    # Flat layouts already carry canonical names; folder layouts map folder names.
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
        ((f, index[mapping[k]], s) for f, k, s in items), key=lambda r: (r[1], natural_key(r[0]))
    )
    return classes, rows


def _empty_class_folders(problems: list[Problem]) -> set[str]:
    # An empty class folder still counts when deciding whether the names are NEU classes.
    return {
        p.file.rstrip("/").rsplit("/", 1)[-1]
        for p in problems
        if p.problem.startswith("class folder has no images")
    }
