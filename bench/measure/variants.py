"""Deployment variants: one backend each, and which of them can run on this machine.

A variant is a way to deploy the trained model: a runtime, a precision, a memory format.
Each is one `Backend` (bench.measure.backends protocol), so the interleaved driver measures all
of them in the same rounds as torch eager FP32, the baseline every ratio is against:

| variant                   | backend                                   | --variants |
|---------------------------|-------------------------------------------|------------|
| torch_fp32                | TorchEager                                | (always)   |
| ort_fp32                  | OnnxRuntime on the FP32 export            | (always)   |
| torch_channels_last_fp32  | TorchEager(channels_last)                 | fp32       |
| ort_int8 (+ candidates)   | OnnxRuntime on the INT8 static QDQ copies | int8       |
| ort_fp16                  | OnnxRuntime (GPU provider) on the FP16 copy| fp16      |
| torch_bf16 / torch_fp16   | TorchEager(autocast, channels_last)       | bf16       |
| torch_compile_fp32        | TorchCompile (inductor)                   | compile    |
| openvino_fp32/bf16/int8   | OpenVino on the FP32 / INT8 ONNX file     | openvino   |

A variant that cannot run here is not dropped: `plan_variants` returns it with the reason
(no bf16 hardware, no GPU provider, openvino not installed), and it becomes a row that says
"skipped: <reason>".
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from bench.config import GROUPS, parse_variants  # noqa: F401  (re-exported: one list of choices)
from bench.measure.backends import Backend, TorchEager


@dataclass
class VariantSpec:
    """One variant to measure, or the reason it cannot be."""

    name: str
    group: str  # the --variants group that selects it ("baseline" for torch_fp32)
    runtime: str
    precision: str
    artifact: str  # the file a deployment of this variant ships: "onnx:fp32", "onnx:int8", ...
    make: Callable[[], Backend] | None = None  # None when skipped
    skipped: str | None = None
    notes: list[str] = field(default_factory=list)
    candidate: str | None = None  # INT8 candidates: the quantization settings' slug


# ------------------------------------------------------------------------------- backends


class TorchCompile(TorchEager):
    """torch.compile (inductor) FP32. Compilation happens in `prepare` (the first call for a
    batch size) and is timed there, apart from the latency: `compile_seconds` per batch."""

    runtime = "torch.compile"

    def __init__(self, model: torch.nn.Module, **kwargs):
        super().__init__(model, precision="fp32", **kwargs)
        self._compiled = None
        self.compile_seconds: dict[int, float] = {}

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._compiled is None:
            # dynamic=False: one graph per batch size, as a deployment with a fixed batch has.
            self._compiled = torch.compile(self.model, backend="inductor", dynamic=False)
        return self._compiled(x)

    def prepare(self, batch_size: int) -> Callable[[], object]:
        gen = torch.Generator().manual_seed(0)
        shape = (batch_size, self.channels, self.image_size, self.image_size)
        x = torch.randn(shape, generator=gen).to(self.device)
        if batch_size not in self.compile_seconds:
            t0 = time.perf_counter()
            self._forward(x)
            self.sync()
            self.compile_seconds[batch_size] = time.perf_counter() - t0
        return lambda: self._forward(x)

    def provenance(self) -> dict:
        return {
            **super().provenance(),
            "compiler": "inductor",
            "compile_seconds_by_batch": dict(self.compile_seconds),
        }


class OpenVino(Backend):
    """Intel OpenVINO on the CPU, reading the ONNX file directly (FP32 or INT8 QDQ).

    `precision` is the inference precision hint ("fp32" forces f32 even on CPUs where
    OpenVINO would pick bf16 by itself; "bf16" asks for bf16). The row states the precision
    the compiled model ACTUALLY uses (OpenVINO silently keeps f32 when bf16 is unsupported).
    """

    runtime = "openvino"

    def __init__(
        self,
        path: str | Path,
        *,
        precision: str,
        threads: int,
        image_size: int,
        file_precision: str = "fp32",
    ):
        import openvino as ov
        import openvino.properties as props
        import openvino.properties.hint as hints

        self.path, self.image_size, self.threads = Path(path), image_size, threads
        core = ov.Core()
        model = core.read_model(str(self.path))
        self.file_precision = file_precision  # "int8": the QDQ copy, run as int8 kernels
        config = {
            hints.performance_mode: hints.PerformanceMode.LATENCY,
            props.inference_num_threads: int(threads),
        }
        if precision == "bf16":
            config[hints.inference_precision] = ov.Type.bf16
        elif precision == "fp32":
            config[hints.inference_precision] = ov.Type.f32
        self.compiled = core.compile_model(model, "CPU", config)
        actual = self.compiled.get_property(hints.inference_precision).get_type_name()
        self.inference_precision = {"f32": "fp32", "bf16": "bf16", "f16": "fp16"}.get(
            actual, actual
        )
        self.version = ov.__version__
        self._threads_used = int(self.compiled.get_property(props.inference_num_threads))

    def prepare(self, batch_size: int) -> Callable[[], object]:
        rng = np.random.default_rng(0)
        x = rng.standard_normal((batch_size, 3, self.image_size, self.image_size), np.float32)
        request = self.compiled.create_infer_request()
        return lambda: request.infer({0: x})

    def logits(self, x: np.ndarray, *, batch_size: int = 32) -> np.ndarray:
        request, out = self.compiled.create_infer_request(), self.compiled.outputs[0]
        return np.concatenate(
            [
                np.array(request.infer({0: np.ascontiguousarray(x[i : i + batch_size])})[out])
                for i in range(0, len(x), batch_size)
            ]
        ).astype(np.float32)

    @property
    def precision(self) -> str:
        return "int8" if self.file_precision == "int8" else self.inference_precision

    def provenance(self) -> dict:
        return {
            "runtime": self.runtime,
            "provider": "cpu",
            "precision": self.precision,
            "inference_precision": self.inference_precision,
            "channels_last": False,
            "memory_format": "contiguous",
            "threads": self._threads_used,
            "openvino_version": self.version,
        }


def openvino_status() -> tuple[bool, str | None, set[str]]:
    """(installed, reason if not, CPU optimization capabilities such as {"FP32", "BF16"})."""
    try:
        import openvino as ov
    except ImportError:
        return False, "openvino not installed (pip install .[openvino])", set()
    try:
        caps = set(ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
    except Exception as e:  # a broken install or no CPU plugin
        return False, f"openvino cannot use the CPU ({type(e).__name__}: {e})", set()
    return True, None, caps


def plan_variants(
    model: torch.nn.Module,
    *,
    groups: tuple[str, ...],
    fp32_onnx: Path,
    int8_onnx: Path | None,
    fp16_onnx: Path | None,
    device: torch.device,
    threads: int,
    image_size: int,
    bf16_hardware: bool,
    int8_unavailable: str | None = None,
    int8_candidates: list[tuple[str, Path]] | None = None,
) -> list[VariantSpec]:
    """Every variant of `groups`, each with a backend factory or the reason it is skipped.

    int8_onnx / fp16_onnx: the copies made by exports.quantize (None when making one failed:
    `int8_unavailable` then says why). int8_candidates: (settings slug, file) of every INT8
    candidate: each is timed as `ort_int8_<slug>` (bench.measure.int8choice keeps the fastest passing
    one as `ort_int8`); without them `int8_onnx` is the one `ort_int8`. Factories are called
    later, one at a time, so a variant that fails to build (e.g. an OpenVINO compile error)
    fails alone.
    """
    on = _Machine(model, device, threads, image_size)
    # ONNX Runtime FP32, the export itself, is always measured too: the file every other
    # ONNX variant is made from and the one `python -m exports predict` runs by default.
    specs = [
        VariantSpec("torch_fp32", "baseline", "torch", "fp32", "checkpoint",
                    make=on.torch(precision="fp32")),
        VariantSpec("ort_fp32", "baseline", "onnxruntime", "fp32", "onnx:fp32",
                    make=on.ort(fp32_onnx, "cuda" if on.cuda else "cpu")),
    ]  # fmt: skip
    if "fp32" in groups:
        specs.append(
            VariantSpec("torch_channels_last_fp32", "fp32", "torch", "fp32", "checkpoint",
                        make=on.torch(precision="fp32", channels_last=True))
        )  # fmt: skip
    if "int8" in groups:
        specs += _int8_specs(on, int8_onnx, int8_unavailable, int8_candidates)
    if "fp16" in groups:
        specs.append(_fp16_spec(on, fp16_onnx, int8_unavailable))
    if "bf16" in groups:
        specs += _half_specs(on, bf16_hardware)
    if "compile" in groups:
        specs.append(
            VariantSpec("torch_compile_fp32", "compile", "torch.compile", "fp32", "checkpoint",
                        make=lambda: TorchCompile(model, **on.torch_kw))
        )  # fmt: skip
    if "openvino" in groups:
        specs += _openvino_specs(on, fp32_onnx, int8_onnx, int8_unavailable)
    return specs


@dataclass
class _Machine:
    """The model and where its variants run: backend factories for plan_variants."""

    model: torch.nn.Module
    device: torch.device
    threads: int
    image_size: int

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    @property
    def torch_kw(self) -> dict:
        return dict(device=self.device, threads=self.threads, image_size=self.image_size)

    def torch(self, **kw) -> Callable[[], Backend]:
        return lambda: TorchEager(self.model, **kw, **self.torch_kw)

    def ort(self, path, provider="cpu") -> Callable[[], Backend]:
        from bench.measure.backends import OnnxRuntime

        return lambda: OnnxRuntime.open(path, provider=provider, threads=self.threads,
                                        strict=True, image_size=self.image_size)  # fmt: skip


def _int8_specs(on: _Machine, int8_onnx, unavailable, candidates) -> list[VariantSpec]:
    # Static INT8 QDQ is a CPU-provider format here (ORT's GPU providers need TensorRT
    # calibration caches); on a GPU machine it is still the CPU deployment option.
    if candidates:
        return [
            VariantSpec(f"ort_int8_{slug}", "int8", "onnxruntime", "int8", f"onnx:int8:{slug}",
                        make=on.ort(path, "cpu"), candidate=slug)
            for slug, path in candidates
        ]  # fmt: skip
    spec = VariantSpec("ort_int8", "int8", "onnxruntime", "int8", "onnx:int8")
    if int8_onnx is None:
        spec.skipped = unavailable or "no INT8 copy was made"
    else:
        spec.make = on.ort(int8_onnx, "cpu")
    return [spec]


def _fp16_spec(on: _Machine, fp16_onnx, unavailable) -> VariantSpec:
    spec = VariantSpec("ort_fp16", "fp16", "onnxruntime", "fp16", "onnx:fp16")
    if fp16_onnx is None:
        spec.skipped = unavailable or "no FP16 copy was made"
    elif not on.cuda:
        spec.skipped = (
            "FP16 ONNX is timed only where a GPU provider runs it; this run has no CUDA "
            "device (the .fp16.onnx file is still exported)"
        )
    else:
        spec.make = on.ort(fp16_onnx, "cuda")
    return spec


def _half_specs(on: _Machine, bf16_hardware: bool) -> list[VariantSpec]:
    """The --variants bf16 group: torch autocast bf16, and fp16 on CUDA."""
    specs = []
    if on.cuda:
        specs.append(
            VariantSpec("torch_fp16", "bf16", "torch", "fp16", "checkpoint",
                        make=on.torch(precision="fp16", channels_last=True))
        )  # fmt: skip
    spec = VariantSpec("torch_bf16", "bf16", "torch", "bf16", "checkpoint")
    supported = torch.cuda.is_bf16_supported() if on.cuda else bf16_hardware
    if supported:
        spec.make = on.torch(precision="bf16", channels_last=True)
    else:
        spec.skipped = (
            "the GPU lacks bf16"
            if on.cuda
            else "the CPU has no bf16 hardware (neither avx512_bf16 nor amx_bf16): "
            "autocast would emulate it, slower than fp32"
        )
    specs.append(spec)
    return specs


def _openvino_specs(on: _Machine, fp32_onnx, int8_onnx, unavailable) -> list[VariantSpec]:
    installed, why, caps = openvino_status()
    specs = []
    for name, precision, path, artifact in (
        ("openvino_fp32", "fp32", fp32_onnx, "onnx:fp32"),
        ("openvino_bf16", "bf16", fp32_onnx, "onnx:fp32"),
        ("openvino_int8", "int8", int8_onnx, "onnx:int8"),
    ):
        spec = VariantSpec(name, "openvino", "openvino", precision, artifact)
        if not installed:
            spec.skipped = why
        elif precision == "bf16" and "BF16" not in caps:
            spec.skipped = (
                f"the CPU has no bf16 support (OpenVINO CPU capabilities: "
                f"{', '.join(sorted(caps))})"
            )
        elif path is None:
            spec.skipped = unavailable or "no INT8 copy was made"
        else:
            hint = None if precision == "int8" else precision
            spec.make = lambda path=path, hint=hint, fp=precision: OpenVino(
                path,
                precision=hint,
                file_precision="int8" if fp == "int8" else "fp32",
                threads=on.threads,
                image_size=on.image_size,
            )
        specs.append(spec)
    return specs
