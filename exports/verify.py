"""`python -m exports verify`: reproduce an exported model's validation accuracy from the file alone.

The .onnx records how its validation split was made (neu_bench.split: seed, fractions,
limit) and hashes of the dataset and of the split. verify reloads the dataset, re-derives
the split (or reads --manifest), says loudly when the hashes differ (then it is not the same
validation set, and the accuracies are not comparable), runs the ONNX model on every
validation image through the torch-free preprocessing (neu.image.normalize of the stored
uint8 pixels, exactly what `predict` does), and compares with the recorded val_accuracy.
With --checkpoint it also runs the full torch-vs-ONNX parity check on those images.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from exports.runtime import Classifier


def accuracy_tolerance(n_val: int) -> float:
    """How far ONNX accuracy may drift from the recorded one on the SAME validation set.

    Near-tied logits can flip top-1 between PyTorch (possibly evaluated on GPU, maybe in
    mixed precision) and ONNX Runtime on CPU: allow 2 images, or 0.5%, whichever is larger.
    A broken export misses by far more.
    """
    return max(2.0 / max(n_val, 1), 0.005)


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
) -> dict:
    """Everything `verify` checks, as one dict (passed, failures, warnings, accuracies...).

    Raises neu.dataset.DatasetError / ValueError / OSError when the data cannot be loaded.
    """
    from neu.dataset import load_dataset
    from neu.split import load_manifest, make_split

    info = clf.info
    failures: list[str] = []
    warnings: list[str] = []
    # Decode as the model was trained: its size and its channels (gray stays 1 channel).
    ds = load_dataset(
        data,
        image_size=info.image_size,
        channels=info.channels,
        layout=layout,
        exclude_bad=exclude_bad,
    )
    if manifest:
        split = load_manifest(manifest, ds)
    else:
        if not info.split:
            raise ValueError(
                f"{clf.path} has no neu_bench.split metadata to re-derive the validation split "
                f"from: pass --manifest (the split.json of the run)"
            )
        keys = ("seed", "val_fraction", "test_fraction", "limit_per_class", "use_layout_split")
        split = make_split(ds, **{k: v for k, v in info.split.items() if k in keys})

    if list(ds.classes) != list(info.classes):
        failures.append(f"dataset classes {list(ds.classes)} != model classes {info.classes}")
    if ds.channels != info.channels:
        failures.append(
            f"the data decodes to {ds.channels} channel(s) but the model was trained on "
            f"{info.channels}: not the same images"
        )
    dataset_match = info.dataset_hash is not None and ds.dataset_hash == info.dataset_hash
    split_match = info.split_hash is not None and split.split_hash == info.split_hash
    if not dataset_match:
        warnings.append(
            f"dataset hash {ds.dataset_hash[:12]} != the model's {str(info.dataset_hash)[:12]}: "
            f"{data} is not the exact dataset this model was trained on (files added, removed, "
            f"changed or relabelled), so its accuracy below is not comparable"
        )
    if not split_match:
        warnings.append(
            f"split hash {split.split_hash[:12]} != the model's {str(info.split_hash)[:12]}: "
            f"the validation images differ from the run's; pass the run's --manifest to compare"
        )
    for name, ours, theirs in (("mean", split.mean, info.mean), ("std", split.std, info.std)):
        if not np.allclose(ours, theirs, rtol=0, atol=1e-6):
            warnings.append(
                f"train-set {name} {list(ours)} != the model's {list(theirs)}; the model's is used"
            )

    val = np.asarray(split.val, dtype=np.int64)
    images = ds.images
    pixels = images.numpy() if hasattr(images, "numpy") else np.asarray(images)
    pixels = pixels[val]
    labels = np.asarray(ds.labels)[val]
    onnx_accuracy = None
    if len(val) == 0:
        failures.append("the validation split is empty")
    elif not failures:
        probs = clf.predict_arrays(pixels, batch_size=batch_size)
        onnx_accuracy = float((probs.argmax(1) == labels).mean())

    recorded = info.val_accuracy
    comparable = dataset_match and split_match
    tolerance = accuracy_tolerance(len(val))
    if onnx_accuracy is not None and recorded is not None and comparable:
        if abs(onnx_accuracy - recorded) > tolerance:
            failures.append(
                f"ONNX accuracy {onnx_accuracy:.4f} on the {len(val)} validation images != the "
                f"recorded val_accuracy {recorded:.4f} (tolerance {tolerance:.4f})"
            )
    elif recorded is None:
        warnings.append("the model records no val_accuracy to compare with")

    parity = None
    if checkpoint and not failures:
        parity = _checkpoint_parity(clf, checkpoint, pixels, labels, provider, threads, failures)

    return {
        "model": info.model,
        "onnx": str(clf.path),
        "data": str(data),
        "provider": clf.provider,
        "n_val": int(len(val)),
        "onnx_accuracy": onnx_accuracy,
        "recorded_val_accuracy": recorded,
        "accuracy_tolerance": tolerance,
        "dataset_hash_match": dataset_match,
        "split_hash_match": split_match,
        "split_source": getattr(split, "source", None),
        "parity": parity,
        "warnings": warnings,
        "failures": failures,
        "passed": not failures,
    }


def _checkpoint_parity(clf, checkpoint, pixels, labels, provider, threads, failures) -> dict:
    # torch only here: predict and the accuracy check above never need it.
    import torch

    from bench.registry import load_checkpoint
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
    report = check_parity(model, clf.path, inputs, labels, provider=provider, threads=threads)
    failures.extend(f"parity: {f}" for f in report.failures)
    return report.to_dict()


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
        rec = result["recorded_val_accuracy"]
        print(
            f"{result['model']}: ONNX accuracy "
            f"{'n/a' if acc is None else f'{acc:.4f}'} on {result['n_val']} validation images "
            f"(recorded {'n/a' if rec is None else f'{rec:.4f}'}), provider {result['provider']}"
        )
        if result["parity"]:
            p = result["parity"]
            print(
                f"parity vs checkpoint: max_abs_diff {p['max_abs_diff']:.3g}, "
                f"top-1 disagreements {p['top1_disagreements']}"
            )
        for f in result["failures"]:
            print(f"FAILED: {f}", file=sys.stderr)
        print("verify: " + ("passed" if result["passed"] else "FAILED"))
    return 0 if result["passed"] else 1
