"""Speed measurement library: latency percentiles, throughput, FLOPs, Pareto plot.

Pure functions, no printing, no CLI parsing: every result is a plain dict with units in the
key names (latency_ms_p50, throughput_img_s). The CLI (`python -m bench speed`) and the training
loop call these.

Methodology (MLPerf-like, chosen to be honest rather than flattering):
- Inputs are random tensors/arrays made BEFORE the clock starts, so data loading, decoding and
  host-side preprocessing are never timed; what is timed is one call of the model/session.
- Warm-up iterations run first and are discarded (lazy init, cuDNN autotune, ORT arenas, TRT
  engine builds all happen there).
- The timed run is time-bounded: keep iterating until BOTH `min_seconds` have elapsed AND
  `min_iters` samples exist (optionally capped by `max_seconds`). A fixed iteration count would
  give 20 ms of data for a fast model and minutes for a slow one.
- On CUDA the device is synchronized before every clock read (timm benchmark.py's
  cuda_timestamp pattern), so a sample is the whole kernel run, not the launch.
- Percentiles use ALL samples, no outlier removal (tails are part of the result), computed with
  numpy.percentile's default method ("linear": interpolate between the two nearest ranks).
- Throughput = batch_size * n / total timed seconds, never batch_size / p50 (which would hide
  the tail and overstate throughput).
"""

from __future__ import annotations

import copy
import math
import os
import platform
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np
import torch

PRECISIONS = ("fp32", "fp16", "bf16")
_AMP_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}

# onnxruntime execution-provider names -> the short names used in rows and on the CLI.
ORT_PROVIDER_NAMES = {
    "CPUExecutionProvider": "cpu",
    "CUDAExecutionProvider": "cuda",
    "TensorrtExecutionProvider": "tensorrt",
}


# ----------------------------------------------------------------------------- statistics


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

    Warm-up calls first (not returned). Then the timed run keeps going until at least
    `min_seconds` have elapsed AND at least `min_iters` calls were made; `max_seconds`, if
    given, stops it early even below min_iters (at least one sample is always taken).
    `sync()` (e.g. torch.cuda.synchronize) is called before EVERY clock read. Timestamps are
    contiguous (each sample ends where the next starts), so sum(samples) is exactly the timed
    wall time and throughput computed from it includes the loop's tiny Python overhead.
    `clock` is injectable for tests.
    """
    if min_iters < 1:
        raise ValueError(f"min_iters must be >= 1, got {min_iters}")
    do_sync = sync if sync is not None else _no_sync
    for _ in range(warmup_iters):
        fn()
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


def _sync_for(device: torch.device) -> Callable[[], None] | None:
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return None


# ----------------------------------------------------------------------------- model size


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


# ----------------------------------------------------------------------------- torch


def torch_inference(
    model: torch.nn.Module,
    *,
    image_size: int,
    device: str | torch.device = "cpu",
    batch_size: int = 1,
    precision: str = "fp32",
    channels_last: bool = False,
    threads: int | None = None,
    channels: int = 3,
    warmup_iters: int = 5,
    min_seconds: float = 1.0,
    min_iters: int = 20,
    max_seconds: float | None = None,
) -> dict:
    """Eager PyTorch inference latency/throughput for one configuration -> one row.

    The model is moved to `device` and run in eval mode under torch.inference_mode; fp16/bf16
    mean AMP (torch.autocast with that dtype; weights stay fp32), as in timm's "amp".
    `threads` sets torch's intra-op threads for this call only (restored afterwards); the row
    records torch.get_num_threads() actually in effect. The caller's model keeps its device
    move (like nn.Module.to) but gets its train/eval flag and memory format back.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    device = torch.device(device)
    old_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    was_training = model.training
    try:
        model.to(device).eval()
        # Fixed-seed input on a private generator: no global RNG consumed, same data each call.
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(batch_size, channels, image_size, image_size, generator=gen).to(device)
        if channels_last:
            model.to(memory_format=torch.channels_last)
            x = x.contiguous(memory_format=torch.channels_last)
        amp = torch.autocast(
            device_type=device.type,
            dtype=_AMP_DTYPES.get(precision, torch.float32),
            enabled=precision != "fp32",
        )
        with torch.inference_mode(), amp:
            samples, contention = measure_with_contention(
                lambda: model(x),
                sync=_sync_for(device),
                warmup_iters=warmup_iters,
                min_seconds=min_seconds,
                min_iters=min_iters,
                max_seconds=max_seconds,
            )
        used_threads = torch.get_num_threads()
    finally:
        if channels_last:
            model.to(memory_format=torch.contiguous_format)
        model.train(was_training)
        torch.set_num_threads(old_threads)
    return {
        "runtime": "torch",
        "provider": device.type,
        "precision": precision,
        "channels_last": channels_last,
        "batch_size": batch_size,
        "image_size": image_size,
        "threads": used_threads,
        **summarize(samples),
        "throughput_img_s": throughput_img_s(samples, batch_size),
        "cpu_contention_pct": contention,
    }


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
        sync = _sync_for(device)
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


