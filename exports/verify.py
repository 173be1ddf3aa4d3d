"""`python -m exports verify`: reproduce an exported model's test accuracy from the file alone.

The .onnx records how its split was made (neu_bench.split: seed, fractions, limit, fold) and
hashes of the dataset and of the split. verify reloads the dataset, re-derives the split (or
reads --manifest), runs the ONNX model on every test image (validation for files without a
test accuracy) through the torch-free preprocessing (neu.image.normalize of the stored uint8
pixels, exactly what `predict` does), and compares with the recorded accuracy. With
--checkpoint it also runs the full torch-vs-ONNX parity check on those images (for an
INT8/FP16 file: the reduced-precision fidelity rule against the FP32 checkpoint).

It also holds every other figure the file states and can be re-checked against what it
measures (exports.figures.check_stated): test_images, neu_bench.precision against the
graph, the file's own fidelity figures, a rejection; what it cannot check is listed as
not verified.

When the recorded figure cannot be compared (other dataset, other split, nothing recorded)
verify FAILS: it never prints "passed" after checking nothing. --allow-other-data runs the
model anyway and lists what was and was not verified.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from exports.figures import accuracy_rule, check_stated
from exports.runtime import Classifier


def accuracy_tolerance(n_val: int) -> float:
    """How far ONNX accuracy may drift from the recorded one on the SAME validation set.

    Near-tied logits can flip top-1 between PyTorch (possibly evaluated on GPU, maybe in
    mixed precision) and ONNX Runtime on CPU: allow 2 images, or 0.5%, whichever is larger.
    A broken export misses by far more.
    """
    return max(2.0 / max(n_val, 1), 0.005)


# The figure a file states about itself (written by `stamp_test_figures`): how many of the
# test images it classifies correctly, run exactly as verify runs it.
MEASURED_KEY = "test_accuracy_measured"


def file_test_figures(clf: Classifier, pixels: np.ndarray, labels, *, batch_size: int = 32):
    """What the file itself achieves on these uint8 test pixels, computed the way verify and
    predict compute it (neu.image.normalize, this provider, this batch size)."""
    import onnxruntime as ort

    labels = np.asarray(labels).reshape(-1)
    probs = clf.predict_arrays(pixels, batch_size=batch_size)
    correct = int((probs.argmax(1) == labels).sum())
    return {
        "correct": correct,
        "images": int(len(labels)),
        "accuracy": correct / max(len(labels), 1),
        "precision": clf.info.precision,
        "provider": clf.provider,
        "batch_size": int(batch_size),
        "onnxruntime_version": ort.__version__,
    }


def stamp_test_figures(path: str | Path, figures: dict, torch_figure: dict | None = None):
    """Make the file state what it achieves (`neu_bench.test_accuracy` = figures' accuracy);
    the training run's own figure (e.g. scored under bf16 autocast) is kept beside it, with
    its precision, as `neu_bench.test_accuracy_torch`."""
    from exports.quantize import update_metadata

    values = {
        "test_accuracy": json.dumps(figures["accuracy"]),
        "test_images": json.dumps(figures["images"]),
        MEASURED_KEY: json.dumps(figures, sort_keys=True),
    }
    if torch_figure is not None:
        values["test_accuracy_torch"] = json.dumps(torch_figure, sort_keys=True)
    return update_metadata(path, values)


def _tolerance(info, n: int, provider: str, batch_size: int):
    """(accuracy tolerance, the exact count to reproduce or None, why) from the count the file
    states about itself (MEASURED_KEY); (None, None, None) when it states none."""
    from exports.runtime import METADATA_PREFIX

    raw = info.raw.get(METADATA_PREFIX + MEASURED_KEY)
    m = json.loads(raw) if raw else None
    if m and m.get("provider") == provider and m.get("batch_size") == batch_size:
        return (
            0.0,
            int(m["correct"]),
            (
                f"exact: the file's figure was measured by onnxruntime {m.get('provider')} at batch "
                f"{m.get('batch_size')}, as here"
            ),
        )
    if not m:
        return None, None, None  # no stamped count: the caller applies exports.figures' rule
    tol = accuracy_tolerance(n)
    return (
        tol,
        None,
        (
            f"the file's figure was measured by {m.get('provider')} at batch "
            f"{m.get('batch_size')}, this run uses {provider} at batch {batch_size}: near-tied "
            f"logits may flip, so {tol:.4f} (2 images or 0.5%) is allowed"
        ),
    )


# The neu_bench.split entries that make_split takes (the rest is provenance).
_SPLIT_KEYS = (
    "seed",
    "val_fraction",
    "test_fraction",
    "limit_per_class",
    "use_layout_split",
    "folds",
    "fold",
)


@dataclass
class _Measured:
    """The recorded figure and what the ONNX model did on the same images."""

    which: str  # "test", or "val" for files that record no test accuracy
    recorded: float | None
    n: int = 0
    accuracy: float | None = None
    correct: int | None = None


@dataclass(frozen=True)
class _Rule:
    """How closely the accuracy must reproduce the recorded one, and why."""

    tolerance: float
    exact: int | None  # the count to reproduce exactly, or None: within the tolerance
    why: str


def run_verify(
    clf: Classifier,
    *,
    data: str | Path,
    manifest: str | Path | None = None,
    checkpoint: str | Path | None = None,
    layout: str = "auto",
    exclude_bad: bool = False,
    batch_size: int = 32,
    provider: str = "cpu",
    threads: int | None = None,
    allow_other_data: bool = False,
) -> dict:
    """Everything `verify` checks, as one dict (passed, failures, warnings, accuracies...).

    Raises neu.dataset.DatasetError / ValueError / OSError when the data cannot be loaded.
    """
    info = clf.info
    ds, split = _load_split(clf, data, manifest, layout=layout, exclude_bad=exclude_bad)
    # The recorded headline is the test accuracy (older files: the validation accuracy).
    which = "test" if info.test_accuracy is not None else "val"
    m = _Measured(which, info.test_accuracy if which == "test" else info.val_accuracy)
    failures = _data_failures(ds, info)
    matches = _hash_matches(info, ds, split)
    not_comparable = _not_comparable(info, ds, split, data, m, *matches)
    # Each reason fails verify (exit 1): "passed" after checking nothing would be a lie;
    # --allow-other-data makes them notes, and verify says what it did and did not check.
    if allow_other_data:
        warnings = not_comparable + _normalisation_warnings(split, info)
    else:
        failures += [f"{why} (pass --allow-other-data to run the model on these images anyway)"
                     for why in not_comparable]  # fmt: skip
        warnings = _normalisation_warnings(split, info)
    pixels, labels = _measure(clf, ds, split, m, batch_size, failures)
    rule = _accuracy_rule(clf, m, batch_size)
    if not not_comparable:
        failures += _accuracy_failures(m, rule)
    stated_ok, stated_not, stated_bad = check_stated(
        info, clf.path, which=which, n_images=m.n, onnx_accuracy=m.accuracy,
        provider=clf.provider, comparable=not not_comparable,
    )  # fmt: skip
    failures += stated_bad
    parity = None
    if checkpoint and not failures:
        parity = _checkpoint_parity(clf, checkpoint, pixels, labels, provider, threads, failures)
    verified, not_verified = _what_was_verified(m, rule, data, not_comparable, parity, checkpoint)
    return {
        **_figures(clf, data, m, rule),
        "allow_other_data": bool(allow_other_data),
        "verified": verified + stated_ok,
        "not_verified": not_verified + stated_not,
        "dataset_hash_match": matches[0],
        "split_hash_match": matches[1],
        "split_source": getattr(split, "source", None),
        "parity": parity,
        "warnings": warnings,
        "failures": failures,
        "passed": not failures,
    }


def _figures(clf: Classifier, data, m: _Measured, rule: _Rule) -> dict:
    """The head of run_verify's result: which model ran where, on what, and how it did."""
    return {
        "model": clf.info.model,
        "onnx": str(clf.path),
        "data": str(data),
        "provider": clf.provider,
        "images": m.which,
        "n_images": m.n,
        "onnx_accuracy": m.accuracy,
        "recorded_accuracy": m.recorded,
        "accuracy_tolerance": rule.tolerance,
        "accuracy_tolerance_reason": rule.why,
        "accuracy_rule": rule.why,
        "onnx_correct": m.correct,
    }


def _load_split(clf: Classifier, data, manifest, *, layout: str, exclude_bad: bool):
    """(dataset, split): the data decoded as the model was trained (its size and channels,
    grey stays 1 channel), split by --manifest or re-derived from neu_bench.split."""
    from neu.dataset import load_dataset
    from neu.split import load_manifest, make_split

    info = clf.info
    ds = load_dataset(
        data,
        image_size=info.image_size,
        channels=info.channels,
        layout=layout,
        exclude_bad=exclude_bad,
    )
    if manifest:
        return ds, load_manifest(manifest, ds)
    if not info.split:
        raise ValueError(
            f"{clf.path} has no neu_bench.split metadata to re-derive its test/validation "
            f"split from: pass --manifest (the split.json of the run)"
        )
    return ds, make_split(ds, **{k: v for k, v in info.split.items() if k in _SPLIT_KEYS})


def _data_failures(ds, info) -> list[str]:
    """The data cannot be the model's: other classes, or decoded to other channels."""
    failures = []
    if list(ds.classes) != list(info.classes):
        failures.append(f"dataset classes {list(ds.classes)} != model classes {info.classes}")
    if ds.channels != info.channels:
        failures.append(
            f"the data decodes to {ds.channels} channel(s) but the model was trained on "
            f"{info.channels}: not the same images"
        )
    return failures


def _hash_matches(info, ds, split) -> tuple[bool, bool]:
    """Are these the dataset and the split the file records (by hash)?"""
    dataset = info.dataset_hash is not None and ds.dataset_hash == info.dataset_hash
    return dataset, info.split_hash is not None and split.split_hash == info.split_hash


def _not_comparable(info, ds, split, data, m: _Measured, dataset_match, split_match) -> list[str]:
    """Reasons the recorded accuracy cannot be reproduced on these images."""
    reasons = []
    if not dataset_match:
        reasons.append(
            f"dataset hash {ds.dataset_hash[:12]} != the model's {str(info.dataset_hash)[:12]}: "
            f"{data} is not the exact dataset this model was trained on (files added, removed, "
            f"changed or relabelled)"
        )
    if not split_match:
        reasons.append(
            f"split hash {split.split_hash[:12]} != the model's {str(info.split_hash)[:12]}: "
            f"the {m.which} images differ from the run's (pass the run's --manifest)"
        )
    if m.recorded is None:
        reasons.append(f"the model records no {m.which}_accuracy to compare with")
    return reasons


def _normalisation_warnings(split, info) -> list[str]:
    return [
        f"train-set {name} {list(ours)} != the model's {list(theirs)}; the model's is used"
        for name, ours, theirs in (("mean", split.mean, info.mean), ("std", split.std, info.std))
        if not np.allclose(ours, theirs, rtol=0, atol=1e-6)
    ]


def _measure(clf: Classifier, ds, split, m: _Measured, batch_size: int, failures: list[str]):
    """Run the ONNX model on the chosen images (into `m`) unless something already failed;
    returns their (uint8 pixels, labels) for the parity check."""
    chosen = np.asarray(split.test if m.which == "test" else split.val, dtype=np.int64)
    images = ds.images
    pixels = images.numpy() if hasattr(images, "numpy") else np.asarray(images)
    pixels = pixels[chosen]
    labels = np.asarray(ds.labels)[chosen]
    m.n = int(len(chosen))
    if m.n == 0:
        failures.append(f"the {m.which} split is empty")
    elif not failures:
        probs = clf.predict_arrays(pixels, batch_size=batch_size)
        m.correct = int((probs.argmax(1) == labels).sum())
        m.accuracy = m.correct / m.n
    return pixels, labels


def _accuracy_rule(clf: Classifier, m: _Measured, batch_size: int) -> _Rule:
    """The file's own stamped count when it was measured like this run (test images only),
    else exports.figures' rule (exact for a reduced-precision file measured by this
    provider, else the tolerance)."""
    tolerance, exact, why = _tolerance(clf.info, m.n, clf.provider, batch_size)
    if m.which != "test" or tolerance is None:
        tolerance, why = accuracy_rule(clf.info, clf.provider, m.n, accuracy_tolerance(m.n))
        exact = None
    return _Rule(tolerance, exact, why)


def _accuracy_failures(m: _Measured, rule: _Rule) -> list[str]:
    if m.accuracy is None or m.recorded is None:
        return []
    if rule.exact is not None and m.correct != rule.exact:
        return [
            f"ONNX model classifies {m.correct} of the {m.n} test images "
            f"correctly, the file states {rule.exact} ({rule.why})"
        ]
    if abs(m.accuracy - m.recorded) > rule.tolerance:
        return [
            f"ONNX accuracy {m.accuracy:.4f} on the {m.n} {m.which} images != the "
            f"recorded {m.which}_accuracy {m.recorded:.4f} (tolerance {rule.tolerance:.4f}: "
            f"{rule.why})"
        ]
    return []


def _what_was_verified(m: _Measured, rule: _Rule, data, not_comparable, parity, checkpoint):
    """(verified, not_verified): what this run checked, in words, and what it could not."""
    verified, not_verified = [], []
    if m.accuracy is not None:
        verified.append(
            f"the ONNX model ran on {m.n} {m.which} images of {data} (accuracy {m.accuracy:.4f})"
        )
        if not not_comparable:
            verified.append(
                f"that accuracy reproduces the recorded {m.which}_accuracy {m.recorded:.4f} "
                + (f"exactly ({m.correct}/{m.n} images; {rule.why})"
                   if rule.exact is not None else f"within {rule.tolerance:.4f} ({rule.why})")
            )  # fmt: skip
    if not_comparable:
        recorded = "none" if m.recorded is None else f"{m.recorded:.4f}"
        not_verified.append(
            f"the recorded {m.which}_accuracy ({recorded}): not comparable, because "
            + "; ".join(not_comparable)
        )
    if parity is not None and parity.get("check") == "fidelity":
        verified.append(
            f"{parity['precision']} fidelity against {checkpoint} (torch FP32) on the same "
            f"images: {parity['rule']}"
        )
    elif parity is not None:
        verified.append(f"torch-vs-ONNX parity against {checkpoint} on the same images")
    else:
        not_verified.append("torch-vs-ONNX parity (pass --checkpoint best.pt)")
    return verified, not_verified


def _checkpoint_parity(clf, checkpoint, pixels, labels, provider, threads, failures) -> dict:
    # torch only here: predict and the accuracy check above never need it.
    import torch

    from exports.checkpoint import load_checkpoint
    from exports.parity import check_parity
    from neu.image import normalize

    model, meta = load_checkpoint(checkpoint)
    info = clf.info
    if meta.get("model") != info.model or list(meta.get("classes", [])) != info.classes:
        failures.append(
            f"{checkpoint} is {meta.get('model')} with classes {meta.get('classes')}, the ONNX "
            f"model is {info.model} with {info.classes}: not the same run"
        )
        return None
    inputs = torch.from_numpy(normalize(pixels, info.mean, info.std))
    if info.precision != "fp32":
        return _checkpoint_fidelity(model, clf, inputs, labels, provider, threads, failures)
    report = check_parity(model, clf.path, inputs, labels, provider=provider, threads=threads)
    failures.extend(f"parity: {f}" for f in report.failures)
    return {"check": "parity", **report.to_dict()}


def _checkpoint_fidelity(model, clf, inputs, labels, provider, threads, failures) -> dict:
    """An INT8/FP16 file against its FP32 checkpoint: the reduced-precision rule of
    exports.fidelity (top-1 agreement and accuracy drop, default thresholds), the rule
    `bench` judges such a file by; FP32 parity's logit tolerance is not met by design."""
    from exports.fidelity import compare_logits
    from exports.parity import logits_pair

    ref, out, actual = logits_pair(model, clf.path, inputs, provider=provider, threads=threads)
    fid = compare_logits(ref, out, labels, precision=clf.info.precision)
    failures.extend(f"fidelity vs checkpoint: {f}" for f in fid.failures)
    return {"check": "fidelity", "provider": actual, **fid.to_dict()}


def verify(clf: Classifier, args) -> int:
    """CLI wrapper: print the result (JSON or text); exit 0 passed, 1 failed, 2 data unusable."""
    try:
        result = run_verify(
            clf,
            data=args.data,
            manifest=args.manifest,
            checkpoint=args.checkpoint,
            layout=args.layout,
            exclude_bad=args.exclude_bad,
            batch_size=args.batch_size,
            provider=args.provider,
            threads=args.threads,
            allow_other_data=args.allow_other_data,
        )
    except (ValueError, OSError) as e:  # DatasetError is a ValueError
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result))
    else:
        for w in result["warnings"]:
            print(f"warning: {w}", file=sys.stderr)
        acc = result["onnx_accuracy"]
        rec = result["recorded_accuracy"]
        print(
            f"{result['model']}: ONNX accuracy "
            f"{'n/a' if acc is None else f'{acc:.4f}'} on {result['n_images']} {result['images']} "
            f"images (recorded {'n/a' if rec is None else f'{rec:.4f}'}), "
            f"provider {result['provider']}"
        )
        p = result["parity"]
        if p and p.get("check") == "fidelity":
            print(
                f"{p['precision']} fidelity vs checkpoint: agreement {100 * p['agreement']:.2f}% "
                f"({p['top1_disagreements']} of {p['n_images']} images flipped), accuracy "
                f"delta {p['accuracy_delta_pp']:+.2f} pp ({p['rule']})"
            )
        elif p:
            print(
                f"parity vs checkpoint: max_abs_diff {p['max_abs_diff']:.3g}, "
                f"top-1 disagreements {p['top1_disagreements']}"
            )
        for f in result["failures"]:
            print(f"FAILED: {f}", file=sys.stderr)
        if result["passed"]:
            for v in result["verified"]:
                print(f"verified: {v}")
        for v in result["not_verified"]:
            print(f"NOT verified: {v}")
        print("verify: " + ("passed" if result["passed"] else "FAILED"))
    return 0 if result["passed"] else 1
