"""What an exported file achieved itself, stamped into it, and what `verify` can re-check.

A reduced-precision copy inherits the FP32 file's metadata, so without this it would state
its parent's test accuracy. After a file is judged on the test images, `stamp_figures`
writes into it:

- neu_bench.fidelity: JSON of its own figures (runtime and provider that measured them,
  test accuracy on n_images, agreement with FP32 torch, passed, the rule, the failures), or
  {"judged": false, "reason": ...} when it could not run here;
- neu_bench.rejected: why it failed (empty when it passed): `exports predict` warns;
- neu_bench.test_accuracy of a reduced-precision file: its own (the parent's moves to
  neu_bench.source_test_accuracy).

`graph_precision` reads what a graph really computes in, for `verify` to hold
neu_bench.precision against. No torch here.
"""

from __future__ import annotations

import json
from pathlib import Path

# Ops that only a quantized graph holds.
_INT8_OPS = {
    "QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul", "ConvInteger",
    "MatMulInteger", "DynamicQuantizeLinear", "QLinearAdd", "QLinearMul",
}  # fmt: skip
OWN_KEYS = ("fidelity", "rejected", "deployment_variant")


def own_figures(
    fid: dict | None,
    *,
    precision: str,
    runtime: str,
    provider: str | None,
    source: str,
    parent_test_accuracy: str | None = None,
    skipped: str | None = None,
) -> dict[str, str]:
    """neu_bench.* entries stating a file's own figures (module docstring).

    fid: exports.fidelity.Fidelity.to_dict() of the file's run on `source` images, or None
    when it was not judged (`skipped` says why)."""
    if fid is None:
        figures: dict = {"judged": False, "reason": skipped or "not run on images"}
        values = {"fidelity": json.dumps(figures, sort_keys=True), "rejected": ""}
        if precision != "fp32":
            values["test_accuracy"] = "null"
        return values
    figures = {
        "judged": True,
        "runtime": runtime,
        "provider": provider,
        "precision": precision,
        "images": source,
        "n_images": fid["n_images"],
        "test_accuracy": fid["test_accuracy"],
        "reference_accuracy": fid["reference_accuracy"],
        "accuracy_delta_pp": fid["accuracy_delta_pp"],
        "agreement": fid["agreement"],
        "top1_disagreements": fid["top1_disagreements"],
        "max_abs_logit_diff": fid["max_abs_logit_diff"],
        "passed": bool(fid["passed"]),
        "rule": fid["rule"],
        "failures": list(fid["failures"]),
    }
    values = {
        "fidelity": json.dumps(figures, sort_keys=True),
        "rejected": "" if fid["passed"] else "; ".join(fid["failures"]) or "failed",
    }
    if precision != "fp32":
        values["test_accuracy"] = json.dumps(fid["test_accuracy"])
        if parent_test_accuracy is not None:
            values["source_test_accuracy"] = parent_test_accuracy
    return values


def parity_figures(parity: dict, *, source: str) -> dict[str, str]:
    """own_figures of an FP32 export from its exports.parity report (strict parity rule)."""
    from exports.fidelity import FidelityThresholds

    n = parity["n_images"]
    fid = {
        "n_images": n,
        "test_accuracy": parity["onnx_accuracy"],
        "reference_accuracy": parity["torch_accuracy"],
        "accuracy_delta_pp": None
        if parity["onnx_accuracy"] is None or parity["torch_accuracy"] is None
        else round(100 * (parity["onnx_accuracy"] - parity["torch_accuracy"]), 6),
        "agreement": 1 - parity["top1_disagreements"] / max(n, 1),
        "top1_disagreements": parity["top1_disagreements"],
        "max_abs_logit_diff": parity["max_abs_diff"],
        "passed": parity["passed"],
        "rule": FidelityThresholds(atol=parity["atol"], rtol=parity["rtol"]).rule("fp32"),
        "failures": parity["failures"],
    }
    return own_figures(
        fid, precision="fp32", runtime="onnxruntime", provider=parity["provider"], source=source
    )


def stamp_figures(path: str | Path, values: dict[str, str]) -> Path:
    """Write `values` (own_figures) into the file's metadata, atomically."""
    from exports.quantize import update_metadata

    return update_metadata(path, values)


