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
        empty = not any(Path(sc.root).iterdir())
        raise DatasetError(
            f"no images found in {sc.root} (layout {sc.layout}; looked for "
            f"{', '.join(sorted(IMAGE_EXTENSIONS))})",
            problems,
            fix=f"the folder is empty: remove it and run `{download_command(sc.root)}`"
            if empty
            else "point at the folder that holds the images, or pick the right --layout",
        )
    workers = decode_workers(len(sc.files))
    paths = [sc.root / f for f in sc.files]

    # 1. Hash every file's bytes: the cache key, the manifest's tamper check, the split order.
    hashes = chunked_map(hash_file, paths, workers)
    readable = [i for i, h in enumerate(hashes) if isinstance(h, str)]
    for i, h in enumerate(hashes):
        if not isinstance(h, str):
            problems.append(Problem(sc.files[i], f"cannot be read ({h})"))
    t_hash = time.perf_counter()

    # 2. Decode, or read the decoded tensor from the cache.
    file_hashes = [hashes[i] for i in readable]
    key = cache_key(file_hashes, image_size, channels)
    cache = None
    if cache_dir is not False:
        cache = cache_paths(Path(cache_dir or default_cache_dir()), key)
    hit = read_cache(*cache, key, len(readable)) if cache else None
    if hit is None:
        images, meta, image_map = decode_all(
            [paths[i] for i in readable], image_size, channels, workers, key=key, cache=cache
        )
    else:
        images, meta, image_map = hit
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
        # Only when files were excluded after decoding (conflicting duplicate labels with
        # exclude_bad): the kept rows are copied into memory.
        images, image_map = images[rows], None
    idx = [k[0] for k in keep]
    files = [sc.files[i] for i in idx]
    labels = np.array([sc.labels[i] for i in idx], dtype=np.int64)
    fh = [hashes[i] for i in idx]
    ph = [k[2]["pixel_hash"] for k in keep]
    by_hash: dict[str, list[str]] = {}
    for f, h in zip(files, ph, strict=True):
        by_hash.setdefault(h, []).append(f)
    duplicates = sorted(
        (sorted(g, key=natural_key) for g in by_hash.values() if len(g) > 1),
        key=lambda g: natural_key(g[0]),
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
        images=torch.from_numpy(images),
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
        bit_depths=dict(sorted(Counter(k[2]["bit_depth"] for k in keep).items())),
        cache_file=cache[0] if cache else None,
        from_cache=hit is not None,
        image_map=image_map,
        timings_s={
            "hash_s": t_hash - t0,
            "decode_s" if hit is None else "cache_load_s": t_decode - t_hash,
            "total_s": t_end - t0,
        },
    )