# ----------------------------------------------------------------------------- onnxruntime


def ort_inference(
    onnx_path: str | Path,
    *,
    image_size: int,
    provider: str = "cpu",
    batch_size: int = 1,
    threads: int | None = None,
    strict: bool = True,
    warmup_iters: int = 5,
    min_seconds: float = 1.0,
    min_iters: int = 20,
    max_seconds: float | None = None,
) -> dict:
    """ONNX Runtime latency/throughput for one provider and batch size -> one row.

    threads=None uses torch.get_num_threads(), so a CPU row is comparable with the torch row
    by default; the row records the intra-op thread count the session actually got.
    `provider` in the row is the provider ACTUALLY running the graph (session.get_providers()[0]);
    with strict=True a GPU request that fell back raises exports.runtime.ProviderUnavailableError,
    with strict=False the row says "cpu" and keeps requested_provider for the record.
    GPU timings include copying the numpy input to the device and the logits back (what a
    caller of session.run pays); session.run returns host arrays, so no extra sync is needed.
    """
    from exports.runtime import create_session

    if threads is None:
        threads = torch.get_num_threads()
    session, _ = create_session(onnx_path, provider=provider, threads=threads, strict=strict)
    return _ort_row(
        session,
        requested_provider=provider,
        threads=threads,
        image_size=image_size,
        batch_size=batch_size,
        warmup_iters=warmup_iters,
        min_seconds=min_seconds,
        min_iters=min_iters,
        max_seconds=max_seconds,
    )


def ort_provider_in_use(session) -> str:
    """Short name ("cpu", "cuda", "tensorrt") of the session's first (highest-priority) EP."""
    name = session.get_providers()[0]
    return ORT_PROVIDER_NAMES.get(name, name)


def _ort_row(
    session,
    *,
    requested_provider: str,
    threads: int,
    image_size: int,
    batch_size: int,
    warmup_iters: int,
    min_seconds: float,
    min_iters: int,
    max_seconds: float | None,
) -> dict:
    inp = session.get_inputs()[0]
    channels = inp.shape[1] if isinstance(inp.shape[1], int) else 3
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch_size, channels, image_size, image_size), dtype=np.float32)
    feed = {inp.name: x}
    samples, contention = measure_with_contention(
        lambda: session.run(None, feed),
        warmup_iters=warmup_iters,
        min_seconds=min_seconds,
        min_iters=min_iters,
        max_seconds=max_seconds,
    )
    session_threads = session.get_session_options().intra_op_num_threads
    provider = ort_provider_in_use(session)
    return {
        "runtime": "onnxruntime",
        "provider": provider,
        "requested_provider": requested_provider,
        "precision": "fp32",
        "channels_last": False,
        "batch_size": batch_size,
        "image_size": image_size,
        # 0 would mean "ORT default" (one per physical core); report what we asked for then.
        "threads": session_threads if session_threads > 0 else threads,
        **summarize(samples),
        "throughput_img_s": throughput_img_s(samples, batch_size),
        "cpu_contention_pct": contention,
    }


# ----------------------------------------------------------------------------- per model


def confirmed_ort_sessions(
    onnx_path: str | Path,
    *,
    name: str,
    providers: Sequence[str],
    threads: int | None,
    notes: list[str],
) -> list[tuple[str, object]]:
    """(provider, session) for CPU and every GPU provider the created session confirms.

    CPU is always included (strictly: it is the baseline every other row is compared with).
    A GPU provider that errors or silently falls back is skipped with a sentence in `notes`,
    so CPU numbers are never labelled as GPU.
    """
    from exports.runtime import create_session

    sessions = []
    for provider in ["cpu", *(p for p in providers if p != "cpu")]:
        strict = provider == "cpu"
        try:
            session, _ = create_session(
                onnx_path, provider=provider, threads=threads, strict=strict
            )
        except Exception as e:
            if strict:
                raise
            notes.append(f"{name}: onnxruntime {provider} skipped: {e}")
            continue
        actual = ort_provider_in_use(session)
        if actual != provider:
            notes.append(
                f"{name}: onnxruntime {provider} skipped: the session fell back to "
                f"{actual} (session providers: {session.get_providers()})"
            )
            continue
        sessions.append((provider, session))
    return sessions


