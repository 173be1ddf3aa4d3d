"""Is a deployment variant faithful to the FP32 model it came from? Judged on logits, no torch.

Every variant (ONNX Runtime FP32 / INT8 / FP16, torch channels_last, bf16 autocast,
torch.compile, OpenVINO) runs all test images; its logits are compared with the FP32 torch
model's on the same inputs:

- agreement: the fraction of images whose top-1 class is the reference's;
- test accuracy and its delta against the reference, in percentage points;
- max |delta logit| over every logit of every image.

Two rules, because two kinds of difference are expected:

- FP32 variants compute the same function in the same precision, so they must pass the strict
  parity rule of exports.parity: every |delta logit| <= atol + rtol x that image's largest
  |logit| (1e-3 and 1e-4, see there for why) and not one top-1 flip. Anything else is a bug (wrong weights, wrong layout, a layer left in train
  mode), not rounding.
- Reduced-precision variants (INT8, FP16, bf16) change the arithmetic on purpose; logits move
  by 1e-2..1 and near-tied images may flip. They pass when the accuracy drops by at most
  `max_accuracy_drop_pp` percentage points (default 0.5) AND at least `min_agreement` of the
  images keep their top-1 class (default 0.99). Agreement catches a variant whose errors
  happen to cancel in the accuracy; the accuracy delta is what the plant feels.

A variant that fails is reported with its figures and is never recommended.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

# Same tolerances as exports.parity (which imports them from here): FP32 vs FP32 logits of
# these CNNs differ by 1e-6..1e-4 (relative ~1e-5) from summation order; a bug moves them by
# 1e-1 or more.
DEFAULT_ATOL = 1e-3
DEFAULT_RTOL = 1e-4
DEFAULT_MIN_AGREEMENT = 0.99
DEFAULT_MAX_ACCURACY_DROP_PP = 0.5

FULL_PRECISIONS = ("fp32",)
REDUCED_PRECISIONS = ("int8", "fp16", "bf16")


@dataclass(frozen=True)
class FidelityThresholds:
    """The pass rules (see the module docstring); `bench` exposes each as a flag."""

    atol: float = DEFAULT_ATOL
    """FP32 variants: allowed |delta logit| against the FP32 torch model..."""
    rtol: float = DEFAULT_RTOL
    """...plus this much per unit of the image's largest |logit| (float32 error is relative)."""
    min_agreement: float = DEFAULT_MIN_AGREEMENT
    """Reduced precision: smallest allowed top-1 agreement with FP32 torch (a fraction)."""
    max_accuracy_drop_pp: float = DEFAULT_MAX_ACCURACY_DROP_PP
    """Reduced precision: largest allowed test-accuracy drop, in percentage points."""

    def __post_init__(self):
        if not self.atol > 0 or not self.rtol >= 0:
            raise ValueError(f"atol must be > 0 and rtol >= 0, got {self.atol}, {self.rtol}")
        if not 0 <= self.min_agreement <= 1:
            raise ValueError(
                f"min_agreement is a fraction in [0, 1], got {self.min_agreement} (99% is 0.99)"
            )
        if not self.max_accuracy_drop_pp >= 0:
            raise ValueError(
                f"max_accuracy_drop_pp must be >= 0 (a drop, in percentage points), "
                f"got {self.max_accuracy_drop_pp}"
            )

    def rule(self, precision: str) -> str:
        if precision in FULL_PRECISIONS:
            return (
                f"strict parity: |delta logit| <= {self.atol:g} + {self.rtol:g} x |logit| "
                f"and 0 top-1 flips"
            )
        return (
            f"accuracy delta >= -{self.max_accuracy_drop_pp:g} pp and agreement "
            f">= {100 * self.min_agreement:g}%"
        )


@dataclass
class Fidelity:
    """How one variant's logits compare with the FP32 torch model's on the same images."""

    precision: str
    n_images: int
    agreement: float  # fraction of images with the reference's top-1 class
    top1_disagreements: int
    reference_accuracy: float | None  # FP32 torch, None without labels
    test_accuracy: float | None
    accuracy_delta_pp: float | None  # (test_accuracy - reference_accuracy) * 100
    max_abs_logit_diff: float
    passed: bool
    rule: str
    failures: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        acc = "n/a" if self.test_accuracy is None else f"{100 * self.test_accuracy:.2f}%"
        delta = "n/a" if self.accuracy_delta_pp is None else f"{self.accuracy_delta_pp:+.2f} pp"
        return (
            f"{'passed' if self.passed else 'FAILED'} ({self.rule}): agreement "
            f"{100 * self.agreement:.2f}% on {self.n_images} images, accuracy {acc} ({delta}), "
            f"max |delta logit| {self.max_abs_logit_diff:.3g}"
        )


