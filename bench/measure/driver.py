"""The one speed driver: backends x batch sizes x rounds, interleaved, into typed rows.

Why rounds, and why interleaved: on a shared machine the speed of the CPU drifts by 5-20%
over minutes. Measuring torch for a minute and ONNX Runtime a minute later puts that drift
into the ratio. Here every round runs every (backend, batch size) case once, in the same
order, so a slow phase hits all of them; a row reports the median over rounds of its
p50/p90/p99 and `p50_spread_pct` = (max - min) / min of the rounds' p50s (None with one
round: a spread of one number is unknown, not zero). Ratios between backends are taken per
round and their median reported (`speedup`), so they come from the same windows.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from bench.measure.backends import Backend, OnnxRuntime, TorchEager
from bench.measure.maxbatch import find_max_batch
from bench.measure.timing import (
    Timing,
    kept_samples,
    measure,
    measure_with_contention,
    summarize,
)

DEFAULT_TIMING = Timing()


@dataclass
class Case:
    """One (backend, batch size) to measure in every round."""

    backend: Backend
    batch_size: int
    max_batch: bool = False  # the batch is the largest that fit (find_max_batch)


@dataclass
class SpeedRow:
    """One measured case: provenance + statistics over rounds. `to_dict()` is the JSON row."""

    model: str
    batch_size: int
    image_size: int
    provenance: dict  # runtime, provider, precision, memory format, threads (+ backend extras)
    max_batch: bool = False
    rounds: int = 0
    latency_ms_p50: float | None = None  # median over rounds of each round's p50
    latency_ms_p90: float | None = None
    latency_ms_p99: float | None = None
    latency_ms_mean: float | None = None  # over all samples of all rounds
    latency_ms_std: float | None = None
    n: int = 0  # samples over all rounds
    throughput_img_s: float | None = None  # median over rounds of batch * n / seconds
    p50_spread_pct: float | None = None  # (max - min) / min of the rounds' p50s; None: 1 round
    cpu_contention_pct: float | None = None  # the worst round's (see measure_with_contention)
    latency_ms_p50_by_round: list[float] = field(default_factory=list)
    throughput_img_s_by_round: list[float] = field(default_factory=list)
    latency_ms_samples: list[float] = field(default_factory=list)  # for plots (kept_samples)
    error: str | None = None

    def to_dict(self) -> dict:
        d = asdict(self)
        prov = d.pop("provenance")
        return {"model": d.pop("model"), **prov, **{k: v for k, v in d.items()}}


def combine_rounds(row: SpeedRow, rounds: Sequence[tuple[list[float], float | None]]) -> SpeedRow:
    """Fill `row`'s statistics from per-round (samples in seconds, contention %)."""
    per = [summarize(samples) for samples, _ in rounds]
    every = [s for samples, _ in rounds for s in samples]
    pooled = summarize(every)
    p50s = [p["latency_ms_p50"] for p in per]
    thr = [row.batch_size * len(samples) / sum(samples) for samples, _ in rounds]
    contention = [c for _, c in rounds if c is not None]
    row.rounds = len(rounds)
    row.latency_ms_p50 = statistics.median(p50s)
    row.latency_ms_p90 = statistics.median(p["latency_ms_p90"] for p in per)
    row.latency_ms_p99 = statistics.median(p["latency_ms_p99"] for p in per)
    row.latency_ms_mean = pooled["latency_ms_mean"]
    row.latency_ms_std = pooled["latency_ms_std"]
    row.n = pooled["n"]
    row.throughput_img_s = statistics.median(thr)
    row.p50_spread_pct = (
        round((max(p50s) - min(p50s)) / min(p50s) * 100, 2) if len(p50s) > 1 else None
    )
    row.cpu_contention_pct = max(contention) if contention else None
    row.latency_ms_p50_by_round = p50s
    row.throughput_img_s_by_round = thr
    row.latency_ms_samples = kept_samples(every)
    return row


