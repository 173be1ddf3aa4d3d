"""`bench train-speed`: what mixed precision (and compile) buys for training, as ratios to fp32.

Each model trains a fixed number of steps in every variant (fp32, the `auto` precision, forced
bf16, ... optionally compiled) in ONE process, interleaved step by step with the order rotated
every round, so a busy neighbour on a shared CPU slows every variant alike and the ratios stay
meaningful even when the absolute img/s do not. The step is the training loop's own
(bench.train.loop.train_step: autocast, GradScaler for fp16, Adam) on a batch already in memory;
all variants share one model and optimizer (speed does not depend on the weights), so memory
is that of one model. Every row carries the CPU's instruction sets: a bf16 ratio from an AMX
Xeon and one from an AVX2 EPYC are different facts.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from bench import measure as speed
from bench.amp import resolve_precision
from bench.config import ConfigError, _check
from bench.registry import build_model, resolve_models
from bench.train.loop import train_step


@dataclass
class TrainSpeedOptions:
    models: str = "all"
    """Models to train, as for `bench run` ('all', a comma list, fnmatch patterns)."""
    precisions: str = "fp32,auto"
    """Comma list of variants: fp32, auto (what `bench run` would pick here), bf16, fp16;
    append +compile to compile one (e.g. auto+compile). fp32 is always measured: ratios are
    against it."""
    steps: int = 3
    """Timed training steps per model and variant (after the warm-up steps)."""
    warmup_steps: int = 1
    """Untimed steps per variant first (allocator, oneDNN primitives, compilation)."""
    batch_size: int = 32
    """Training batch size."""
    image_size: int = 200
    """Input side in pixels."""
    compile: bool = False
    """Also measure every listed precision compiled (torch.compile, inductor)."""
    device: str = "auto"
    """auto (CUDA when available) | cpu | cuda | cuda:N."""
    threads: int | None = None
    """CPU threads for torch (default: torch's default)."""
    channels_last: bool = True
    """channels_last memory format, as `bench run` trains (--no-channels-last to compare)."""
    out: str | None = None
    """Write the results as JSON to this file too."""

    def __post_init__(self):
        _check(self.steps >= 1, "steps", "must be >= 1", self.steps)
        _check(self.warmup_steps >= 0, "warmup_steps", "must be >= 0", self.warmup_steps)
        _check(self.batch_size >= 2, "batch_size", "must be >= 2 (BatchNorm)", self.batch_size)
        _check(self.image_size >= 16, "image_size", "must be >= 16 pixels", self.image_size)
        _check(self.threads is None or self.threads >= 1, "threads", "must be >= 1", self.threads)
        self.variants  # noqa: B018 (validates --precisions)

    @property
    def variants(self) -> list[str]:
        names = [v.strip() for v in self.precisions.split(",") if v.strip()]
        _check(bool(names), "precisions", "must name at least one variant", self.precisions)
        for v in names:
            precision, _, extra = v.partition("+")
            if precision not in ("fp32", "auto", "bf16", "fp16") or extra not in (
                "",
                "compile",
            ):
                raise ConfigError(
                    f"--precisions: unknown variant {v!r}; use fp32, auto, bf16 or fp16, "
                    "optionally with +compile"
                )
        if self.compile:
            names += [f"{v}+compile" for v in names if not v.endswith("+compile")]
        if "fp32" not in names:
            names.insert(0, "fp32")
        return list(dict.fromkeys(names))


@dataclass
class _Variant:
    name: str
    precision: object  # bench.amp.Precision
    net: nn.Module
    scaler: torch.amp.GradScaler
    compile_seconds: float | None = None
    error: str | None = None
    samples: list | None = None
    contention: list | None = None


def _variant(name: str, model: nn.Module, device: torch.device) -> _Variant:
    requested, _, extra = name.partition("+")
    precision = resolve_precision(device, "off" if requested == "fp32" else requested)
    net = torch.compile(model, dynamic=False) if extra == "compile" else model
    return _Variant(name, precision, net, precision.grad_scaler(), samples=[], contention=[])


def measure_model(name: str, opts: TrainSpeedOptions, device: torch.device, log=print) -> list:
    """One model in every variant, interleaved; returns one row per variant."""
    bench = _Bench(name, opts, device)
    variants = [_variant(v, bench.model, device) for v in opts.variants]
    for v in variants:
        bench.warm_up(v, log)
    live = [v for v in variants if v.error is None]
    for i in range(opts.steps):
        for v in live[i % len(live) :] + live[: i % len(live)]:  # rotate who goes first
            samples, contention = speed.measure_with_contention(
                bench.step(v), sync=bench.sync, warmup_iters=0, min_seconds=0, min_iters=1
            )
            v.samples += samples
            v.contention.append(contention)
        log(f"[{name}] round {i + 1}/{opts.steps} done")
    base = next((v for v in live if v.name == "fp32"), None)
    base_img_s = speed.throughput_img_s(base.samples, opts.batch_size) if base else None
    return [bench.row(v, base_img_s) for v in variants]


class _Bench:
    """One model, its optimizer and one seeded batch in memory, shared by every variant
    (speed does not depend on the weights)."""

    def __init__(self, name: str, opts: TrainSpeedOptions, device: torch.device):
        self.name, self.opts, self.device = name, opts, device
        torch.manual_seed(0)
        self.fmt = torch.channels_last if opts.channels_last else torch.contiguous_format
        model = build_model(name, num_classes=6, weights="none")
        self.model = model.to(device, memory_format=self.fmt)
        self.model.train()
        self.opt = torch.optim.Adam(self.model.parameters(), lr=1e-3)
        self.loss_fn = nn.CrossEntropyLoss()
        g = torch.Generator().manual_seed(0)
        x = torch.randn((opts.batch_size, 3, opts.image_size, opts.image_size), generator=g)
        self.x = x.to(device).contiguous(memory_format=self.fmt)
        self.y = torch.randint(0, 6, (opts.batch_size,), generator=g).to(device)
        self.sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else None

    def step(self, v: _Variant):
        return lambda: train_step(v.net, self.opt, v.scaler, self.loss_fn, self.x, self.y,
                                  v.precision.autocast)  # fmt: skip

    def warm_up(self, v: _Variant, log) -> None:
        """The untimed steps; a compiled variant compiles here, in its first call, and a
        failure (e.g. a compile error) costs this variant, not the run."""
        compiled = v.name.endswith("+compile")
        t0 = time.perf_counter()
        try:
            for _ in range(max(self.opts.warmup_steps, 1 if compiled else 0)):
                self.step(v)()
            if self.sync:
                self.sync()
        except Exception as e:
            v.error = f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:300]}"
            log(f"[{self.name}] {v.name} failed: {v.error}")
        if compiled:
            v.compile_seconds = time.perf_counter() - t0

    def row(self, v: _Variant, base_img_s: float | None) -> dict:
        opts = self.opts
        img_s = speed.throughput_img_s(v.samples, opts.batch_size) if v.samples else None
        pcts = [c for c in (v.contention or []) if c is not None]
        return {
            "model": self.name,
            "variant": v.name,
            "precision": v.precision.name,
            "amp_reason": v.precision.reason,
            "compile": v.name.endswith("+compile"),
            "compile_seconds": v.compile_seconds,
            "error": v.error,
            "device": self.device.type,
            "channels_last": self.fmt == torch.channels_last,
            "batch_size": opts.batch_size,
            "image_size": opts.image_size,
            "threads": torch.get_num_threads(),
            "steps": len(v.samples),
            "step_ms_mean": 1e3 * sum(v.samples) / len(v.samples) if v.samples else None,
            "train_img_s": img_s,
            "vs_fp32": img_s / base_img_s if img_s and base_img_s else None,
            "cpu_contention_pct": sum(pcts) / len(pcts) if pcts else None,
        }


