"""Find the NEU images on disk, check every one, decode them once into one uint8 tensor.

Three steps, each usable on its own, each in its own module:

  neu.layout.scan()  lists files and classes for one of four layouts, no decoding.
  load_dataset()     (here) hashes every file's bytes, then either reads the decoded
                     tensor from the on-disk cache (neu.cache, keyed by those hashes) or
                     decodes every image. Corrupt images and exact pixel duplicates are
                     found here.
  neu.inspect.inspect_dataset() the report behind `python -m neu inspect`.

Nothing is dropped silently: any problem raises DatasetError listing the files and the fix,
unless exclude_bad=True, in which case Dataset.excluded says exactly what was left out.
The layout and cache names stay importable from here (`from neu.dataset import scan`); the
inspect report is neu.inspect's own (it imports load_dataset, so this module cannot import it).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from neu.cache import (
    CACHE_VERSION,
    cache_key,
    cache_paths,
    chunked_map,
    decode_all,
    decode_workers,
    default_cache_dir,
    hash_file,
    pixel_hash,
    read_cache,
)
from neu.download import download_command
from neu.image import IMAGE_EXTENSIONS, RESIZE_METHOD
from neu.layout import (
    FIX,
    LAYOUTS,
    DatasetError,
    Problem,
    Scan,
    detect_layout,
    is_companion,
    natural_key,
    neu_class_of_file,
    neu_class_of_folder,
    scan,
)

__all__ = [
    "CACHE_VERSION",
    "FIX",
    "LAYOUTS",
    "Dataset",
    "DatasetError",
    "Problem",
    "Scan",
    "default_cache_dir",
    "detect_layout",
    "is_companion",
    "load_dataset",
    "neu_class_of_file",
    "neu_class_of_folder",
    "pixel_hash",
    "scan",
]


@dataclass
class Dataset:
    root: Path
    layout: str
    classes: list[str]
    files: list[str]
    labels: np.ndarray  # int64 (N,)
    images: torch.Tensor  # uint8 (N, C, S, S); over the cache's memory map when cached
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
    # declared bits per sample -> count; each file is scaled by its own (neu.image)
    bit_depths: dict[int, int] = field(default_factory=dict)
    resize_method: str = RESIZE_METHOD
    cache_file: Path | None = None
    from_cache: bool = False
    timings_s: dict[str, float] = field(default_factory=dict)
    # The mmap under `images` (None when they are in RAM): readers call
    # release_pages() after a pass so the pages they touched leave their resident memory.
    image_map: object | None = field(default=None, repr=False)

    @property
    def images_nbytes(self) -> int:
        return self.images.numel() * self.images.element_size()

    def release_pages(self) -> None:
        """Drop this process's resident copy of the mapped pages read so far (they stay in the
        OS page cache, which the kernel reclaims under pressure). No-op for images in RAM."""
        import mmap

        if self.image_map is not None and hasattr(mmap, "MADV_DONTNEED"):
            self.image_map.madvise(mmap.MADV_DONTNEED)

    def __len__(self) -> int:
        return len(self.files)

    def class_counts(self) -> dict[str, int]:
        counts = np.bincount(self.labels, minlength=len(self.classes))
        return {c: int(n) for c, n in zip(self.classes, counts, strict=True)}


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
        raise _no_images_error(sc, problems)
    workers = decode_workers(len(sc.files))
    paths = [sc.root / f for f in sc.files]

    # 1. Hash every file's bytes: the cache key, the manifest's tamper check, the split order.
    hashes = chunked_map(hash_file, paths, workers)
    readable = _readable(sc, hashes, problems)
    t_hash = time.perf_counter()

    # 2. Decode, or read the decoded tensor from the cache.
    decoded = _decode_or_read_cache(
        [paths[i] for i in readable],
        [hashes[i] for i in readable],
        image_size=image_size,
        channels=channels,
        cache_dir=cache_dir,
        workers=workers,
    )
    t_decode = time.perf_counter()

    # 3. Per-file results -> problems; pixel duplicates; label conflicts among duplicates.
    keep = _decoded_files(sc, readable, decoded.meta["results"], problems)
    conflict = _label_conflicts(sc, keep, problems)
    if problems and not exclude_bad:
        raise DatasetError(f"{len(problems)} problem(s) in {sc.root}", problems)
    keep = [k for p, k in enumerate(keep) if p not in conflict]
    if not keep:
        raise DatasetError(f"no usable images left in {sc.root}", problems)

    ds = _assemble(sc, keep, hashes, decoded, problems, image_size)
    ds.timings_s = {
        "hash_s": t_hash - t0,
        "cache_load_s" if decoded.from_cache else "decode_s": t_decode - t_hash,
        "total_s": time.perf_counter() - t0,
    }
    return ds


def _no_images_error(sc: Scan, problems: list[Problem]) -> DatasetError:
    empty = not any(Path(sc.root).iterdir())
    return DatasetError(
        f"no images found in {sc.root} (layout {sc.layout}; looked for "
        f"{', '.join(sorted(IMAGE_EXTENSIONS))})",
        problems,
        fix=f"the folder is empty: remove it and run `{download_command(sc.root)}`"
        if empty
        else "point at the folder that holds the images, or pick the right --layout",
    )


def _readable(sc: Scan, hashes: list, problems: list[Problem]) -> list[int]:
    """Indices of the files whose bytes could be hashed; each other one is a problem."""
    for i, h in enumerate(hashes):
        if not isinstance(h, str):
            problems.append(Problem(sc.files[i], f"cannot be read ({h})"))
    return [i for i, h in enumerate(hashes) if isinstance(h, str)]


class _Decoded(NamedTuple):
    images: np.ndarray  # uint8 (M, C, S, S), one row per file that decoded
    meta: dict  # the cache sidecar: channels, shape, per-file results
    image_map: object | None  # the mmap under images, None when they are in RAM
    cache_file: Path | None
    from_cache: bool


def _decode_or_read_cache(
    paths: list[Path],
    file_hashes: list[str],
    *,
    image_size: int,
    channels: int | None,
    cache_dir: str | Path | bool | None,
    workers: int,
) -> _Decoded:
    """The cache entry for these file contents if there is a valid one, else decode them (and
    fill the entry unless cache_dir is False)."""
    key = cache_key(file_hashes, image_size, channels)
    cache = None
    if cache_dir is not False:
        cache = cache_paths(Path(cache_dir or default_cache_dir()), key)
    hit = read_cache(*cache, key, len(paths)) if cache else None
    if hit is None:
        images, meta, image_map = decode_all(
            paths, image_size, channels, workers, key=key, cache=cache
        )
    else:
        images, meta, image_map = hit
    return _Decoded(images, meta, image_map, cache[0] if cache else None, hit is not None)


def _decoded_files(
    sc: Scan, readable: list[int], results: list[dict], problems: list[Problem]
) -> list[tuple[int, int, dict]]:
    """(scan index, row in the decoded images, result) per file that decoded; each file that
    did not is added to problems."""
    keep = []
    for i, r in zip(readable, results, strict=True):
        if "error" in r:
            problems.append(Problem(sc.files[i], r["error"]))
        else:
            keep.append((i, len(keep), r))
    return keep


def _label_conflicts(
    sc: Scan, keep: list[tuple[int, int, dict]], problems: list[Problem]
) -> set[int]:
    """Positions in `keep` of files whose pixels are identical but whose labels differ: each
    is added to problems, naming the file it duplicates."""
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
    return conflict


def _assemble(
    sc: Scan,
    keep: list[tuple[int, int, dict]],
    hashes: list,
    decoded: _Decoded,
    problems: list[Problem],
    image_size: int,
) -> Dataset:
    """The Dataset of the kept files, labelled over the classes they still use."""
    images, image_map = _kept_rows(decoded.images, decoded.image_map, keep)
    idx = [k[0] for k in keep]
    results = [k[2] for k in keep]
    files = [sc.files[i] for i in idx]
    classes, labels = _used_classes(sc.classes, [sc.labels[i] for i in idx])
    fh = [hashes[i] for i in idx]
    ph = [r["pixel_hash"] for r in results]
    return Dataset(
        root=sc.root,
        layout=sc.layout,
        classes=classes,
        files=files,
        labels=labels,
        images=torch.from_numpy(images),
        channels=int(decoded.meta["channels"]),
        image_size=image_size,
        pixel_hashes=ph,
        file_hashes=fh,
        duplicates=_duplicate_groups(files, ph),
        excluded=problems,
        ignored=sc.ignored,
        layout_split=[sc.layout_split[i] for i in idx] if sc.layout_split is not None else None,
        dataset_hash=_dataset_hash(files, classes, labels, fh),
        original_sizes=dict(Counter(r["size"] for r in results).most_common()),
        modes=dict(Counter(r["mode"] for r in results).most_common()),
        bit_depths=dict(sorted(Counter(r["bit_depth"] for r in results).items())),
        cache_file=decoded.cache_file,
        from_cache=decoded.from_cache,
        image_map=image_map,
    )


def _kept_rows(images: np.ndarray, image_map, keep: list[tuple[int, int, dict]]):
    """(images, image_map) holding only the kept files' rows."""
    rows = np.array([k[1] for k in keep], dtype=np.int64)
    if len(rows) != len(images) or not np.array_equal(rows, np.arange(len(images))):
        # Only when files were excluded after decoding (conflicting duplicate labels with
        # exclude_bad): the kept rows are copied into memory.
        return images[rows], None
    return images, image_map


