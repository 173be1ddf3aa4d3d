"""The timing core: one measured run of a callable, and the statistics of its samples.

- Inputs are made BEFORE the clock starts (the backends do that), so data loading, decoding and
  host-side preprocessing are never timed; what is timed is one call of the model/session.
- Warm-up iterations run first and are discarded (lazy init, cuDNN autotune, ORT arenas, TRT
  engine builds all happen there).
- The timed run is time-bounded: keep iterating until BOTH `min_seconds` have elapsed AND
  `min_iters` samples exist, capped by `max_seconds` (warm-up too). A fixed iteration count
  would give 20 ms of data for a fast model and minutes for a slow one: VGG-16 at batch 32
  takes ~15 s a call on 2 AVX2 cores, so 5 warm-up + 20 timed calls were over 6 minutes per
  case per round, most of a CPU `bench run`'s speed step. A throughput figure needs seconds
  of work, not 20 calls; the rounds still give its spread.
- `sync()` runs before every clock read (on CUDA torch.cuda.synchronize, timm's cuda_timestamp
  pattern), so a sample is the whole kernel run, not the launch.
- Percentiles use ALL samples, no outlier removal (tails are part of the result), computed with
  numpy.percentile's default method ("linear": interpolate between the two nearest ranks).
- Throughput = batch_size * n / total timed seconds, never batch_size / p50 (which would hide
  the tail and overstate throughput).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Timing:
    """How long one measured run lasts (the `--speed-*` flags)."""

    warmup_iters: int = 5
    min_seconds: float = 1.0
    min_iters: int = 20
    max_seconds: float | None = 10.0


def summarize(samples_s: Sequence[float]) -> dict:
    """Latency statistics in milliseconds from per-iteration samples in seconds.

    Percentiles come from ALL samples with numpy.percentile's default "linear" method (for
    1..100 ms, p50 = 50.5 ms, p90 = 90.1 ms, p99 = 99.01 ms). No outliers are dropped.
    latency_ms_std is the sample standard deviation (ddof=1; 0.0 for a single sample).
    """
    if len(samples_s) == 0:
        raise ValueError("summarize() got no samples: measure() must run at least one iteration")
    ms = np.asarray(samples_s, dtype=np.float64) * 1e3
    p50, p90, p99 = np.percentile(ms, [50, 90, 99])
    return {
        "latency_ms_p50": float(p50),
        "latency_ms_p90": float(p90),
        "latency_ms_p99": float(p99),
        "latency_ms_mean": float(ms.mean()),
        "latency_ms_std": float(ms.std(ddof=1)) if ms.size > 1 else 0.0,
        "n": int(ms.size),
    }


MAX_KEPT_SAMPLES = 1000


def kept_samples(samples_s: Sequence[float]) -> list[float]:
    """The distribution itself, in ms, for report plots: every sample in timing order up to
    MAX_KEPT_SAMPLES, else that many evenly strided through the run (bounded results.json)."""
    ms = np.asarray(samples_s, dtype=np.float64) * 1e3
    if ms.size > MAX_KEPT_SAMPLES:
        ms = ms[np.linspace(0, ms.size - 1, MAX_KEPT_SAMPLES).round().astype(int)]
    return [round(float(v), 4) for v in ms]  # 0.1 us resolution


def throughput_img_s(samples_s: Sequence[float], batch_size: int) -> float:
    """Images per second over the whole timed run: batch_size * n / total seconds."""
    total = float(np.sum(samples_s))
    if total <= 0:
        raise ValueError("throughput needs a positive total time")
    return batch_size * len(samples_s) / total


def measure(
    fn: Callable[[], object],
    *,
    sync: Callable[[], None] | None = None,
    warmup_iters: int = 5,
    min_seconds: float = 1.0,
    min_iters: int = 20,
    max_seconds: float | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> list[float]:
    """Call fn() repeatedly and return per-call latencies in seconds.

    Warm-up calls first (not returned; with `max_seconds`, no more once they took that
    long). Then the timed run keeps going until at least `min_seconds` have elapsed
    AND at least `min_iters` calls were made; `max_seconds`, if given, stops it early even
    below min_iters (at least one sample is always taken).
    `sync()` (e.g. torch.cuda.synchronize) is called before EVERY clock read. Timestamps are
    contiguous (each sample ends where the next starts), so sum(samples) is exactly the timed
    wall time and throughput computed from it includes the loop's tiny Python overhead.
    `clock` is injectable for tests.
    """
    if min_iters < 1:
        raise ValueError(f"min_iters must be >= 1, got {min_iters}")
    do_sync = sync if sync is not None else _no_sync
    if max_seconds is not None and warmup_iters > 0:
        do_sync()
        warm_start = clock()
    for _ in range(warmup_iters):
        fn()
        if max_seconds is not None:
            do_sync()
            if clock() - warm_start >= max_seconds:
                break
    do_sync()
    start = prev = clock()
    samples: list[float] = []
    while True:
        fn()
        do_sync()
        now = clock()
        samples.append(now - prev)
        prev = now
        elapsed = now - start
        if len(samples) >= min_iters and elapsed >= min_seconds:
            break
        if max_seconds is not None and elapsed >= max_seconds:
            break
    return samples


def _no_sync() -> None:
    pass


def _psi_cpu_stall_us() -> int | None:
    """Linux PSI cumulative microseconds in which some runnable task waited for a CPU."""
    try:
        with open("/proc/pressure/cpu", encoding="utf-8") as f:
            first = f.readline().split()
        return int(dict(kv.split("=") for kv in first[1:])["total"])
    except (OSError, KeyError, ValueError, IndexError):
        return None


def measure_with_contention(fn: Callable[[], object], **kwargs) -> tuple[list[float], float | None]:
    """measure() plus cpu_contention_pct: % of the run's wall time (warm-up included) in
    which some runnable task in this (virtual) machine waited for a CPU (Linux PSI "some";
    None where /proc/pressure is unavailable). Our own threads count too: a quiet 2-core box
    reads ~0-20%; near 100% means other processes fought for the cores (there torch CPU p50
    grew 10-200x) and the row should be rerun. It cannot see a hypervisor's noisy neighbours.
    """
    before, t0 = _psi_cpu_stall_us(), time.perf_counter()
    samples = measure(fn, **kwargs)
    after, t1 = _psi_cpu_stall_us(), time.perf_counter()
    if before is None or after is None or t1 <= t0:
        return samples, None
    return samples, round(min(100.0, (after - before) / ((t1 - t0) * 1e6) * 100), 2)