def graph_precision(path: str | Path) -> str:
    """ "int8" when the graph holds quantization ops, "fp16" when it holds float16 tensors,
    else "fp32": what the file computes in, whatever its metadata says."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    ops = {n.op_type for n in graph.node}
    if ops & _INT8_OPS:
        return "int8"
    f16 = onnx.TensorProto.FLOAT16
    tensors = [t.data_type for t in graph.initializer]
    tensors += [v.type.tensor_type.elem_type for v in graph.value_info]
    casts = [a.i for n in graph.node if n.op_type == "Cast" for a in n.attribute if a.name == "to"]
    return "fp16" if f16 in tensors or f16 in casts else "fp32"


def measured_here(info, provider: str) -> bool:
    """Were the file's own figures measured by the runtime and provider verify runs now?
    Then verify demands the same count of correct images, not a tolerance."""
    fid = info.fidelity or {}
    return (
        bool(fid.get("judged"))
        and fid.get("runtime") == "onnxruntime"
        and (fid.get("provider") == provider)
    )


def accuracy_rule(info, provider: str, n_images: int, tolerance: float) -> tuple[float, str]:
    """(allowed |accuracy difference|, why) for the recorded test_accuracy.

    A reduced-precision file's test_accuracy is its own, measured by ONNX Runtime on this
    provider: the same images must give the same count (half an image of slack for float
    rounding of the fraction). An FP32 file's is the torch evaluation's (maybe GPU, maybe
    mixed precision): near-ties may flip, so `tolerance`."""
    if info.precision != "fp32" and measured_here(info, provider):
        return 0.5 / max(n_images, 1), f"exact: measured by onnxruntime {provider}, like this run"
    return tolerance, f"tolerance {tolerance:.4f}: recorded by the torch evaluation"


def check_stated(
    info, path, *, which: str, n_images: int, onnx_accuracy, provider: str, comparable: bool
):
    """(verified, not_verified, failures) for the figures a file states beyond its accuracy:
    test image count, precision against the graph, its own fidelity figures, rejection.
    comparable=False (other data or split): the image counts and accuracies are not checked."""
    verified, not_verified, failures = [], [], []
    if not comparable:
        which = "other images"  # none of the test-split figures apply
        not_verified.append("test_images and fidelity figures (other data or split)")
    if which == "test" and info.test_images is not None:
        if info.test_images != n_images:
            failures.append(
                f"the file states test_images={info.test_images} but its test split has "
                f"{n_images} images"
            )
        else:
            verified.append(f"test_images={n_images} matches the test split")
    elif which == "test":
        not_verified.append("test_images (the file states none)")
    actual = graph_precision(path)
    if actual != info.precision:
        failures.append(
            f"the file states precision={info.precision} but its graph computes in {actual}"
        )
    else:
        verified.append(f"precision={actual} matches the graph's operators and tensor types")
    fid = info.fidelity or {}
    if fid.get("judged") and comparable:
        failures += _check_own_figures(fid, info, which, n_images, onnx_accuracy, provider,
                                       verified, not_verified)  # fmt: skip
        not_verified.append(
            "fidelity agreement / max |delta logit| against FP32 torch (need the FP32 model's "
            "logits; --checkpoint checks an FP32 file's parity)"
        )
    elif info.fidelity is not None and not fid.get("judged"):
        not_verified.append(f"fidelity: the file was never judged ({fid.get('reason')})")
    elif info.fidelity is None:
        not_verified.append("fidelity: the file states no figures of its own")
    if info.rejected:
        failures.append(f"the file is marked rejected by its fidelity check: {info.rejected}")
    for key in ("latency_ms_p50", "speedup_vs_torch_fp32"):
        if fid.get(key) is not None:
            not_verified.append(f"fidelity.{key} (a timing of the machine that measured it)")
    if info.val_accuracy is not None and which == "test":
        not_verified.append("val_accuracy (verify runs the test images only)")
    return verified, not_verified, failures


def _check_own_figures(fid, info, which, n_images, onnx_accuracy, provider, verified, skipped):
    failures = []
    if fid.get("n_images") is not None and which == "test" and fid["n_images"] != n_images:
        failures.append(
            f"fidelity.n_images={fid['n_images']} but the test split has {n_images} images"
        )
    own = fid.get("test_accuracy")
    if own is None or onnx_accuracy is None:
        skipped.append("fidelity.test_accuracy (nothing to compare)")
    elif measured_here(info, provider):
        if round(own * n_images) != round(onnx_accuracy * n_images):
            failures.append(
                f"fidelity.test_accuracy {own:.4f} != {onnx_accuracy:.4f} measured now by the "
                f"same runtime (onnxruntime {provider}) on the same {n_images} images"
            )
        else:
            verified.append(f"fidelity.test_accuracy {own:.4f} reproduces exactly")
    else:
        skipped.append(
            f"fidelity.test_accuracy exactly: measured by {fid.get('runtime')} "
            f"{fid.get('provider')}, verify runs onnxruntime {provider}"
        )
    return failures
