"""What a speed figure is meaningless without: versions, hardware, CPU instruction sets, load."""

from __future__ import annotations

import os
import platform
import sys

import numpy as np
import torch

from bench.cpu import cpu_isa, isa_class, isa_label


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
        # Instruction sets decide which kernels run (AVX2 vs AVX-512 VNNI vs AMX): 2-3x apart.
        "cpu_isa": cpu_isa(),
        "cpu_isa_label": isa_label(),
        "cpu_isa_class": isa_class(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "torch": torch.__version__,
        "torchvision": version("torchvision"),
        "numpy": np.__version__,
        "onnx": version("onnx"),
        "onnxruntime": None,
        "ort_available_providers": [],
        # The openvino_* rows exist only where it is installed (None: those rows are skipped).
        "openvino": version("openvino"),
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
