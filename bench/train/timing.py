"""Where a training step's time goes: data (index, augmentation, transfer) or compute
(forward, backward, step), measured in the real training steps."""

from __future__ import annotations

import time

import torch


class StepClock:
    """Data vs compute time of the real training steps, measured in the same iterations.

    Each step marks three points: before its data (index, augmentation, transfer), between
    data and compute (forward, backward, step), and after. On CPU the marks are
    perf_counter reads (CPU work is synchronous). On CUDA they are CUDA events recorded on
    the stream, so timing adds no host sync per batch; `totals()` synchronizes once, at the
    end of the epoch, and reads the device-side durations.
    """

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.steps: list[tuple] = []

    def mark(self):
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def step(self, start, middle, end) -> None:
        self.steps.append((start, middle, end))

    def totals(self) -> tuple[float, float]:
        """(data seconds, compute seconds) over the steps so far."""
        if self.cuda:
            torch.cuda.synchronize()
            spans = [(a.elapsed_time(b) / 1e3, b.elapsed_time(c) / 1e3) for a, b, c in self.steps]
        else:
            spans = [(b - a, c - b) for a, b, c in self.steps]
        return sum(d for d, _ in spans), sum(c for _, c in spans)


def pipeline_figures(data_s: float, compute_s: float, steps: int) -> dict:
    """ms per step of data and compute, and pipeline_efficiency = compute / (data + compute).

    1.0: the input pipeline costs nothing; 0.5: half of every step waits for data. It cannot
    exceed 1 because both parts come from the same steps.
    """
    total = data_s + compute_s
    return {
        "data_ms_per_step": data_s / steps * 1e3 if steps else None,
        "compute_ms_per_step": compute_s / steps * 1e3 if steps else None,
        "pipeline_efficiency": compute_s / total if total > 0 else None,
    }


def steady_train_img_s(history: list[dict]) -> tuple[float, bool]:
    """Training img/s over the timed epochs, first excluded (warm-up, allocator, caches);
    and whether the first had to be included (a one-epoch run)."""
    timed = history[1:] or history
    seconds = sum(h["train_seconds"] for h in timed)
    images = sum(h["train_img_s"] * h["train_seconds"] for h in timed)
    return images / seconds, len(history) < 2


def steady_pipeline(history: list[dict]) -> dict:
    """Data/compute per step and pipeline efficiency over the timed epochs, first excluded."""
    timed = [h for h in (history[1:] or history) if "data_seconds" in h]
    steps = sum(h["steps"] for h in timed)
    data_s = sum(h["data_seconds"] for h in timed)
    return pipeline_figures(data_s, sum(h["compute_seconds"] for h in timed), steps)
