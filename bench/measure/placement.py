"""Where ONNX Runtime actually ran the nodes: counted from one profiled run.

A session "on CUDA" can still run some nodes on the CPU (ops the CUDA provider lacks; ORT
places them there silently and copies tensors back and forth). session.get_providers() only
says which providers were registered, so every ORT row carries `nodes_by_provider`, counted
from the profile of one run: each executed node appears there as an event of category "Node"
named "<node>_kernel_time" with args.provider = the provider that ran it.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np


def nodes_by_provider_from_profile(events: Iterable[dict]) -> dict[str, int]:
    """{short provider name: number of distinct nodes it ran} from ORT profile events."""
    from exports.runtime import provider_short_name

    seen: dict[str, str] = {}
    for e in events:
        provider = (e.get("args") or {}).get("provider")
        name = e.get("name", "")
        if e.get("cat") == "Node" and provider and name.endswith("_kernel_time"):
            seen[name.removesuffix("_kernel_time")] = provider_short_name(provider)
    counts: dict[str, int] = {}
    for provider in seen.values():
        counts[provider] = counts.get(provider, 0) + 1
    return dict(sorted(counts.items()))


def profile_placement(
    path: str | Path, *, provider: str, threads: int | None, image_size: int, strict: bool = False
) -> dict[str, int]:
    """Run `path` once in a profiled session on `provider`; count nodes per provider.

    A separate short-lived session, so the timed session is never slowed by profiling.
    """
    from exports.runtime import create_session

    with tempfile.TemporaryDirectory(prefix="neu-bench-ort-profile-") as tmp:
        session, _ = create_session(
            path,
            provider=provider,
            threads=threads,
            strict=True,
            disable_cpu_fallback=strict,
            enable_profiling=str(Path(tmp) / "profile"),
        )
        inp = session.get_inputs()[0]
        channels = inp.shape[1] if isinstance(inp.shape[1], int) else 3
        x = np.zeros((1, channels, image_size, image_size), np.float32)
        session.run(None, {inp.name: x})
        with open(session.end_profiling(), encoding="utf-8") as f:
            return nodes_by_provider_from_profile(json.load(f))
