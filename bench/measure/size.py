"""Model size: parameters, forward FLOPs, file sizes."""

from __future__ import annotations

from pathlib import Path

import torch


def count_params(model: torch.nn.Module) -> int:
    """All parameters (trainable or not); buffers such as BN running stats are not counted."""
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def count_gflops(model: torch.nn.Module, image_size: int, channels: int = 3) -> float:
    """Forward GFLOPs for ONE image (batch 1) via torch.utils.flop_counter.FlopCounterMode.

    That counter reports FLOPs = 2 x MACs (a multiply-add counts as two operations), so
    resnet50 at 224 px gives ~8.2 GFLOPs where papers quoting MACs say ~4.1 "GFLOPs". Only ops
    with a registered formula count (convs, matmuls); BN/ReLU/pooling add zero.
    """
    from torch.utils.flop_counter import FlopCounterMode

    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    x = torch.zeros(1, channels, image_size, image_size, device=device)
    was_training = model.training
    model.eval()
    try:
        with FlopCounterMode(display=False) as counter:
            model(x)
    finally:
        model.train(was_training)
    return counter.get_total_flops() / 1e9


def file_size_mb(path: str | Path) -> float:
    """File size in MB = 10**6 bytes (decimal, like `ls --si`), not MiB."""
    return Path(path).stat().st_size / 1e6
