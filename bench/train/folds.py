"""One fold's data, placed for training: `FoldData`.

The dataset's images where they fit (bench.train.data: on the device, in RAM or the decode
cache's memory map), the fold's train/val/test indices and labels beside them, the
normalisation of its training split, and the recipe's transforms. Every model and seed of a
run trains on the same FoldData of its fold; K folds share one copy of the images.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from bench.amp import resolve_precision
from bench.config import Recipe
from bench.train.data import Gather, Prefetcher, decide_placement, place_images
from bench.train.distributed import Dist
from neu.augment import eval_batch, train_batch


@dataclass
class FoldData:
    """The images of a dataset, placed once, and one split (fold) of them, with the recipe."""

    dataset: object  # neu.dataset.Dataset
    split: object  # neu.split.Split
    recipe: Recipe
    device: torch.device
    deterministic: bool = False
    compile: bool = False
    data_placement: str = "auto"
    memory_budget_mb: float | None = None
    dist: Dist = field(default_factory=Dist)  # this process's place in a torchrun group
    # Another fold's FoldData over the same dataset whose placed images this one shares:
    # K folds must not hold K copies on the GPU, nor place them differently.
    images_from: FoldData | None = None

    def __post_init__(self):
        self._place_images()
        # Indices and labels live beside the images: on the device, or on the CPU where
        # batches are gathered before they are sent over.
        on_device = self.placement == "device"
        self.index_device = self.device if on_device else torch.device("cpu")
        self.gather = Gather(self.dataset, self.images, self.device, on_device)
        ix = self.index_device
        self.labels = torch.as_tensor(np.asarray(self.dataset.labels), device=ix)
        self.train_idx = torch.as_tensor(np.asarray(self.split.train), device=ix)
        self.val_idx = torch.as_tensor(np.asarray(self.split.val), device=ix)
        self.test_idx = torch.as_tensor(np.asarray(self.split.test), device=ix)
        self.classes = list(self.dataset.classes)
        # The training split's statistics, on the device once: a Python list would be copied
        # from pageable memory every batch, which synchronises the CUDA stream.
        self.mean = torch.tensor(self.split.mean, dtype=torch.float32, device=self.device)
        self.std = torch.tensor(self.split.std, dtype=torch.float32, device=self.device)
        self.precision = resolve_precision(self.device, self.recipe.amp)
        self.amp_dtype = self.precision.dtype
        # channels_last on CPU too: on an AMX Xeon ResNet-50 trained 1.4x (fp32) and 2.4x
        # (bf16) faster than in contiguous format (README, bench train-speed).
        self.memory_format = (
            torch.channels_last if self.recipe.channels_last else torch.contiguous_format
        )

    def _place_images(self) -> None:
        src = self.images_from
        if src is not None and src.dataset is self.dataset and src.device == self.device:
            self.placement, self.placement_reason = src.placement, src.placement_reason
            self.images = src.images
            return
        nbytes = self.dataset.images.numel() * self.dataset.images.element_size()
        self.placement, self.placement_reason = decide_placement(
            nbytes, self.device, self.data_placement, self.memory_budget_mb
        )
        if self.placement == "mmap" and getattr(self.dataset, "image_map", None) is None:
            self.placement_reason += " (no cache file: the images are in RAM already)"
        self.images = place_images(self.dataset, self.placement, self.device)

    def autocast(self):
        return self.precision.autocast()

    def sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def placement_record(self) -> dict:
        return {
            "placement": self.placement,
            "reason": self.placement_reason,
            "images_mb": self.dataset.images.numel() / 2**20,
        }

    def batches(self, idx: torch.Tensor, batch_size: int, n_batches: int | None = None):
        """(uint8 images on the device, labels on the device) per batch of `idx`, prefetched
        one batch ahead unless the images are on the device already."""
        n = n_batches if n_batches is not None else -(-len(idx) // batch_size)
        parts = [idx[b * batch_size : (b + 1) * batch_size] for b in range(n)]
        labels = iter(parts)
        for raw in Prefetcher(self.gather, parts, background=self.placement != "device"):
            y = self.labels.index_select(0, next(labels)).to(self.device, non_blocking=True)
            yield raw, y

    def train_inputs(self, idx: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return self.augment(self.gather(idx), generator)

    def augment(self, raw: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Training images: random resized crop and flip (the recipe's), normalised."""
        r = self.recipe
        if r.augment_corruptions:
            raw = _corrupt_batch(raw, generator)
        return train_batch(
            raw,
            image_size=r.image_size,
            mean=self.mean,
            std=self.std,
            generator=generator,
            scale=(r.crop_scale_min, 1.0),
            hflip=r.hflip,
            memory_format=self.memory_format,
        )

    def eval_inputs(self, idx: torch.Tensor) -> torch.Tensor:
        return self.eval_transform(self.gather(idx))

    def eval_transform(self, raw: torch.Tensor) -> torch.Tensor:
        """Evaluation images: resized and normalised, never randomly cropped."""
        r = self.recipe
        x = eval_batch(raw, image_size=r.image_size, mean=self.mean, std=self.std)
        return x.contiguous(memory_format=self.memory_format)


# The name bench.cli.postrun and some tests import (from bench.train.loop).


def place_folds(dataset, splits, recipe: Recipe, device: torch.device, **options) -> dict:
    """fold -> FoldData, one per split (fold None without --folds); the first places the
    images (GPU, RAM or the cache's map) and the others share them. `options`: FoldData's
    keyword fields (deterministic, compile, data_placement, memory_budget_mb, dist)."""
    folds: dict = {}
    for split in splits:
        first = next(iter(folds.values()), None)
        folds[split.fold] = FoldData(dataset, split, recipe, device, images_from=first, **options)
    return folds


def _corrupt_batch(raw: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """--augment-corruptions on the CPU (neu.corrupt is numpy): the seed comes from the
    training generator, so the stream stays reproducible and rank-identical."""
    from neu.corrupt import augment_batch

    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    out = augment_batch(raw.cpu().numpy(), seed)
    return torch.from_numpy(out).to(raw.device, non_blocking=True)
