"""What this CPU can do: the instruction sets that decide which precision and runtime is fast.

Speed figures from two machines of this project differ by 2-3x for the same code (an AVX2-only
AMD EPYC against an Intel Xeon with AVX-512 VNNI and AMX), so every figure carries `cpu_isa()`,
and precision choices (bf16 autocast, INT8 reduce_range) read the same flags instead of guessing.
"""

from __future__ import annotations

import functools
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


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU feature flags the kernel reports (empty where /proc/cpuinfo does not exist)."""
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
    flags = cpu_flags() if flags is None else flags
    return {
        "machine": platform.machine(),
        "torch_capability": torch_cpu_capability(),
        **{name: name in flags for name in ISA_FLAGS},
    }


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
    if isa.get("amx_tile"):
        parts.append("AMX")
    return " + ".join(parts) if parts else (isa.get("machine") or "unknown")


def isa_class(isa: dict | None = None) -> str:
    """The CPU class a speed ratio belongs to: the same code runs 2-3x apart across them.

    'AVX2' (e.g. AMD Zen 2/3), 'AVX-512 + VNNI + BF16 (no AMX)' (AMD Zen 4/5, Intel Cooper
    Lake / Ice Lake-class parts with bf16), 'AVX-512 + AMX' (Intel Sapphire Rapids and later);
    anything else gets its isa_label (an older or non-x86 CPU).
    """
    isa = cpu_isa() if isa is None else isa
    if isa.get("amx_tile") and isa.get("avx512f"):
        return "AVX-512 + AMX"
    if isa.get("avx512f") and isa.get("avx512_vnni") and isa.get("avx512_bf16"):
        return "AVX-512 + VNNI + BF16 (no AMX)"
    if isa.get("avx2") and not isa.get("avx512f"):
        return "AVX2" + (" + AVX-VNNI" if isa.get("avx_vnni") else "")
    return isa_label(isa)
