"""What this CPU can do: the instruction sets that decide which precision and runtime is fast.

Speed figures from two machines of this project differ by 2-3x for the same code (an AVX2-only
AMD EPYC against an Intel Xeon with AVX-512 VNNI and AMX), so every figure carries `cpu_isa()`,
and precision choices (bf16 autocast, INT8 reduce_range) read the same flags instead of guessing.
"""

from __future__ import annotations

import functools
import os
import platform

# The flags that matter for inference and training speed, in /proc/cpuinfo spelling.
ISA_FLAGS = (
    "avx2",
    "fma",
    "avx512f",
    "avx512bw",
    "avx512_vnni",
    "avx_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "amx_tile",
    "amx_bf16",
    "amx_int8",
)


# Replaces the probed flags, so that the decisions made from them (amp, INT8 settings,
# deployment variants, labels) can be exercised for every CPU class on any one machine: the
# suite's `tox -e isa` sets it per class. It changes decisions only; the kernels torch and ONNX
# Runtime run are still the machine's (ATEN_CPU_CAPABILITY / ONEDNN_MAX_CPU_ISA restrict those).
FLAGS_OVERRIDE_ENV = "NEU_BENCH_CPU_FLAGS"


def flags_override() -> frozenset[str] | None:
    """The flags named by NEU_BENCH_CPU_FLAGS (comma or space separated), None when unset."""
    value = os.environ.get(FLAGS_OVERRIDE_ENV, "").strip()
    if not value:
        return None
    return frozenset(f.strip().lower() for f in value.replace(",", " ").split() if f.strip())


def cpu_flags() -> frozenset[str]:
    """The CPU feature flags: NEU_BENCH_CPU_FLAGS when set, else what the kernel reports."""
    override = flags_override()
    return _probed_flags() if override is None else override


@functools.cache
def _probed_flags() -> frozenset[str]:
    """The flags /proc/cpuinfo reports (empty where it does not exist)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("flags") or line.startswith("Features"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def torch_cpu_capability() -> str | None:
    """The kernel family torch dispatches to on this CPU ('AVX2', 'AVX512', ...)."""
    try:
        import torch

        return torch.backends.cpu.get_cpu_capability()
    except (ImportError, AttributeError):
        return None


def cpu_isa(flags: frozenset[str] | None = None) -> dict:
    """`environment.cpu_isa`: torch's capability plus one boolean per relevant flag."""
    simulated = flags is None and flags_override() is not None
    flags = cpu_flags() if flags is None else flags
    isa = {
        "machine": platform.machine(),
        "torch_capability": torch_cpu_capability(),
        **{name: name in flags for name in ISA_FLAGS},
        "cpu_class": cpu_class(flags),
    }
    if simulated:
        # Recorded so that no figure measured under the override passes for that class's.
        isa["flags_source"] = FLAGS_OVERRIDE_ENV
    return isa


# The CPU classes this project's machines (and its users') fall into, by the flags that change
# its decisions: bf16 autocast, INT8 reduce_range and activation type, the bf16 variants.
# `tox -e isa` runs the decision-sensitive tests once per class with these flags.
CPU_CLASSES = {
    "avx2": "avx2,fma",
    "avx512-bf16": "avx2,fma,avx512f,avx512bw,avx512_vnni,avx512_bf16",
    "amx": "avx2,fma,avx512f,avx512bw,avx512_vnni,avx512_bf16,avx512_fp16,amx_tile,amx_bf16,amx_int8",
}


def cpu_class(flags: frozenset[str] | None = None) -> str:
    """'amx' (Intel Sapphire Rapids and later), 'avx512-bf16' (e.g. AMD Zen 4/5, or a Xeon
    whose AMX the hypervisor hides), 'avx512', 'avx2' or 'other'."""
    flags = cpu_flags() if flags is None else flags
    if {"amx_bf16", "amx_int8"} & flags:
        return "amx"
    if "avx512_bf16" in flags:
        return "avx512-bf16"
    if "avx512f" in flags:
        return "avx512"
    return "avx2" if "avx2" in flags else "other"


def has_bf16_hardware(flags: frozenset[str] | None = None) -> bool:
    """Native bf16 arithmetic (AVX512_BF16 or AMX-BF16): bf16 autocast pays off only here."""
    flags = cpu_flags() if flags is None else flags
    return "avx512_bf16" in flags or "amx_bf16" in flags


def has_vnni(flags: frozenset[str] | None = None) -> bool:
    """int8 dot-product instructions; without them ORT's docs prescribe reduce_range for INT8."""
    flags = cpu_flags() if flags is None else flags
    return bool({"avx512_vnni", "avx_vnni", "amx_int8"} & flags)


def isa_label(isa: dict | None = None) -> str:
    """A short human label for tables and README lines, e.g. 'AVX2' or 'AVX-512 VNNI + AMX'."""
    isa = cpu_isa() if isa is None else isa
    parts = []
    if isa.get("avx512f"):
        parts.append("AVX-512")
        if isa.get("avx512_vnni"):
            parts.append("VNNI")
        if isa.get("avx512_bf16"):
            parts.append("BF16")
    elif isa.get("avx2"):
        parts.append("AVX2")
        if isa.get("avx_vnni"):
            parts.append("AVX-VNNI")
    if isa.get("amx_tile") or isa.get("amx_bf16") or isa.get("amx_int8"):
        parts.append("AMX")
    label = " + ".join(parts) if parts else (isa.get("machine") or "unknown")
    if isa.get("flags_source"):
        label += f" (simulated by {isa['flags_source']})"
    return label