def run_interleaved(
    cases: Sequence[Case],
    *,
    model: str,
    image_size: int,
    rounds: int = 3,
    timing: Timing = DEFAULT_TIMING,
    on_case: Callable[[int, Case], None] | None = None,
) -> list[SpeedRow]:
    """Measure every case in every round (round 1: all cases, round 2: all cases, ...).

    A case that raises is recorded in its row's `error` and leaves the later rounds; the
    others go on. `on_case(round, case)` is called before each measurement (progress).
    """
    if rounds < 1:
        raise ValueError(f"--speed-rounds must be >= 1, got {rounds}")
    samples: list[list[tuple[list[float], float | None]]] = [[] for _ in cases]
    errors: list[str | None] = [None] * len(cases)
    for r in range(rounds):
        for i, case in enumerate(cases):
            if errors[i] is not None:
                continue
            if on_case is not None:
                on_case(r, case)
            try:
                with case.backend.active():
                    fn = case.backend.prepare(case.batch_size)
                    samples[i].append(
                        measure_with_contention(fn, sync=case.backend.sync, **asdict(timing))
                    )
            except Exception as e:  # one backend's failure must not stop the others
                errors[i] = f"{type(e).__name__}: {e}"
    rows = []
    for case, runs, error in zip(cases, samples, errors, strict=True):
        with case.backend.active():
            provenance = case.backend.provenance()
        row = SpeedRow(
            model=model,
            batch_size=case.batch_size,
            image_size=image_size,
            provenance=provenance,
            max_batch=case.max_batch,
            error=error,
        )
        rows.append(combine_rounds(row, runs) if error is None else row)
    return rows


def largest_batch(backend: Backend, start: int) -> int:
    """The largest batch (from `start` down the decay ladder) one call of `backend` fits."""

    def try_batch(bs: int) -> None:
        with backend.active():
            measure(backend.prepare(bs), sync=backend.sync, warmup_iters=1, min_seconds=0.0,
                    min_iters=1)  # fmt: skip

    return find_max_batch(try_batch, start)


# ----------------------------------------------------------------------------- per model


def confirmed_ort_backends(
    onnx_path: str | Path,
    *,
    name: str,
    providers: Sequence[str],
    threads: int | None,
    image_size: int,
    notes: list[str],
    strict_providers: bool = False,
) -> list[OnnxRuntime]:
    """One ONNX Runtime backend for CPU and every GPU provider the created session confirms.

    CPU is always included (strictly: it is the baseline every other row is compared with).
    A GPU provider that errors or silently falls back is skipped with a sentence in `notes`,
    so CPU numbers are never labelled as GPU. strict_providers: a GPU provider that cannot
    run every node raises (exports.runtime.ProviderUnavailableError) instead.
    """
    backends = []
    for provider in ["cpu", *(p for p in providers if p != "cpu")]:
        strict = provider == "cpu"
        try:
            backend = OnnxRuntime.open(
                onnx_path,
                provider=provider,
                threads=threads,
                strict=strict,
                strict_providers=strict_providers,
                image_size=image_size,
            )
        except Exception as e:
            if strict or (strict_providers and "--strict-providers" in str(e)):
                raise
            notes.append(f"{name}: onnxruntime {provider} skipped: {e}")
            continue
        if backend.provider != provider:
            notes.append(
                f"{name}: onnxruntime {provider} skipped: the session fell back to "
                f"{backend.provider} (session providers: {backend.session.get_providers()})"
            )
            continue
        backends.append(backend)
    return backends


