"""Does the .onnx compute what the PyTorch model computes? Checked on every image, not a sample.

check_parity runs the torch model (eval, CPU, float32) and the ONNX model in ONNX Runtime
on the same preprocessed inputs, at batch 1 and at a larger batch (so the dynamic batch
axis is exercised, including a smaller last chunk), and checks, in this order:

1. names: the graph has input "input" and output "logits";
2. shapes: declared input float32 (batch, 3, H, W) with a symbolic batch and H, W of the
   inputs, output float32 (batch, K) (exports.contract.signature_problems, the check export
   and the runtime apply too); the output is (b, num_classes) for every batch size b run;
3. values: every |onnx - torch| logit difference is <= atol + rtol * (that image's largest
   |torch logit|), and the top-1 class is the same for every image at every batch size.

Every failure is collected (the report lists all of them, not just the first).

Why atol = 1e-3 by default: PyTorch and ORT use different convolution algorithms and
summation orders, and ORT folds BatchNorm into the convolutions, so float32 logits of these
CNNs (magnitude ~1-30) differ by about 1e-6..1e-4. A real export bug - wrong weights, a
layer in training mode, a missing op, wrong preprocessing - moves logits by 1e-1 or more.
1e-3 sits between the two with an order of magnitude of headroom on each side.

Why also rtol = 1e-4 of the image's logit scale: float32 rounding error is relative. A model
trained hard (or a few epochs with a high learning rate on a GPU) can have logits of ~100,
where the same 1e-5 relative reordering error is 1e-3 absolute: the first ResNet-50 trained on
the H200 failed parity at 1.7e-3 on such logits with every top-1 class equal. 1e-4 relative is
still three orders of magnitude below what an export bug does (>= 1e-1 relative). The CUDA
provider is run with TF32 disabled, which would otherwise add ~1e-3 relative error (ORT
enables it by default on Ampere+); TensorRT builds its engines in FP32 unless told otherwise.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from exports.contract import (
    METADATA_PREFIX,
    OUTPUT_NAME,
    Signature,
    session_ports,
    signature_problems,
)
from exports.fidelity import DEFAULT_ATOL, DEFAULT_RTOL
from exports.runtime import create_session


@dataclass
class ParityReport:
    model: str
    path: str
    provider: str  # the provider ORT actually used (session.get_providers()[0], short name)
    batch_sizes: list[int]
    n_images: int
    max_abs_diff: float  # max |onnx - torch| over every logit, image and batch size
    max_rel_diff: float  # max_abs_diff / max |torch logit|: the error relative to logit scale
    top1_disagreements: int  # images whose ONNX top-1 differs from torch's at any batch size
    torch_accuracy: float | None  # None when no labels were given
    onnx_accuracy: float | None  # worst over the batch sizes
    atol: float
    passed: bool
    failures: list[str] = field(default_factory=list)
    max_abs_diff_by_batch: dict[int, float] = field(default_factory=dict)
    rtol: float = DEFAULT_RTOL  # allowed extra difference per unit of the image's logit scale

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        status = "PASSED" if self.passed else "FAILED"
        by_batch = ", ".join(f"batch {b}: {d:.3g}" for b, d in self.max_abs_diff_by_batch.items())
        return (
            f"parity {status} for {self.model} ({self.path}) on {self.provider}, "
            f"{self.n_images} images: {OUTPUT_NAME} max_abs_diff={self.max_abs_diff:.3g} "
            f"(atol {self.atol:g} + rtol {self.rtol:g} x logit scale; {by_batch}), max_rel_diff={self.max_rel_diff:.3g}, "
            f"top-1 disagreements {self.top1_disagreements}, accuracy torch "
            f"{_fmt(self.torch_accuracy)} vs onnx {_fmt(self.onnx_accuracy)}"
        )


class ParityError(AssertionError):
    """The ONNX model does not reproduce the torch model; the message lists every failure."""

    def __init__(self, report: ParityReport):
        self.report = report
        lines = [report.summary()] + [f"  - {f}" for f in report.failures]
        super().__init__("\n".join(lines))


def assert_parity(report: ParityReport) -> ParityReport:
    """Raise ParityError unless report.passed; returns the report for chaining."""
    if not report.passed:
        raise ParityError(report)
    return report


def check_parity(
    model: torch.nn.Module,
    onnx_path: str | Path,
    inputs: torch.Tensor,
    labels=None,
    *,
    batch_sizes=(1, 32),
    provider: str = "cpu",
    atol: float = DEFAULT_ATOL,
    rtol: float = DEFAULT_RTOL,
    threads: int | None = None,
) -> ParityReport:
    """Compare `model` and the ONNX file on every row of `inputs` (N, 3, H, W) float32.

    `inputs` are already preprocessed (neu.image.normalize / neu.augment.eval_batch);
    `labels` (N,) ints or None. The torch model is run on a CPU float32 copy when it lives
    elsewhere; it is put in eval mode and its mode restored. Raises ProviderUnavailableError
    when a GPU provider was asked for and ORT would fall back to CPU.
    """
    onnx_path = Path(onnx_path)
    x, y, batch_sizes = _check_arguments(inputs, labels, batch_sizes)
    # CUDA: TF32 would make ORT's own rounding the dominant difference (see module doc).
    options = {"use_tf32": "0"} if provider == "cuda" else None
    session, actual = create_session(
        onnx_path, provider=provider, threads=threads, strict=True, provider_options=options
    )
    meta = session.get_modelmeta().custom_metadata_map
    name = meta.get(METADATA_PREFIX + "model") or type(model).__name__

    # 1. names and 2. declared shapes: the contract, with H x W of the inputs given
    declared = Signature(input_dims=(3, x.shape[2], x.shape[3]))
    failures = signature_problems(*session_ports(session), declared)
    # torch reference, computed once (eval-mode CNNs are batch-independent)
    reference = _torch_logits(model, x, batch=max(batch_sizes))
    # 3. values, at each batch size over every image
    feed_name = session.get_inputs()[0].name
    runs = {}
    for b in batch_sizes:
        logits, failure = _onnx_logits(session, feed_name, x, b, reference.shape[1])
        if failure:
            failures.append(failure)
        else:
            runs[b] = logits
    values = _compare_values(reference, runs, y, atol=atol, rtol=rtol)
    failures += values.pop("failures")
    return ParityReport(
        model=name,
        path=str(onnx_path),
        provider=actual,
        batch_sizes=batch_sizes,
        n_images=len(x),
        torch_accuracy=None if y is None else float((reference.argmax(1) == y).mean()),
        atol=atol,
        rtol=rtol,
        passed=not failures,
        failures=failures,
        **values,
    )


def logits_pair(
    model: torch.nn.Module,
    onnx_path: str | Path,
    inputs: torch.Tensor,
    *,
    batch: int = 32,
    provider: str = "cpu",
    threads: int | None = None,
) -> tuple[np.ndarray, np.ndarray, str]:
    """(FP32 torch logits, the ONNX file's logits, the provider that ran it) on every row of
    `inputs`: what a reduced-precision file is judged on (exports.fidelity), since its logits
    differ from torch's by design and strict parity would fail it every time."""
    x, _, _ = _check_arguments(inputs, None, (batch,))
    session, actual = create_session(onnx_path, provider=provider, threads=threads, strict=True)
    reference = _torch_logits(model, x, batch=batch)
    logits, failure = _onnx_logits(session, session.get_inputs()[0].name, x, batch,
                                   reference.shape[1])  # fmt: skip
    if failure:
        raise RuntimeError(f"{onnx_path}: {failure}")
    return reference, logits, actual


def _check_arguments(inputs, labels, batch_sizes):
    """(x float32 CPU tensor, y int64 array or None, sorted distinct batch sizes)."""
    x = torch.as_tensor(inputs).detach().to("cpu", torch.float32).contiguous()
    if x.ndim != 4 or x.shape[1] != 3 or len(x) == 0:
        raise ValueError(f"inputs must be a non-empty (N, 3, H, W) tensor, got {tuple(x.shape)}")
    y = None if labels is None else np.asarray(labels).astype(np.int64).reshape(-1)
    if y is not None and len(y) != len(x):
        raise ValueError(f"{len(y)} labels for {len(x)} images")
    batch_sizes = sorted({int(b) for b in batch_sizes})
    if not batch_sizes or batch_sizes[0] < 1:
        raise ValueError(f"batch_sizes must be positive, got {batch_sizes}")
    return x, y, batch_sizes


def _onnx_logits(session, feed_name: str, x: torch.Tensor, b: int, num_classes: int):
    """(logits of every image run `b` at a time, None), or (None, why) when a batch fails or
    comes back in the wrong shape: a failure at one batch size is reported, not raised."""
    chunks = []
    for i in range(0, len(x), b):
        feed = x[i : i + b].numpy()
        try:
            out = session.run(None, {feed_name: feed})[0]
        except Exception as e:  # an ORT failure at one batch size is a failure, not a crash
            return None, f"batch {b}: ONNX Runtime failed on a batch of {len(feed)}: {e}"
        if out.shape != (len(feed), num_classes):
            return None, (
                f"batch {b}: output shape {tuple(out.shape)} for a batch of {len(feed)}, "
                f"expected ({len(feed)}, {num_classes})"
            )
        chunks.append(out)
    return np.concatenate(chunks).astype(np.float32), None


def _compare_values(reference: np.ndarray, runs: dict, y, *, atol: float, rtol: float) -> dict:
    """The value figures of ParityReport and their failures, from the torch `reference`
    logits and the ONNX logits of each batch size that ran."""
    failures: list[str] = []
    # Per image: atol plus rtol times its largest |logit| (float32 error scales with the values).
    allowed = atol + rtol * np.abs(reference).max(axis=1, keepdims=True)
    disagree = np.zeros(len(reference), dtype=bool)
    diff_by_batch: dict[int, float] = {}
    accuracies: list[float] = []
    for b, logits in runs.items():
        if not np.isfinite(logits).all():
            failures.append(f"batch {b}: ONNX logits contain NaN/inf")
        diff = np.abs(logits - reference)
        diff_by_batch[b] = float(diff.max())
        excess = float((diff / allowed).max())  # worst diff / allowed; > 1 fails
        if not excess <= 1:  # also catches NaN
            failures.append(
                f"batch {b}: {OUTPUT_NAME} max_abs_diff {diff_by_batch[b]:.3g} exceeds atol "
                f"{atol:g} + rtol {rtol:g} x |logit| ({excess:.3g}x the allowed difference)"
            )
        top1 = logits.argmax(1)
        disagree |= top1 != reference.argmax(1)
        if y is not None:
            accuracies.append(float((top1 == y).mean()))
    max_abs = max(diff_by_batch.values()) if diff_by_batch else float("nan")
    scale = float(np.abs(reference).max())
    failures += _top1_failures(disagree)
    return {
        "max_abs_diff": max_abs,
        "max_rel_diff": max_abs / scale if scale > 0 else max_abs,
        "top1_disagreements": int(disagree.sum()),
        "onnx_accuracy": min(accuracies) if accuracies else None,
        "max_abs_diff_by_batch": diff_by_batch,
        "failures": failures,
    }


def _top1_failures(disagree: np.ndarray) -> list[str]:
    n = int(disagree.sum())
    if not n:
        return []
    first = ", ".join(str(i) for i in np.flatnonzero(disagree)[:10])
    return [
        f"top-1 class differs from torch on {n}/{len(disagree)} images "
        f"(indices {first}{', ...' if n > 10 else ''})"
    ]


def _torch_logits(model: torch.nn.Module, x: torch.Tensor, *, batch: int) -> np.ndarray:
    params = list(model.parameters()) + list(model.buffers())
    on_cpu = all(p.device.type == "cpu" and p.dtype == torch.float32 for p in params)
    net = model if on_cpu else _cpu_copy(model)
    was_training = net.training
    net.eval()
    try:
        with torch.inference_mode():
            out = [net(x[i : i + batch]).float().numpy() for i in range(0, len(x), batch)]
    finally:
        net.train(was_training)
    return np.concatenate(out)


def _cpu_copy(model):
    import copy

    return copy.deepcopy(model).to("cpu", torch.float32)


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.4f}"
