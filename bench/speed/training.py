"""Training compute rate on a batch already in memory (pipeline efficiency's denominator)."""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch

from bench.speed.backends import _AMP_DTYPES, PRECISIONS
from bench.speed.timing import measure, throughput_img_s


def training_compute_throughput(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    batch: torch.Tensor,
    labels: torch.Tensor,
    *,
    sync: Callable[[], None] | None = None,
    precision: str = "fp32",
    warmup_iters: int = 2,
    min_seconds: float = 1.0,
    min_iters: int = 5,
    max_seconds: float | None = None,
) -> float:
    """Images/s of pure forward + backward + optimizer.step on a batch already in memory.

    This is the ceiling the real training loop could reach with a free input pipeline; see
    pipeline_efficiency(). The caller's model, optimizer AND global RNG state are untouched:
    the work runs on copy.deepcopy((model, optimizer)) (one deepcopy, so the copied optimizer
    points at the copied parameters; this doubles the model's memory for the call) inside
    torch.random.fork_rng. `precision` fp16/bf16 runs the forward under torch.autocast
    (no GradScaler: the numbers may be garbage, the speed is what is measured).
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    work_model, work_opt = copy.deepcopy((model, optimizer))
    work_model.train()
    device = batch.device
    if sync is None:
        sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else None
    amp = torch.autocast(
        device_type=device.type,
        dtype=_AMP_DTYPES.get(precision, torch.float32),
        enabled=precision != "fp32",
    )

    def step() -> None:
        work_opt.zero_grad(set_to_none=True)
        with amp:
            loss = loss_fn(work_model(batch), labels)
        loss.backward()
        work_opt.step()

    cuda_devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda_devices):
        samples = measure(
            step,
            sync=sync,
            warmup_iters=warmup_iters,
            min_seconds=min_seconds,
            min_iters=min_iters,
            max_seconds=max_seconds,
        )
    return throughput_img_s(samples, batch.shape[0])


def pipeline_efficiency(train_img_s: float, compute_img_s: float) -> float:
    """Measured training img/s (real epochs, first excluded) / pure-compute img/s.

    1.0 means the input pipeline is free; 0.5 means half the time the GPU/CPU waits for data.
    """
    if not compute_img_s > 0:
        raise ValueError(f"compute_img_s must be > 0, got {compute_img_s}")
    return train_img_s / compute_img_s