def compare_logits(
    reference: np.ndarray,
    logits: np.ndarray,
    labels=None,
    *,
    precision: str,
    thresholds: FidelityThresholds | None = None,
) -> Fidelity:
    """Judge `logits` (N, K) of a variant against the FP32 torch `reference` (N, K).

    `labels` (N,) ints, or None when there are none (then accuracies are None and only the
    agreement and logit rules apply). `precision` picks the rule: "fp32" is strict parity,
    "int8" / "fp16" / "bf16" the reduced-precision rule.
    """
    thresholds = thresholds or FidelityThresholds()
    if precision not in FULL_PRECISIONS + REDUCED_PRECISIONS:
        raise ValueError(
            f"unknown precision {precision!r}: one of {FULL_PRECISIONS + REDUCED_PRECISIONS}"
        )
    ref, out, y = _check_arrays(reference, logits, labels)
    finite = bool(np.isfinite(out).all())
    failures = [] if finite else ["the variant's logits contain NaN/inf"]
    max_abs = float(np.abs(out - ref).max()) if finite else float("inf")
    ref_top1, top1 = ref.argmax(1), out.argmax(1)
    flips = int((top1 != ref_top1).sum())
    agreement = 1.0 - flips / len(ref)
    ref_acc = acc = delta = None
    if y is not None:
        ref_acc = float((ref_top1 == y).mean())
        acc = float((top1 == y).mean())
        # Counted in images, then scaled: float subtraction of two fractions would turn an
        # exact zero delta into -1e-15 and a borderline case into a failure.
        delta = 100.0 * int((top1 == y).sum() - (ref_top1 == y).sum()) / len(y)
    if precision in FULL_PRECISIONS:
        failures += _strict_failures(ref, out, finite, max_abs, flips, thresholds)
    else:
        failures += _reduced_failures(agreement, flips, len(ref), ref_acc, acc, delta, thresholds)
    return Fidelity(
        precision=precision,
        n_images=len(ref),
        agreement=agreement,
        top1_disagreements=flips,
        reference_accuracy=ref_acc,
        test_accuracy=acc,
        accuracy_delta_pp=delta,
        max_abs_logit_diff=max_abs,
        passed=not failures,
        rule=thresholds.rule(precision),
        failures=failures,
    )


def _check_arrays(reference, logits, labels):
    """(reference, logits) as float32 (N, K) arrays of the same shape, labels int64 or None."""
    ref = np.asarray(reference, dtype=np.float32)
    out = np.asarray(logits, dtype=np.float32)
    if ref.ndim != 2 or len(ref) == 0:
        raise ValueError(f"reference logits must be a non-empty (N, K) array, got {ref.shape}")
    if out.shape != ref.shape:
        raise ValueError(f"variant logits {out.shape} != reference logits {ref.shape}")
    y = None if labels is None else np.asarray(labels).astype(np.int64).reshape(-1)
    if y is not None and len(y) != len(ref):
        raise ValueError(f"{len(y)} labels for {len(ref)} images")
    return ref, out, y


def _strict_failures(ref, out, finite: bool, max_abs: float, flips: int, t) -> list[str]:
    """FP32: every logit within atol + rtol x the image's scale, and no top-1 flip."""
    failures = []
    allowed = t.atol + t.rtol * np.abs(ref).max(axis=1, keepdims=True)
    if not finite or not (np.abs(out - ref) <= allowed).all():
        failures.append(
            f"max |delta logit| {max_abs:.3g} exceeds atol {t.atol:g} + rtol {t.rtol:g} x |logit|"
        )
    if flips:
        failures.append(f"top-1 class differs on {flips}/{len(ref)} images")
    return failures


def _reduced_failures(agreement, flips, n, ref_acc, acc, delta, t) -> list[str]:
    """Reduced precision: enough top-1 agreement, and at most the allowed accuracy drop."""
    failures = []
    if agreement < t.min_agreement:
        failures.append(
            f"top-1 agreement {100 * agreement:.2f}% < {100 * t.min_agreement:g}% "
            f"({flips}/{n} images flipped)"
        )
    if delta is not None and delta < -t.max_accuracy_drop_pp:
        failures.append(
            f"test accuracy dropped by {-delta:.2f} pp > {t.max_accuracy_drop_pp:g} pp "
            f"({100 * ref_acc:.2f}% -> {100 * acc:.2f}%)"
        )
    return failures