def train_speed(opts: TrainSpeedOptions, log=print) -> dict:
    from bench.device import pick_device, utc_now

    names = resolve_models(opts.models)
    device = pick_device(opts.device)
    if opts.threads:
        torch.set_num_threads(opts.threads)
    env = speed.environment()  # holds cpu_isa and cpu_isa_label
    results = {"kind": "train-speed", "created": utc_now(), "environment": env, "rows": []}
    for name in names:
        results["rows"] += measure_model(name, opts, device, log=log)
        if device.type == "cuda":
            torch.cuda.empty_cache()
        if opts.out:  # after every model: an interrupted benchmark keeps what it measured
            from neu._io import atomic_write_json

            Path(opts.out).parent.mkdir(parents=True, exist_ok=True)
            atomic_write_json(Path(opts.out), results)
    return results


def table_rows(results: dict) -> tuple[list[str], list[list[str]]]:
    env = results["environment"]
    where = (
        env.get("cuda_device") if results["rows"][0]["device"] == "cuda" else env["cpu_isa_label"]
    )
    head = ["model", "variant", "precision", "img/s", "vs fp32", "step ms", "CPU contention",
            "device / ISA"]  # fmt: skip
    body = [
        [
            r["model"],
            r["variant"],
            r["precision"],
            "-" if r["train_img_s"] is None else f"{r['train_img_s']:.2f}",
            "-" if r["vs_fp32"] is None else f"{r['vs_fp32']:.2f}x",
            "-" if r["step_ms_mean"] is None else f"{r['step_ms_mean']:.0f}",
            "-" if r["cpu_contention_pct"] is None else f"{r['cpu_contention_pct']:.0f}%",
            f"{r['device']} {where}",
        ]
        for r in results["rows"]
    ]
    return head, body
