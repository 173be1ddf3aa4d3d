"""The held-out test images of a split manifest, decoded at their original resolution.

Torch-free (numpy + Pillow): the corruption benchmark (neu.corrupt) needs the test images
before any resize, and `bench robustness MODEL.onnx` must run where torch is not installed.
A manifest (split.json, written by `bench run`) names every file, its class, its sha256 and
its split; only the "test" entries are read (the validation ones when the split has no test
part), and each file's bytes must still hash to the manifest's value.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from neu.cache import hash_file
from neu.image import load_image
from neu.layout import DatasetError, Problem, scan


@dataclass
class HeldOut:
    files: list[str]  # relative to `root`, as in the manifest
    labels: np.ndarray  # int64, index into `classes`
    hashes: list[str]  # sha256 of each file's bytes: the corruption seed's content key
    pixels: list[np.ndarray]  # uint8 (C, H, W) each, original resolution
    classes: list[str]
    root: Path
    split: str  # "test" or "val"
    manifest: Path
    split_hash: str | None

    def __len__(self) -> int:
        return len(self.files)


def check_classes(folder_classes: list[str], model_classes: list[str], where: str) -> None:
    """Raise DatasetError listing how the folder's classes differ from the model's."""
    if list(folder_classes) == list(model_classes):
        return
    missing = [c for c in model_classes if c not in folder_classes]
    extra = [c for c in folder_classes if c not in model_classes]
    parts = []
    if missing:
        parts.append(f"missing {missing}")
    if extra:
        parts.append(f"not the model's {extra}")
    if not parts:
        parts.append(f"same names in another order: {list(folder_classes)}")
    raise DatasetError(
        f"{where}: its classes do not match the model's {list(model_classes)}: " + "; ".join(parts),
        fix="point --data at the dataset the model was trained on (same class folders or "
        "file prefixes)",
    )


def load_heldout(
    manifest: str | Path,
    data: str | Path,
    *,
    channels: int,
    classes: list[str] | None = None,
    layout: str = "auto",
) -> HeldOut:
    """The manifest's test images under `data` (decoded with `channels`), checked.

    classes: the model's; the folder's own classes (scanned, not decoded) must equal them.
    """
    manifest = Path(manifest)
    m, items = _read_manifest(manifest)
    sc = scan(data, layout=layout)
    if classes is not None:
        check_classes(sc.classes, classes, str(sc.root))
    if classes is not None and list(m.get("classes", classes)) != list(classes):
        check_classes(list(m["classes"]), classes, f"the manifest {manifest}")
    class_names = list(classes if classes is not None else m["classes"])
    split = "test" if any(it["split"] == "test" for it in items) else "val"
    chosen = [it for it in items if it["split"] == split]
    problems, files, labels, hashes, pixels = _read_items(
        chosen, Path(sc.root), class_names, channels
    )
    if problems:
        raise DatasetError(
            f"{len(problems)} {split} image(s) of {manifest} unusable under {sc.root}",
            problems,
            fix="restore the original files, or pass the --data folder the run was made on",
        )
    if not files:
        raise DatasetError(f"{manifest} has no {split} images", [])
    return HeldOut(
        files=files,
        labels=np.asarray(labels, dtype=np.int64),
        hashes=hashes,
        pixels=pixels,
        classes=class_names,
        root=Path(sc.root),
        split=split,
        manifest=manifest,
        split_hash=m.get("split_hash"),
    )


def _read_manifest(manifest: Path) -> tuple[dict, list[dict]]:
    """(the manifest, its items)."""
    try:
        m = json.loads(manifest.read_text())
        items = m["items"]
    except (OSError, ValueError, KeyError) as e:
        raise DatasetError(
            f"cannot read the split manifest {manifest} ({e})",
            fix="pass the split.json that `bench run` wrote next to results.json",
        ) from None
    return m, items


def _read_items(chosen: list[dict], root: Path, class_names: list[str], channels: int):
    """(problems, files, labels, hashes, pixels) of the chosen manifest items: each file must
    still hash to the manifest's sha256 and carry one of the model's classes."""
    problems, files, labels, hashes, pixels = [], [], [], [], []
    for it in chosen:
        path = root / it["file"]
        h = hash_file(path)
        if not isinstance(h, str):
            problems.append(Problem(it["file"], f"cannot be read ({h})"))
            continue
        if h != it["sha256"]:
            problems.append(Problem(it["file"], "contents changed since the manifest was made"))
            continue
        if it["class"] not in class_names:
            problems.append(Problem(it["file"], f"class {it['class']!r} is not the model's"))
            continue
        files.append(it["file"])
        labels.append(class_names.index(it["class"]))
        hashes.append(h)
        pixels.append(load_image(path, size=None, channels=channels))
    return problems, files, labels, hashes, pixels
