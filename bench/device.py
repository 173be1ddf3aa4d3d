"""The device a run uses and the timestamps its records carry (shared by run and measure)."""

from __future__ import annotations

import datetime as dt

import torch

from bench.config import ConfigError


def pick_device(spec: str) -> torch.device:
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {spec}: no CUDA device is available; use --device cpu")
    return torch.device(spec)


def utc_now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
