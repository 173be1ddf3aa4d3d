"""The largest batch that fits: walk down a timm-like ladder of batch sizes on out-of-memory."""

from __future__ import annotations

from collections.abc import Callable

import torch


def decay_batch_step(batch_size: int, num_intra_steps: int = 2) -> int:
    """Next smaller batch after an OOM, stepping between powers of two (as timm does).

    num_intra_steps=2: 64 -> 48 -> 32 -> 24 -> 16 -> 12 -> 8 -> 6 -> 4 -> 3 -> 2 -> 1 -> 0.
    """
    if batch_size <= 1:
        return 0
    base = 1 << ((batch_size - 1).bit_length() - 1)  # largest power of two < batch_size
    step = max(base // num_intra_steps, 1)
    return base + ((batch_size - base - 1) // step) * step


def is_oom(error: BaseException) -> bool:
    """True for CUDA (or other) out-of-memory errors; never for e.g. illegal memory access."""
    if isinstance(error, torch.cuda.OutOfMemoryError):
        return True
    return isinstance(error, RuntimeError) and "out of memory" in str(error).lower()


def find_max_batch(
    try_batch: Callable[[int], None],
    start: int,
    *,
    min_batch: int = 1,
    is_oom: Callable[[BaseException], bool] = is_oom,
    num_intra_steps: int = 2,
) -> int:
    """Largest batch on the decay ladder from `start` for which try_batch(batch) succeeds.

    Tries `start`; on out-of-memory shrinks with decay_batch_step and retries (freeing the
    CUDA cache in between). Like timm it only walks DOWN the ladder, so the answer is the
    first rung that fits (e.g. 32 when 37 would also fit), not a bisection. Non-OOM errors
    propagate; OOM even at `min_batch` raises RuntimeError.
    """
    batch = start
    while batch >= min_batch and batch > 0:
        failed = False
        try:
            try_batch(batch)
            return batch
        except Exception as e:  # noqa: BLE001 - filtered by is_oom, others re-raised
            if not is_oom(e):
                raise
            failed = True
        # Outside the except block the traceback (and the tensors its frames hold) is gone,
        # so the cache can actually be released.
        if failed and torch.cuda.is_available():
            torch.cuda.empty_cache()
        batch = decay_batch_step(batch, num_intra_steps)
    raise RuntimeError(
        f"out of memory at every batch size from {start} down to {min_batch}: "
        "use a smaller image size or model, or free GPU memory"
    )