def ort_session_rows(
    sessions: Sequence[tuple[str, object]],
    *,
    name: str,
    image_size: int,
    batch_sizes: Sequence[int],
    threads: int,
    warmup_iters: int = 5,
    min_seconds: float = 1.0,
    min_iters: int = 20,
    max_seconds: float | None = None,
) -> list[dict]:
    """One ONNX Runtime row per (confirmed session, batch size), tagged with `model`."""
    timing = dict(
        warmup_iters=warmup_iters,
        min_seconds=min_seconds,
        min_iters=min_iters,
        max_seconds=max_seconds,
    )
    rows = []
    for provider, session in sessions:
        for bs in batch_sizes:
            row = _ort_row(
                session,
                requested_provider=provider,
                threads=threads,
                image_size=image_size,
                batch_size=bs,
                **timing,
            )
            rows.append({"model": name, **row, "max_batch": False})
    return rows


def speed_rows_for_model(
    model: torch.nn.Module,
    *,
    name: str,
    image_size: int,
    onnx_path: str | Path | None = None,
    device: str | torch.device = "cpu",
    batch_sizes: Sequence[int] = (1, 32),
    providers: Sequence[str] = ("cpu",),
    threads: int | None = None,
    warmup_iters: int = 5,
    min_seconds: float = 1.0,
    min_iters: int = 20,
    max_seconds: float | None = None,
    repeats: int = 1,
    max_batch_start: int = 1024,
    notes: list[str] | None = None,
) -> list[dict]:
    """Every speed row for one model, each tagged with `model`.

    torch eager fp32 at each batch size on `device`; on CUDA also AMP fp16/bf16 with
    channels_last at each batch size and fp16 channels_last throughput at the largest batch
    that fits (find_max_batch, row has max_batch=True). With onnx_path, ORT per provider:
    "cpu" always and strictly; GPU providers (cuda, tensorrt) only when the session confirms
    them, else skipped with a sentence appended to `notes` (pass a list to collect them).
    CPU numbers are never labelled as GPU. threads=None -> torch.get_num_threads(), used for
    both torch and ORT so CPU comparisons are like for like.

    repeats > 1 runs the whole set of configurations that many times, interleaved (torch and
    ORT alternate, so a slow phase of a shared machine hits both), and keeps per configuration
    the run with the median p50; every row gets repeats and p50_spread_pct
    ((max - min) / min of the repeats' p50s, in %), so a noisy result is visible.
    """
    if notes is None:
        notes = []
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    device = torch.device(device)
    if threads is None:
        threads = torch.get_num_threads()
    timing = dict(
        warmup_iters=warmup_iters,
        min_seconds=min_seconds,
        min_iters=min_iters,
        max_seconds=max_seconds,
    )

    # (precision, channels_last, batch_size, max_batch) for torch.
    torch_configs = []
    precisions = [("fp32", False)]
    if device.type == "cuda":
        precisions.append(("fp16", True))
        if torch.cuda.is_bf16_supported():
            precisions.append(("bf16", True))
        else:
            notes.append(f"{name}: bf16 skipped, {torch.cuda.get_device_name(device)} lacks it")
    for precision, channels_last in precisions:
        torch_configs += [(precision, channels_last, bs, False) for bs in batch_sizes]
    if device.type == "cuda":

        def try_batch(bs: int) -> None:
            torch_inference(
                model,
                image_size=image_size,
                device=device,
                batch_size=bs,
                precision="fp16",
                channels_last=True,
                threads=threads,
                warmup_iters=1,
                min_seconds=0.0,
                min_iters=1,
            )

        torch_configs.append(("fp16", True, find_max_batch(try_batch, max_batch_start), True))

    # One session per confirmed provider, reused across batch sizes and repeats (a TensorRT
    # engine build takes minutes; it happens in the first warm-up).
    sessions = (
        confirmed_ort_sessions(
            onnx_path, name=name, providers=providers, threads=threads, notes=notes
        )
        if onnx_path is not None
        else []
    )

    def one_pass() -> list[dict]:
        rows = []
        for precision, channels_last, bs, is_max in torch_configs:
            row = torch_inference(
                model,
                image_size=image_size,
                device=device,
                batch_size=bs,
                precision=precision,
                channels_last=channels_last,
                threads=threads,
                **timing,
            )
            rows.append({"model": name, **row, "max_batch": is_max})
        rows += ort_session_rows(
            sessions,
            name=name,
            image_size=image_size,
            batch_sizes=batch_sizes,
            threads=threads,
            **timing,
        )
        return rows

    passes = [one_pass() for _ in range(repeats)]
    out = []
    for runs in zip(*passes, strict=True):
        p50s = [r["latency_ms_p50"] for r in runs]
        median = sorted(runs, key=lambda r: r["latency_ms_p50"])[(len(runs) - 1) // 2]
        spread = (max(p50s) - min(p50s)) / min(p50s) * 100 if min(p50s) > 0 else 0.0
        out.append({**median, "repeats": len(runs), "p50_spread_pct": round(spread, 2)})
    return out


def speedup(
    rows: Iterable[dict], *, latency_batch: int = 1, throughput_batch: int = 32
) -> list[dict]:
    """ORT-CPU vs torch-CPU (fp32, eager) ratios per model.

    latency_speedup = torch p50 / ORT p50 at `latency_batch` (>1: ORT is faster);
    throughput_ratio = ORT img/s / torch img/s at `throughput_batch` (>1: ORT is faster).
    A ratio is None when either side is missing.
    """
    table: dict[tuple, dict] = {}
    models: list[str] = []
    for r in rows:
        if r.get("provider") != "cpu" or r.get("precision", "fp32") != "fp32":
            continue
        if r.get("channels_last") or r.get("max_batch"):
            continue
        if r["model"] not in models:
            models.append(r["model"])
        table[(r["model"], r["runtime"], r["batch_size"])] = r
    out = []
    for m in models:
        t_lat = table.get((m, "torch", latency_batch))
        o_lat = table.get((m, "onnxruntime", latency_batch))
        t_thr = table.get((m, "torch", throughput_batch))
        o_thr = table.get((m, "onnxruntime", throughput_batch))
        b, tb = latency_batch, throughput_batch
        out.append(
            {
                "model": m,
                f"torch_cpu_latency_ms_p50_b{b}": t_lat and t_lat["latency_ms_p50"],
                f"ort_cpu_latency_ms_p50_b{b}": o_lat and o_lat["latency_ms_p50"],
                f"latency_speedup_b{b}": (
                    t_lat["latency_ms_p50"] / o_lat["latency_ms_p50"] if t_lat and o_lat else None
                ),
                f"torch_cpu_throughput_img_s_b{tb}": t_thr and t_thr["throughput_img_s"],
                f"ort_cpu_throughput_img_s_b{tb}": o_thr and o_thr["throughput_img_s"],
                f"throughput_ratio_b{tb}": (
                    o_thr["throughput_img_s"] / t_thr["throughput_img_s"]
                    if t_thr and o_thr
                    else None
                ),
            }
        )
    return out


# ----------------------------------------------------------------------------- environment


def environment() -> dict:
    """Versions and hardware that a speed number is meaningless without."""
    from importlib import metadata

    def version(dist: str) -> str | None:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return None

    env = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "torch": torch.__version__,
        "torchvision": version("torchvision"),
        "numpy": np.__version__,
        "onnx": version("onnx"),
        "onnxruntime": None,
        "ort_available_providers": [],
        # Load when the numbers were taken: on a shared box a busy neighbour can double latency.
        "loadavg_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "cpu_pressure_some_avg10": _cpu_pressure(),
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "cuda_available": torch.cuda.is_available(),
        "cuda_device": None,
        "cuda_version": torch.version.cuda,
        "cudnn_version": None,
    }
    try:
        import onnxruntime

        env["onnxruntime"] = onnxruntime.__version__
        env["ort_available_providers"] = list(onnxruntime.get_available_providers())
    except ImportError:
        pass
    if torch.cuda.is_available():
        env["cuda_device"] = torch.cuda.get_device_name()
        env["cudnn_version"] = torch.backends.cudnn.version()
    return env