def _used_classes(all_classes: list[str], labels: list[int]) -> tuple[list[str], np.ndarray]:
    """(classes, labels renumbered over them). Used classes only: exclusions may have emptied
    one (an empty class is itself a problem)."""
    present = sorted(set(labels))
    classes = [all_classes[i] for i in present]
    if len(classes) == len(all_classes):
        return classes, np.array(labels, dtype=np.int64)
    remap = {old: new for new, old in enumerate(present)}
    return classes, np.array([remap[x] for x in labels], dtype=np.int64)


def _duplicate_groups(files: list[str], pixel_hashes: list[str]) -> list[list[str]]:
    """Groups of files with identical pixels, each and all in natural order."""
    by_hash: dict[str, list[str]] = {}
    for f, h in zip(files, pixel_hashes, strict=True):
        by_hash.setdefault(h, []).append(f)
    return sorted(
        (sorted(g, key=natural_key) for g in by_hash.values() if len(g) > 1),
        key=lambda g: natural_key(g[0]),
    )


def _dataset_hash(
    files: list[str], classes: list[str], labels: np.ndarray, file_hashes: list[str]
) -> str:
    """sha256 over the sorted (file, class name, content hash) triples: the same files with
    the same labels hash the same whatever order they were found in."""
    triples = sorted(
        [f, classes[int(lab)], h] for f, lab, h in zip(files, labels, file_hashes, strict=True)
    )
    return hashlib.sha256(json.dumps(triples).encode()).hexdigest()