def torch_backends(
    model: torch.nn.Module,
    *,
    name: str,
    device: torch.device,
    threads: int | None,
    image_size: int,
    notes: list[str],
) -> list[TorchEager]:
    """torch eager fp32; on CUDA also AMP fp16 (and bf16 where supported) with channels_last."""
    configs = [("fp32", False)]
    if device.type == "cuda":
        configs.append(("fp16", True))
        if torch.cuda.is_bf16_supported():
            configs.append(("bf16", True))
        else:
            notes.append(f"{name}: bf16 skipped, {torch.cuda.get_device_name(device)} lacks it")
    return [
        TorchEager(
            model,
            device=device,
            precision=p,
            channels_last=cl,
            threads=threads,
            image_size=image_size,
        )  # fmt: skip
        for p, cl in configs
    ]


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
    rounds: int = 3,
    timing: Timing = DEFAULT_TIMING,
    max_batch_start: int = 1024,
    notes: list[str] | None = None,
    on_case: Callable[[int, Case], None] | None = None,
    strict_providers: bool = False,
) -> list[dict]:
    """Every inference speed row of one model, all measured in the same interleaved rounds.

    torch eager at each batch size (on CUDA also AMP + channels_last, and fp16 throughput at
    the largest batch that fits: row max_batch=True); with onnx_path, ONNX Runtime per
    confirmed provider at each batch size. threads=None -> torch.get_num_threads(), used for
    both runtimes so CPU comparisons are like for like. Unusable GPU providers are skipped
    with a sentence appended to `notes`.
    """
    notes = [] if notes is None else notes
    device = torch.device(device)
    threads = threads or torch.get_num_threads()
    backends: list[Backend] = list(
        torch_backends(
            model, name=name, device=device, threads=threads, image_size=image_size, notes=notes
        )  # fmt: skip
    )
    if onnx_path is not None:
        backends += confirmed_ort_backends(
            onnx_path, name=name, providers=providers, threads=threads, image_size=image_size,
            notes=notes, strict_providers=strict_providers,
        )  # fmt: skip
    cases = [Case(b, bs) for b in backends for bs in batch_sizes]
    if device.type == "cuda":
        amp = next(b for b in backends if getattr(b, "precision", "") == "fp16")
        cases.append(Case(amp, largest_batch(amp, max_batch_start), max_batch=True))
    rows = run_interleaved(
        cases, model=name, image_size=image_size, rounds=rounds, timing=timing, on_case=on_case
    )
    return [r.to_dict() for r in rows]


def speedup(
    rows: Iterable[dict], *, latency_batch: int = 1, throughput_batch: int = 32
) -> list[dict]:
    """ORT-CPU vs torch-CPU (fp32, eager) ratios per model, from the same rounds.

    latency_speedup = torch p50 / ORT p50 at `latency_batch` (>1: ORT is faster);
    throughput_ratio = ORT img/s / torch img/s at `throughput_batch` (>1: ORT is faster).
    Where both rows carry per-round figures from one interleaved run, the ratio is the median
    of the per-round ratios (each from one window); otherwise the ratio of the two figures.
    A ratio is None when either side is missing.
    """
    table: dict[tuple, dict] = {}
    models: list[str] = []
    for r in rows:
        if r.get("provider") != "cpu" or r.get("precision", "fp32") != "fp32":
            continue
        if r.get("channels_last") or r.get("max_batch") or r.get("error"):
            continue
        if r["model"] not in models:
            models.append(r["model"])
        table[(r["model"], r["runtime"], r["batch_size"])] = r

    def ratio(num: dict | None, den: dict | None, key: str) -> float | None:
        if not num or not den:
            return None
        a, b = num.get(f"{key}_by_round") or [], den.get(f"{key}_by_round") or []
        if a and len(a) == len(b):
            return statistics.median(x / y for x, y in zip(a, b, strict=True))
        return num[key] / den[key]

    out = []
    b, tb = latency_batch, throughput_batch
    for m in models:
        t_lat = table.get((m, "torch", b))
        o_lat = table.get((m, "onnxruntime", b))
        t_thr = table.get((m, "torch", tb))
        o_thr = table.get((m, "onnxruntime", tb))
        out.append(
            {
                "model": m,
                f"torch_cpu_latency_ms_p50_b{b}": t_lat and t_lat["latency_ms_p50"],
                f"ort_cpu_latency_ms_p50_b{b}": o_lat and o_lat["latency_ms_p50"],
                f"latency_speedup_b{b}": ratio(t_lat, o_lat, "latency_ms_p50"),
                f"torch_cpu_throughput_img_s_b{tb}": t_thr and t_thr["throughput_img_s"],
                f"ort_cpu_throughput_img_s_b{tb}": o_thr and o_thr["throughput_img_s"],
                f"throughput_ratio_b{tb}": ratio(o_thr, t_thr, "throughput_img_s"),
            }
        )
    return out
