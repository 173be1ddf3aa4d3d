"""CUDA training path: bf16 where the GPU has it, and no host synchronisation per batch."""

import pytest
import torch
from torch import nn

from bench.amp import resolve_precision
from bench.train.loop import train_step
from neu.augment import eval_batch, train_batch

pytestmark = pytest.mark.needs_cuda


def test_auto_trains_in_bf16_on_a_bf16_gpu():
    p = resolve_precision(torch.device("cuda"), "auto")
    native = torch.cuda.is_bf16_supported(including_emulation=False)
    assert (p.name, p.grad_scaler().is_enabled()) == (("bf16", False) if native else ("fp16", True))


def test_a_training_step_never_waits_for_the_gpu():
    # set_sync_debug_mode("error") raises on any call that blocks the host on the stream:
    # a pageable host->device copy, .item(), .cpu(). A step must queue work and return.
    device = torch.device("cuda")
    u8 = torch.randint(0, 256, (64, 1, 40, 40), dtype=torch.uint8, device=device)
    mean = torch.tensor([0.4, 0.4, 0.4], device=device)
    std = torch.tensor([0.2, 0.2, 0.2], device=device)
    labels = torch.randint(0, 6, (64,), device=device)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(8, 6),
    ).to(device, memory_format=torch.channels_last)  # fmt: skip
    opt = torch.optim.Adam(model.parameters())
    p = resolve_precision(device, "auto")
    scaler, loss_fn = p.grad_scaler(), nn.CrossEntropyLoss()
    gen = torch.Generator().manual_seed(0)
    idx = torch.arange(16, device=device)
    for _ in range(2):  # the first step allocates (pinned buffers, cuDNN plans) unchecked
        x = train_batch(u8.index_select(0, idx), image_size=32, mean=mean, std=std,
                        generator=gen, memory_format=torch.channels_last)  # fmt: skip
        train_step(model, opt, scaler, loss_fn, x, labels[:16], p.autocast)
    torch.cuda.synchronize()
    if scaler.is_enabled():
        pytest.skip("fp16's GradScaler checks for inf on the host by design")
    torch.cuda.set_sync_debug_mode("error")
    try:
        loss_sum = torch.zeros((), device=device)
        for b in range(3):
            idx = torch.arange(b * 16, (b + 1) * 16, device=device)
            x = train_batch(u8.index_select(0, idx), image_size=32, mean=mean, std=std,
                            generator=gen, memory_format=torch.channels_last)  # fmt: skip
            loss_sum += train_step(model, opt, scaler, loss_fn, x, labels[:16], p.autocast)
        with torch.inference_mode(), p.autocast():
            model.eval()
            logits = model(eval_batch(u8[:32], image_size=32, mean=mean, std=std))
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert torch.isfinite(loss_sum) and logits.shape == (32, 6)
