"""The images a trained checkpoint is judged on in `bench speed --checkpoint`.

A best.pt records the hashes of the dataset and of the split it was trained and tested on
(and how to re-derive the split). Given that dataset, `checkpoint_images` re-derives the
split exactly as `python -m exports verify` does, refuses a dataset or split whose hash
differs (its "test images" would be other images, maybe training ones), and returns what
`bench run` uses after training: calibration images from the TRAINING split only (seeded,
class-stratified) and every test image (validation when there is no test split) with labels.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

SPLIT_KEYS = ("seed", "val_fraction", "test_fraction", "limit_per_class", "use_layout_split",
              "folds", "fold")  # fmt: skip


def resolve_data(flag: str | None) -> tuple[str | None, str]:
    """(dataset folder or None, where it came from): --data, else $NEU_DATA."""
    if flag:
        return flag, "--data"
    env = os.environ.get("NEU_DATA")
    return (env, "NEU_DATA") if env else (None, "")


def checkpoint_images(meta: dict, data: str | Path, origin: str, calibration_images: int):
    """(CalibrationData, FidelityData) of the checkpoint `meta` on the dataset at `data`.

    Raises ValueError naming `origin` (the flag or variable the folder came from) when the
    dataset or the re-derived split is not the checkpoint's.
    """
    from bench.measure.deployment import CalibrationData, FidelityData
    from exports.quantize import calibration_indices
    from neu.dataset import load_dataset
    from neu.image import normalize
    from neu.split import make_split

    ds = load_dataset(data, image_size=meta["image_size"], channels=meta["channels"])
    fix = f"pass the dataset it was trained on with --data (or NEU_DATA), or omit {origin}"
    if ds.dataset_hash != meta.get("dataset_hash"):
        raise ValueError(
            f"{origin} {data}: dataset hash {ds.dataset_hash[:12]} is not the checkpoint's "
            f"{str(meta.get('dataset_hash'))[:12]} (files added, removed, changed or "
            f"relabelled): its test images would not be the checkpoint's; {fix}"
        )
    split_info = meta.get("split") or {}
    split = make_split(ds, **{k: v for k, v in split_info.items() if k in SPLIT_KEYS})
    if split.split_hash != meta.get("split_hash"):
        raise ValueError(
            f"{origin} {data}: the split re-derived from the checkpoint ({split_info}) has hash "
            f"{split.split_hash[:12]}, the checkpoint records {str(meta.get('split_hash'))[:12]}; "
            f"{fix}"
        )
    images = ds.images
    pixels = images.numpy() if hasattr(images, "numpy") else np.asarray(images)
    labels = np.asarray(ds.labels)
    seed = int(split_info.get("seed", 0))
    cal = calibration_indices(labels, np.asarray(split.train), calibration_images, seed=seed)
    test, source = np.asarray(split.test, dtype=np.int64), "test split"
    if len(test) == 0:
        test, source = np.asarray(split.val, dtype=np.int64), "validation split (no test split)"
    mean, std = meta["mean"], meta["std"]
    return (
        CalibrationData(inputs=normalize(pixels[cal], mean, std), seed=seed, source="train split"),
        FidelityData(
            inputs=normalize(pixels[test], mean, std),
            labels=labels[test],
            source=f"{source} of {data}",
        ),  # fmt: skip
    )
