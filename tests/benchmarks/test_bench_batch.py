"""Throughput of building one augmented training batch (32 x 200 px) from the in-memory uint8
store on CPU: the per-step data cost a training loop pays. Uses the real set when NEU_DATA is
set, else a synthetic store of the same shape."""

from __future__ import annotations

import os

import torch

from neu.augment import eval_batch, train_batch

BATCH, SIZE = 32, 200
MEAN, STD = (0.5,) * 3, (0.2,) * 3


def _store() -> tuple[torch.Tensor, str]:
    root = os.environ.get("NEU_DATA")
    if root and os.path.isdir(root):
        from neu.dataset import load_dataset

        return load_dataset(root, image_size=SIZE).images, "NEU-CLS"
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (512, 1, SIZE, SIZE), generator=g, dtype=torch.uint8), "synthetic"


def test_train_batch_cpu(benchmark):
    store, source = _store()
    g = torch.Generator().manual_seed(0)

    def step():
        idx = torch.randint(0, len(store), (BATCH,), generator=g)
        return train_batch(store[idx], image_size=SIZE, mean=MEAN, std=STD, generator=g)

    out = benchmark(step)
    assert out.shape == (BATCH, 3, SIZE, SIZE)
    if benchmark.stats is None:  # --benchmark-disable: ran once as a plain test
        return
    rate = 1 / benchmark.stats.stats.mean
    benchmark.extra_info.update(
        source=source, batch=BATCH, image_size=SIZE, batches_per_s=rate, images_per_s=rate * BATCH
    )
    print(f"\ntrain_batch {BATCH}x{SIZE}px on CPU ({source}): {rate:.1f} batches/s")


def test_eval_batch_cpu(benchmark):
    store, source = _store()

    out = benchmark(lambda: eval_batch(store[:BATCH], image_size=SIZE, mean=MEAN, std=STD))
    assert out.shape == (BATCH, 3, SIZE, SIZE)
    if benchmark.stats is None:  # --benchmark-disable: ran once as a plain test
        return
    rate = 1 / benchmark.stats.stats.mean
    benchmark.extra_info.update(source=source, batch=BATCH, batches_per_s=rate)
    print(f"\neval_batch {BATCH}x{SIZE}px on CPU ({source}): {rate:.1f} batches/s")
