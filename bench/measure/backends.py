"""Speed backends: one small class per runtime/precision, all behind the `Backend` protocol.

A backend knows how to run ONE model in ONE configuration (runtime, provider, precision,
memory format, threads). The driver (bench.measure.driver) does the rest: warm-up, timed run,
rounds, statistics. Adding a runtime or precision (INT8, bf16, torch.compile, OpenVINO) means
writing one subclass with:

- `prepare(batch_size)`: make a fixed-seed input on the right device/layout and return a
  zero-argument callable that runs the model once on it (inputs are made here, before any
  clock starts);
- `sync()`: wait until the work started by that callable is finished (CUDA: synchronize;
  runtimes whose call returns host arrays need nothing);
- `provenance()`: what the row must say about how it was measured; `provider` is the one
  ACTUALLY running the graph, never merely the one asked for;
- optionally `active()`: a context entered around each of the backend's measurements (thread
  count, inference mode, autocast, memory format), undone on exit so backends interleave
  without leaking state into each other.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch

PRECISIONS = ("fp32", "fp16", "bf16")
_AMP_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


class Backend:
    """The protocol every speed backend implements (see the module docstring)."""

    runtime: str = "?"

    def prepare(self, batch_size: int) -> Callable[[], object]:
        raise NotImplementedError

    def sync(self) -> None:
        """Default: the call is synchronous (returns host data), nothing to wait for."""

    def provenance(self) -> dict:
        raise NotImplementedError

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        yield

    def logits(self, x: np.ndarray, *, batch_size: int = 32) -> np.ndarray:
        """float32 (N, K) logits for preprocessed float32 inputs (N, 3, S, S): the fidelity
        check (exports.fidelity) runs every test image through the backend as timed."""
        raise NotImplementedError

    @property
    def label(self) -> str:
        p = self.provenance()
        label = f"{p['runtime']}/{p['provider']}/{p['precision']}"
        return label + ("/channels_last" if p.get("channels_last") else "")


class TorchEager(Backend):
    """Eager PyTorch inference (eval mode, torch.inference_mode) on CPU or CUDA.

    fp16/bf16 mean AMP (torch.autocast with that dtype; weights stay fp32), as in timm's "amp".
    `threads` sets torch's intra-op threads while the backend is active (restored after);
    the row records torch.get_num_threads() actually in effect. The caller's model keeps its
    device move (like nn.Module.to) but gets its train/eval flag and memory format back.
    """

    runtime = "torch"

    def __init__(
        self,
        model: torch.nn.Module,
        *,
        device: str | torch.device = "cpu",
        precision: str = "fp32",
        channels_last: bool = False,
        threads: int | None = None,
        image_size: int,
        channels: int = 3,
    ):
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        self.model, self.device = model, torch.device(device)
        self.precision, self.channels_last = precision, channels_last
        self.threads, self.image_size, self.channels = threads, image_size, channels
        self._threads_used = threads or torch.get_num_threads()

    def prepare(self, batch_size: int) -> Callable[[], object]:
        # Fixed-seed input on a private generator: no global RNG consumed, same data each call.
        gen = torch.Generator().manual_seed(0)
        shape = (batch_size, self.channels, self.image_size, self.image_size)
        x = torch.randn(shape, generator=gen).to(self.device)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        model = self.model
        return lambda: model(x)

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        old_threads, was_training = torch.get_num_threads(), self.model.training
        if self.threads is not None:
            torch.set_num_threads(self.threads)
        self._threads_used = torch.get_num_threads()
        self.model.to(self.device).eval()
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)
        amp = torch.autocast(
            device_type=self.device.type,
            dtype=_AMP_DTYPES.get(self.precision, torch.float32),
            enabled=self.precision != "fp32",
        )
        try:
            with torch.inference_mode(), amp:
                yield
        finally:
            if self.channels_last:
                self.model.to(memory_format=torch.contiguous_format)
            self.model.train(was_training)
            torch.set_num_threads(old_threads)

    def logits(self, x: np.ndarray, *, batch_size: int = 32) -> np.ndarray:
        out = []
        with self.active():
            for i in range(0, len(x), batch_size):
                xb = torch.from_numpy(np.ascontiguousarray(x[i : i + batch_size])).to(self.device)
                if self.channels_last:
                    xb = xb.contiguous(memory_format=torch.channels_last)
                out.append(self._forward(xb).float().cpu().numpy())
        return np.concatenate(out)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def provenance(self) -> dict:
        return {
            "runtime": self.runtime,
            "provider": self.device.type,
            "precision": self.precision,
            "channels_last": self.channels_last,
            "memory_format": "channels_last" if self.channels_last else "contiguous",
            "threads": self._threads_used,
        }


class OnnxRuntime(Backend):
    """An ONNX Runtime session on one execution provider, fp32.

    Build it with `OnnxRuntime.open(path, provider=...)`: the session is created once and
    reused for every batch size and round (a TensorRT engine build takes minutes; it happens
    in the first warm-up). `provider` in the row is the provider ACTUALLY running the graph
    (session.get_providers()[0]). GPU timings include copying the numpy input to the device
    and the logits back (what a caller of session.run pays), so no extra sync is needed.
    """

    runtime = "onnxruntime"

    def __init__(
        self,
        session,
        *,
        requested_provider: str,
        threads: int,
        image_size: int,
        nodes_by_provider: dict[str, int] | None = None,
        strict_providers: bool = False,
    ):
        self.session, self.requested_provider = session, requested_provider
        self.threads, self.image_size = threads, image_size
        self.nodes_by_provider, self.strict_providers = nodes_by_provider, strict_providers

    @classmethod
    def open(
        cls,
        path: str | Path,
        *,
        provider: str = "cpu",
        threads: int | None = None,
        strict: bool = True,
        strict_providers: bool = False,
        image_size: int,
    ) -> OnnxRuntime:
        """threads=None: torch.get_num_threads(), so CPU rows compare like for like.

        strict: a GPU provider that falls back entirely raises. strict_providers: a GPU
        provider that cannot run every node raises too (ORT's disable_cpu_ep_fallback).
        The node placement is counted from one profiled run (bench.measure.placement).
        """
        from bench.measure.placement import profile_placement
        from exports.runtime import create_session

        threads = threads or torch.get_num_threads()
        session, actual = create_session(
            path,
            provider=provider,
            threads=threads,
            strict=strict,
            disable_cpu_fallback=strict_providers,
        )
        nodes = profile_placement(
            path, provider=actual, threads=threads, image_size=image_size, strict=strict_providers
        )
        return cls(
            session,
            requested_provider=provider,
            threads=threads,
            image_size=image_size,
            nodes_by_provider=nodes,
            strict_providers=strict_providers,
        )

    @property
    def provider(self) -> str:
        from exports.runtime import provider_short_name

        return provider_short_name(self.session.get_providers()[0])

    def prepare(self, batch_size: int) -> Callable[[], object]:
        inp = self.session.get_inputs()[0]
        channels = inp.shape[1] if isinstance(inp.shape[1], int) else 3
        rng = np.random.default_rng(0)
        shape = (batch_size, channels, self.image_size, self.image_size)
        feed = {inp.name: rng.standard_normal(shape, dtype=np.float32)}
        session = self.session
        return lambda: session.run(None, feed)

    def logits(self, x: np.ndarray, *, batch_size: int = 32) -> np.ndarray:
        name = self.session.get_inputs()[0].name
        return np.concatenate(
            [
                self.session.run(None, {name: np.ascontiguousarray(x[i : i + batch_size])})[0]
                for i in range(0, len(x), batch_size)
            ]
        ).astype(np.float32)

    @property
    def precision(self) -> str:
        """What the file computes in: its neu_bench.precision (INT8/FP16 copies), else fp32."""
        meta = self.session.get_modelmeta().custom_metadata_map
        return meta.get("neu_bench.precision", "fp32")

    def provenance(self) -> dict:
        session_threads = self.session.get_session_options().intra_op_num_threads
        return {
            "runtime": self.runtime,
            "provider": self.provider,
            "requested_provider": self.requested_provider,
            "precision": self.precision,
            "channels_last": False,
            "memory_format": "contiguous",
            # 0 would mean "ORT default" (one per physical core); report what we asked for.
            "threads": session_threads if session_threads > 0 else self.threads,
            # Counted from a profiled run: a "cuda" row may still run some nodes on the CPU.
            "nodes_by_provider": self.nodes_by_provider,
            "strict_providers": self.strict_providers,
        }
