"""--compile: torch.compile (inductor) a model before its first epoch, warmed up on every batch
shape training and evaluation will see, so compile time is reported apart from epoch time."""

from __future__ import annotations

import time

import torch
from torch import nn

NOT_COMPILED = {"compile": False, "compile_seconds": None, "compile_error": None}


def compile_model(model: nn.Module, data, loss_fn) -> tuple[nn.Module, dict]:
    """(module that runs the batches, the row's compile figures) for `model` on `data` (a
    bench.train.folds.FoldData).

    The warm-up runs forward+backward on random inputs, so weights, BatchNorm statistics,
    gradients and the global RNG are restored afterwards: training starts exactly where eager
    would. Any failure (no C++ compiler, an unsupported op) falls back to eager with the reason.
    The returned module shares its parameters with `model`; save `model`'s state_dict, which
    has no `_orig_mod.` prefixes.
    """
    info = {"compile": True, "compile_seconds": None, "compile_error": None}
    saved = {k: v.detach().clone() for k, v in model.state_dict().items()}
    t0 = time.perf_counter()
    # dynamic=False: a few fixed shapes, each specialised, rather than slower symbolic kernels.
    compiled = torch.compile(model, dynamic=False)
    try:
        with torch.random.fork_rng(devices=[data.device] if data.device.type == "cuda" else []):
            _warm_up(compiled, model, data, loss_fn)
        data.sync()
    except Exception as e:  # eager still trains; the row says why compile did not happen
        first_line = (str(e).strip().splitlines() or [""])[0][:300]
        info.update(compile=False, compile_error=f"{type(e).__name__}: {first_line}")
        compiled = model
    finally:
        model.load_state_dict(saved)
        model.zero_grad(set_to_none=True)
    info["compile_seconds"] = time.perf_counter() - t0
    return compiled, info


def _warm_up(compiled: nn.Module, model: nn.Module, data, loss_fn) -> None:
    """Compile now: forward+backward for each training batch size, forward for each
    evaluation one, on random inputs."""
    r = data.recipe
    gen = torch.Generator().manual_seed(0)

    def inputs(b: int) -> torch.Tensor:
        x = torch.randn((b, 3, r.image_size, r.image_size), generator=gen)
        return x.to(data.device).contiguous(memory_format=data.memory_format)

    model.train()
    for b in batch_sizes(len(data.train_idx), r.batch_size, drop_single=True):
        y = torch.zeros(b, dtype=torch.long, device=data.device)
        with data.autocast():
            loss = loss_fn(compiled(inputs(b)), y)
        loss.backward()
    model.eval()
    eval_sizes = {
        b
        for idx in (data.val_idx, data.test_idx)
        for b in batch_sizes(len(idx), r.eval_batch_size, drop_single=False)
    }
    with torch.inference_mode():
        for b in sorted(eval_sizes):
            with data.autocast():
                compiled(inputs(b))


def batch_sizes(n: int, batch_size: int, *, drop_single: bool) -> list[int]:
    """The distinct batch sizes a pass over n items in batches of batch_size produces."""
    sizes = [batch_size] if n >= batch_size else []
    rest = n % batch_size
    if rest > (1 if drop_single else 0):
        sizes.append(rest)
    return sizes
