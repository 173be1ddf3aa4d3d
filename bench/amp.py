"""Training precision: which one to use (a pure decision that states its reason) and how.

Mixed precision only pays where the hardware does the narrow arithmetic natively: CUDA GPUs,
and CPUs with AVX512_BF16 or AMX-BF16 (on 2 cores of a Xeon with AMX, we measured
ResNet-50 training at 5.7 img/s in fp32 and 16.4 img/s in bf16 autocast). On other CPUs torch emulates bf16/fp16 by
converting around fp32 kernels, which is slower than fp32, so `auto` stays in fp32 there and
says why. An explicit request is honoured anyway (that is how the cost is measured) and the
reason says it is emulated.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from bench import cpu

AMP_CHOICES = ("auto", "bf16", "fp16", "off")
PRECISIONS = ("fp32", "bf16", "fp16")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}

_NO_BF16 = "no AVX512_BF16/AMX-BF16"


def _cpu_bf16_unit(flags: frozenset[str]) -> str:
    return "AMX-BF16" if "amx_bf16" in flags else "AVX512_BF16"


def choose_precision(
    device_type: str, cuda_bf16: bool, cpu_flags: frozenset[str], requested: str
) -> tuple[str, str]:
    """(precision, reason) for training: precision is fp32, bf16 or fp16.

    device_type: 'cuda' or 'cpu'. cuda_bf16: the GPU does bf16 natively
    (torch.cuda.is_bf16_supported(including_emulation=False)); ignored on CPU. cpu_flags: the
    /proc/cpuinfo flags (bench.cpu.cpu_flags()); ignored on CUDA. requested: --amp value.
    """
    if requested not in AMP_CHOICES:
        raise ValueError(f"--amp must be one of {', '.join(AMP_CHOICES)} (got {requested!r})")
    if requested == "off":
        return "fp32", "--amp off"
    if device_type == "cuda":
        if requested == "auto":
            if cuda_bf16:
                return "bf16", "auto: the CUDA device computes bf16 natively"
            return "fp16", "auto: the CUDA device has no native bf16; fp16 with GradScaler"
        if requested == "bf16":
            if cuda_bf16:
                return "bf16", "--amp bf16: the CUDA device computes bf16 natively"
            return "bf16", "--amp bf16 on a CUDA device without native bf16: emulated, slow"
        return "fp16", "--amp fp16: fp16 autocast with GradScaler"
    if device_type != "cpu":
        return "fp32", f"no mixed-precision rule for device type {device_type!r}: fp32"
    native_bf16 = cpu.has_bf16_hardware(cpu_flags)
    if requested == "auto":
        if native_bf16:
            return "bf16", f"auto: the CPU has {_cpu_bf16_unit(cpu_flags)}, bf16 autocast"
        return "fp32", (
            f"auto: the CPU has {_NO_BF16}, so bf16 would be emulated and slower than fp32"
        )
    if requested == "bf16":
        if native_bf16:
            return "bf16", f"--amp bf16: the CPU has {_cpu_bf16_unit(cpu_flags)}"
        return "bf16", (
            f"--amp bf16 on a CPU with {_NO_BF16}: emulated, expect it slower than fp32"
        )
    # fp16 on CPU: torch's CPU autocast supports float16 (and GradScaler('cpu') exists), but
    # only AVX512_FP16 / AMX-FP16 compute it natively.
    if {"avx512_fp16", "amx_fp16"} & cpu_flags:
        return "fp16", "--amp fp16: the CPU has AVX512_FP16/AMX-FP16; fp16 with GradScaler"
    return "fp16", (
        "--amp fp16 on a CPU without AVX512_FP16/AMX-FP16: emulated, expect it slower than "
        "fp32; fp16 with GradScaler"
    )


@dataclass(frozen=True)
class Precision:
    """One training precision on one device type: the autocast region and the loss scaler."""

    name: str  # fp32 | bf16 | fp16
    reason: str
    device_type: str

    @property
    def dtype(self) -> torch.dtype | None:
        """The autocast dtype, None for fp32."""
        return DTYPES.get(self.name)

    def autocast(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def grad_scaler(self) -> torch.amp.GradScaler:
        # fp16's 5-bit exponent underflows small gradients; bf16 has fp32's range and needs none.
        return torch.amp.GradScaler(self.device_type, enabled=self.name == "fp16")


def resolve_precision(device: torch.device, requested: str) -> Precision:
    """The Precision `requested` (--amp) gives on `device`, from this machine's capabilities."""
    cuda_bf16 = device.type == "cuda" and _cuda_native_bf16(device)
    flags = cpu.cpu_flags() if device.type == "cpu" else frozenset()
    name, reason = choose_precision(device.type, cuda_bf16, flags, requested)
    return Precision(name, reason, device.type)


def _cuda_native_bf16(device: torch.device) -> bool:
    with torch.cuda.device(device):
        try:
            return torch.cuda.is_bf16_supported(including_emulation=False)
        except TypeError:  # torch without the keyword: it reported native support only
            return torch.cuda.is_bf16_supported()
