"""Train/val/test split: stratified, seeded, identical on every machine, leak-free.

Default 70/10/20: val picks the best epoch, test is touched once, by the chosen checkpoint,
so its accuracy and interval are honest. With folds=K the test set is fold `fold` of a
stratified K-fold partition (every image is a test image in exactly one fold) and val is
carved from the other folds.

The order inside each class comes from sha256(f"{seed}:{group key}") where the group key is
the content hash of an exact-duplicate group (the smallest file sha256 in it). So the split
depends only on the seed and the file contents: not on Python's hash(), the global RNG, file
names, listing order or the number of processes. Duplicates move as one group, so the same
pixels can never sit in train and in val.

Normalisation statistics come from the training images only (val must stay unseen), counted
exactly with a 256-bin histogram per channel.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from neu._io import atomic_write_json
from neu.dataset import Dataset, DatasetError, Problem

MANIFEST_VERSION = 1
SPLITS = ("train", "val", "test")


@dataclass
class Split:
    seed: int
    val_fraction: float
    test_fraction: float
    limit_per_class: int | None
    source: str  # "seeded" | "layout" | "manifest"
    train: np.ndarray  # int64 indices into the Dataset
    val: np.ndarray
    test: np.ndarray
    mean: tuple[float, float, float]  # per model-input channel, 0..1 units, train only
    std: tuple[float, float, float]
    split_hash: str
    notes: list[str] = field(default_factory=list)
    folds: int = 1  # K of K-fold cross-validation; 1 = one train/val/test split
    fold: int | None = None  # which fold is the test set (None without cross-validation)

    def assignment(self, n: int) -> list[str]:
        """Per dataset index: "train" / "val" / "test" / "unused" (left out by the limit)."""
        out = ["unused"] * n
        for name in SPLITS:
            for i in getattr(self, name):
                out[int(i)] = name
        return out

    def info(self) -> dict:
        """The split's identity, as checkpoints and ONNX metadata record it: make_split(ds,
        **info) rebuilds it."""
        info = {
            "seed": self.seed,
            "val_fraction": self.val_fraction,
            "test_fraction": self.test_fraction,
            "limit_per_class": self.limit_per_class,
        }
        if self.folds > 1:
            info.update(folds=self.folds, fold=self.fold)
        return info


def _order_key(seed: int, key: str, salt: str = "") -> str:
    return hashlib.sha256(f"{seed}:{salt}{key}".encode()).hexdigest()


def _groups(ds: Dataset) -> list[list[int]]:
    """Exact pixel-duplicate groups (singletons included), as dataset indices."""
    by_pixels: dict[str, list[int]] = {}
    for i, h in enumerate(ds.pixel_hashes):
        by_pixels.setdefault(h, []).append(i)
    return list(by_pixels.values())


def _take(groups: list[list[int]], target: int) -> tuple[list[int], list[list[int]]]:
    """Walk groups in order, taking each that still fits under `target` images; a group of two
    that would overshoot is skipped for a later singleton, so counts come out exact."""
    taken, rest, n = [], [], 0
    for g in groups:
        if n + len(g) <= target:
            taken.extend(g)
            n += len(g)
        else:
            rest.append(g)
    return taken, rest


def _round(x: float) -> int:
    return int(math.floor(x + 0.5))  # half-up: no banker's rounding surprises


def split_hash_of(files: list[str], assignment: list[str]) -> str:
    """sha256 of the canonical (file, split) assignment, independent of dataset order."""
    pairs = sorted(zip(files, assignment, strict=True))
    return hashlib.sha256(json.dumps(pairs, separators=(",", ":")).encode()).hexdigest()


def channel_stats(
    images: torch.Tensor,
    index: torch.Tensor | None = None,
    chunk_bytes: int = 2 << 20,
    after_chunk=None,
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Exact per-channel mean/std (population) in 0..1 units from a 256-bin histogram, repeated
    to 3 values for gray. Integer counts: no float summation order, so every machine agrees.

    `index` picks the rows (all by default); they are read ~chunk_bytes at a time, so images
    on a memory map larger than RAM are counted without being loaded whole; `after_chunk()`
    (Dataset.release_pages) then drops the pages read."""
    index = torch.arange(images.shape[0]) if index is None else index
    if len(index) == 0:
        raise ValueError("no training images to compute mean/std from")
    values = torch.arange(256, dtype=torch.float64) / 255.0
    hist = torch.zeros((images.shape[1], 256), dtype=torch.int64)
    chunk = max(1, chunk_bytes // max(1, images[0].numel()))
    for start in range(0, len(index), chunk):
        part = images.index_select(0, index[start : start + chunk])
        for c in range(images.shape[1]):
            hist[c] += torch.bincount(part[:, c].reshape(-1), minlength=256)
        if after_chunk is not None:
            after_chunk()
    means, stds = [], []
    for c in range(images.shape[1]):
        counts = hist[c].to(torch.float64)
        n = counts.sum()
        m = (counts * values).sum() / n
        var = (counts * (values - m) ** 2).sum() / n
        means.append(float(m))
        stds.append(float(var.sqrt()))
    if len(means) == 1:
        means, stds = means * 3, stds * 3
    return tuple(means), tuple(stds)


def _finish(
    ds, seed, val_fraction, test_fraction, limit, source, parts, notes=(), folds=1, fold=None
) -> Split:
    train, val, test = (np.array(sorted(parts[s]), dtype=np.int64) for s in SPLITS)
    mean, std = channel_stats(
        ds.images, torch.from_numpy(train), after_chunk=getattr(ds, "release_pages", None)
    )
    split = Split(
        seed=seed,
        val_fraction=val_fraction,
        test_fraction=test_fraction,
        limit_per_class=limit,
        source=source,
        train=train,
        val=val,
        test=test,
        mean=mean,
        std=std,
        split_hash="",
        notes=list(notes),
        folds=folds,
        fold=fold,
    )
    split.split_hash = split_hash_of(ds.files, split.assignment(len(ds)))
    return split


def make_split(
    ds: Dataset,
    *,
    seed: int = 0,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    limit_per_class: int | None = None,
    use_layout_split: bool = False,
    folds: int = 1,
    fold: int | None = None,
) -> Split:
    """Stratified seeded split of `ds` (see module docstring).

    Per class: val gets round(n * val_fraction) images, test round(n * test_fraction), train
    the rest (at least one). limit_per_class first keeps a seeded subset of that many images
    per class (the rest are "unused"). use_layout_split takes the Kaggle layout's own
    train/valid/test instead (valid -> "val").

    folds=K > 1: each class's groups (in their seeded order) are dealt into K folds of
    near-equal size, duplicates together; test is fold `fold`, test_fraction is ignored
    (recorded as 1/K) and val takes round(n * val_fraction) of the remaining images.
    """
    test_fraction = _checked_fractions(
        val_fraction, test_fraction, limit_per_class, use_layout_split, folds, fold
    )
    groups = _groups(ds)
    if use_layout_split:
        parts, notes = _layout_parts(ds, groups)
        return _finish(
            ds, seed, val_fraction, test_fraction, limit_per_class, "layout", parts, notes
        )

    key = {id(g): min(ds.file_hashes[i] for i in g) for g in groups}
    parts: dict[str, list[int]] = {s: [] for s in SPLITS}
    for c in range(len(ds.classes)):
        cg = [g for g in groups if ds.labels[g[0]] == c]
        if limit_per_class is not None:
            cg.sort(key=lambda g: _order_key(seed, key[id(g)], "limit:"))
            chosen, _ = _take(cg, limit_per_class)
            chosen_set = set(chosen)
            cg = [g for g in cg if g[0] in chosen_set]
        cg.sort(key=lambda g: _order_key(seed, key[id(g)]))
        if folds > 1:
            _deal_fold(cg, folds, fold, val_fraction, parts)
        else:
            _deal_fractions(cg, val_fraction, test_fraction, parts)
    return _finish(
        ds, seed, val_fraction, test_fraction, limit_per_class, "seeded", parts, (), folds, fold
    )


def _checked_fractions(
    val_fraction: float,
    test_fraction: float,
    limit_per_class: int | None,
    use_layout_split: bool,
    folds: int,
    fold: int | None,
) -> float:
    """Refuse impossible split arguments; -> the test fraction (1/K with K folds)."""
    if folds < 1 or (folds > 1 and (fold is None or not 0 <= fold < folds)):
        raise ValueError(f"need folds >= 1 and 0 <= fold < folds; got folds={folds}, fold={fold}")
    if folds > 1:
        if use_layout_split:
            raise ValueError("folds > 1 makes its own test sets: it cannot use the layout's split")
        test_fraction = round(1 / folds, 6)
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ValueError(
            f"need 0 <= val_fraction, test_fraction and val+test < 1; got {val_fraction}, "
            f"{test_fraction}"
        )
    if limit_per_class is not None and limit_per_class < 1:
        raise ValueError(f"limit_per_class must be >= 1 or None, got {limit_per_class}")
    return test_fraction


def _layout_parts(ds: Dataset, groups: list[list[int]]) -> tuple[dict[str, list[int]], list[str]]:
    """The Kaggle layout's own train/valid/test as parts, and a note per moved group."""
    if ds.layout_split is None:
        raise ValueError(
            f"use_layout_split=True but the {ds.layout!r} layout has no split of its own"
            " (only the Kaggle layout train/ valid/ test/ has one)"
        )
    parts: dict[str, list[int]] = {s: [] for s in SPLITS}
    notes = []
    for g in groups:
        # A duplicate group that the layout spread over two splits would leak: keep it
        # together in the split of its first file.
        target = ds.layout_split[g[0]]
        if len({ds.layout_split[i] for i in g}) > 1:
            notes.append(f"moved duplicates {[ds.files[i] for i in g]} all to {target}")
        parts[target].extend(g)
    return parts, notes


def _deal_fold(
    cg: list[list[int]], folds: int, fold: int, val_fraction: float, parts: dict
) -> None:
    """One class's groups (seeded order) into parts: test is fold `fold` of K, val is carved
    from the other folds, train is the rest."""
    n = sum(len(g) for g in cg)
    # Deal groups into folds by their running start: fold sizes differ by at most a
    # duplicate group, and the K test sets partition the class.
    test, rest, start = [], [], 0
    for g in cg:
        (test if start * folds // n == fold else rest).append(g)
        start += len(g)
    n_val = min(_round(n * val_fraction), sum(len(g) for g in rest) - 1)
    val, rest = _take(rest, max(n_val, 0))
    parts["test"].extend(i for g in test for i in g)
    parts["val"].extend(val)
    parts["train"].extend(i for g in rest for i in g)


def _deal_fractions(
    cg: list[list[int]], val_fraction: float, test_fraction: float, parts: dict
) -> None:
    """One class's groups (seeded order) into parts: test first, then val, train the rest."""
    n = sum(len(g) for g in cg)
    n_test = _round(n * test_fraction)
    n_val = _round(n * val_fraction)
    # Keep at least one training image per class; tiny classes give up test first.
    while n_test + n_val > n - 1 and (n_test or n_val):
        if n_test:
            n_test -= 1
        else:
            n_val -= 1
    test, cg = _take(cg, n_test)
    val, cg = _take(cg, n_val)
    parts["test"].extend(test)
    parts["val"].extend(val)
    parts["train"].extend(i for g in cg for i in g)


# --- manifest ----------------------------------------------------------------------------


def save_manifest(split: Split, ds: Dataset, path: str | Path) -> Path:
    """Write the split as JSON (atomically): enough to rebuild it and to detect changed data."""
    assignment = split.assignment(len(ds))
    manifest = {
        "version": MANIFEST_VERSION,
        "seed": split.seed,
        "val_fraction": split.val_fraction,
        "test_fraction": split.test_fraction,
        "limit_per_class": split.limit_per_class,
        "folds": split.folds,
        "fold": split.fold,
        "source": split.source,
        "classes": list(ds.classes),
        "layout": ds.layout,
        "image_size": ds.image_size,
        "channels": ds.channels,
        "dataset_hash": ds.dataset_hash,
        "split_hash": split.split_hash,
        "mean": list(split.mean),
        "std": list(split.std),
        "counts": {s: len(getattr(split, s)) for s in SPLITS},
        "items": [
            {"file": f, "class": ds.classes[int(lab)], "sha256": h, "split": a}
            for f, lab, h, a in zip(ds.files, ds.labels, ds.file_hashes, assignment, strict=True)
        ],
    }
    return atomic_write_json(path, manifest)


def load_manifest(path: str | Path, ds: Dataset) -> Split:
    """Rebuild the Split stored at `path` for `ds`, checking that every file in the manifest
    is in `ds` with the same class and the same bytes (sha256), and nothing was added."""
    path = Path(path)
    m = _read_manifest(path)
    parts = _manifest_parts(m["items"], ds, path)
    split = _finish(
        ds,
        m["seed"],
        m["val_fraction"],
        m["test_fraction"],
        m["limit_per_class"],
        "manifest",
        parts,
        folds=m.get("folds", 1),
        fold=m.get("fold"),
    )
    _check_stated(m, path, ds, split)
    return split


def _read_manifest(path: Path) -> dict:
    """The manifest at `path`, refused unless it parses, has this version and its items still
    match its split_hash."""
    try:
        m = json.loads(path.read_text())
        items = m["items"]
        assignment = [it["split"] for it in items]
        files = [it["file"] for it in items]
    except FileNotFoundError:
        raise DatasetError(
            f"split manifest {path} does not exist",
            fix="check the path, or run without a manifest to make (and save) a new split",
        ) from None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DatasetError(
            f"split manifest {path} is not a valid manifest ({type(e).__name__}: {e})",
            fix=f"delete or replace {path}",
        ) from None
    if m.get("version") != MANIFEST_VERSION:
        raise DatasetError(
            f"split manifest {path} has version {m.get('version')!r}, expected {MANIFEST_VERSION}",
            fix=f"delete {path} to make a fresh split",
        )
    if split_hash_of(files, assignment) != m.get("split_hash"):
        raise DatasetError(
            f"split manifest {path} was edited: its items do not match its split_hash",
            fix=f"restore {path} from where it came from, or delete it to make a fresh split",
        )
    return m


def _manifest_parts(items: list[dict], ds: Dataset, path: Path) -> dict[str, list[int]]:
    """The manifest's items as dataset indices per split; any file missing, added, changed or
    relabelled since the manifest was made is a problem, and problems are refused."""
    index = {f: i for i, f in enumerate(ds.files)}
    problems = []
    parts: dict[str, list[int]] = {s: [] for s in SPLITS}
    for it in items:
        i = index.get(it["file"])
        if i is None:
            problems.append(Problem(it["file"], "in the manifest but missing from the dataset"))
            continue
        if ds.file_hashes[i] != it["sha256"]:
            problems.append(Problem(it["file"], "contents changed since the manifest was made"))
        elif ds.classes[int(ds.labels[i])] != it["class"]:
            problems.append(
                Problem(
                    it["file"],
                    f"class is now {ds.classes[int(ds.labels[i])]!r}, manifest says {it['class']!r}",
                )
            )
        if it["split"] in parts:
            parts[it["split"]].append(i)
    listed = {it["file"] for it in items}
    for f in ds.files:
        if f not in listed:
            problems.append(Problem(f, "in the dataset but not in the manifest (new file?)"))
    if problems:
        fix = (
            f"restore the original files, or delete {path} to make a fresh split"
            " (the new split will not match results made with the old one)"
        )
        raise DatasetError(
            f"the data in {ds.root} does not match split manifest {path}", problems, fix=fix
        )
    return parts


# Normalisation is counted exactly (integer histogram), so the same data give the same floats
# on every machine; anything beyond JSON's round trip means other data or an edited file.
_STAT_ATOL = 1e-9


def _check_stated(m: dict, path: Path, ds: Dataset, split: Split) -> None:
    """Every manifest field that changes training must match what the data give now.

    The tamper hash covers files and splits only, so mean/std, classes, image size and
    channels are recomputed here (split carries the recomputed values) and a manifest that
    states others is refused, naming the field: training with a hand-edited mean would
    otherwise be reported as "normalisation from the training split"."""
    fix = f"restore {path} from the run that wrote it, or delete it to make a fresh split"
    stated = {
        "classes": (m.get("classes"), list(ds.classes)),
        "image_size": (m.get("image_size"), ds.image_size),
        "channels": (m.get("channels"), ds.channels),
    }
    for name, (said, actual) in stated.items():
        if said is not None and said != actual:
            hint = (
                f"pass --image-size {said} to train at the manifest's size, or "
                if name == "image_size"
                else ""
            )
            raise DatasetError(
                f"split manifest {path} states {name} {said!r} but the data give {actual!r}",
                fix=hint + fix,
            )
    for name in ("mean", "std"):
        said, actual = m.get(name), getattr(split, name)
        ok = isinstance(said, list) and len(said) == len(actual)
        if not ok or not np.allclose(said, actual, rtol=0, atol=_STAT_ATOL):
            raise DatasetError(
                f"split manifest {path} states {name} {said!r} but the training images of its "
                f"split give {[round(v, 6) for v in actual]} (recomputed from the data)",
                fix=fix,
            )