def _cpu_pressure() -> float | None:
    """Linux PSI: % of the last 10 s some runnable task waited for a CPU (None elsewhere)."""
    try:
        with open("/proc/pressure/cpu", encoding="utf-8") as f:
            first = f.readline().split()
        return float(dict(kv.split("=") for kv in first[1:])["avg10"])
    except (OSError, KeyError, ValueError, IndexError):
        return None


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# ----------------------------------------------------------------------------- Pareto + plot


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of (latency, accuracy) points no other point beats, sorted by latency.

    Lower latency and higher accuracy are better. A point is dominated when another is at
    least as good on both and strictly better on one; exact duplicates therefore both stay
    on the front. Points with a NaN coordinate are never on it.
    """
    ok = [i for i, (lat, acc) in enumerate(points) if not (math.isnan(lat) or math.isnan(acc))]
    front = []
    for i in ok:
        li, ai = points[i]
        dominated = any(
            points[j][0] <= li and points[j][1] >= ai and (points[j][0] < li or points[j][1] > ai)
            for j in ok
            if j != i
        )
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: (points[i][0], -points[i][1], i))


def plot_accuracy_vs_latency(
    rows: Sequence[dict], path: str | Path, *, title: str | None = None
) -> Path:
    """Accuracy vs p50 latency scatter, one labelled point per row, Pareto front marked.

    rows: dicts with model, runtime, provider, latency_ms_p50, val_accuracy (a fraction in
    [0, 1] as stored in checkpoints; plotted in %; values > 1 are taken as already in %),
    optionally precision and batch_size. Pass one row per model & runtime (normally the
    batch-1 rows); duplicate labels raise ValueError. Written atomically as PNG.
    Uses matplotlib's object API with the Agg canvas, so pyplot's global state is untouched.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from neu._io import atomic_path

    if not rows:
        raise ValueError("plot_accuracy_vs_latency() got no rows to plot")
    labels, lats, accs = [], [], []
    for r in rows:
        label = f"{r['model']} ({r['runtime']}/{r['provider']}"
        if r.get("precision", "fp32") != "fp32":
            label += f"/{r['precision']}"
        label += ")"
        labels.append(label)
        lats.append(float(r["latency_ms_p50"]))
        accs.append(float(r["val_accuracy"]))
    dupes = sorted({lab for lab in labels if labels.count(lab) > 1})
    if dupes:
        raise ValueError(f"one row per model & runtime expected; duplicated: {dupes}")
    if max(accs) <= 1.0:
        accs = [a * 100 for a in accs]
    front = pareto_front(list(zip(lats, accs, strict=True)))

    fig = Figure(figsize=(8, 5.5), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.scatter(lats, accs, s=30, color="tab:blue", zorder=2, label="model & runtime")
    ax.plot(
        [lats[i] for i in front],
        [accs[i] for i in front],
        "-o",
        color="tab:red",
        markersize=9,
        markerfacecolor="none",
        markeredgewidth=1.8,
        zorder=3,
        label="Pareto front",
    )
    # Points at the same accuracy (common on small validation sets) get their labels
    # stacked instead of printed on top of each other.
    seen: dict[float, int] = {}
    for lab, x, y in zip(labels, lats, accs, strict=True):
        k = seen[round(y, 6)] = seen.get(round(y, 6), -1) + 1
        ax.annotate(lab, (x, y), xytext=(4, 4 + 9 * k), textcoords="offset points", fontsize=7)
    # Latencies across runtimes and GPUs/CPUs easily span 10x-100x: log scale keeps them apart.
    if min(lats) > 0 and max(lats) / min(lats) > 20:
        from matplotlib.ticker import LogFormatter

        ax.set_xscale("log")
        # Plain numbers (2, 5, 20 ms), not 2x10^1 mathtext.
        ax.xaxis.set_major_formatter(LogFormatter(labelOnlyBase=False))
        ax.xaxis.set_minor_formatter(LogFormatter(labelOnlyBase=False, minor_thresholds=(2, 0.5)))
    ax.set_xlabel("latency p50 (ms, lower is better)")
    ax.set_ylabel("validation accuracy (%, higher is better)")
    ax.set_title(title or "NEU-CLS: accuracy vs latency (batch 1)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()

    path = Path(path)
    with atomic_path(path) as tmp:
        # The temp file has no .png suffix, so name the format explicitly.
        fig.savefig(tmp, format="png")
    return path
