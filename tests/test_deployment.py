"""bench.measure.deployment + bench.measure.variants: every variant judged, timed in one window, recommended."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from bench.measure import Timing
from bench.measure.deployment import (
    CalibrationData,
    FidelityData,
    SpeedSettings,
    measure_deployment,
    recommend,
)
from bench.measure.variants import parse_variants
from exports.export import export_onnx
from exports.fidelity import FidelityThresholds
from tests.test_export import metadata, tiny_model, varied_inputs

SIZE = 32


def row(model, variant, latency, *, passed=True, acc=0.9, skipped=None, error=None):
    return {
        "model": model,
        "variant": variant,
        "runtime": "onnxruntime",
        "provider": "cpu",
        "precision": "int8" if "int8" in variant else "fp32",
        "latency_ms_p50": None if skipped else latency,
        "speedup_vs_torch_fp32": 2.0,
        "test_accuracy": acc,
        "accuracy_delta_pp": 0.0,
        "agreement": 1.0,
        "artifact": "onnx:int8" if "int8" in variant else "onnx:fp32",
        "size_mb": 1.0,
        "passed": passed and not skipped,
        "skipped": skipped,
        "error": error,
    }


def test_a_variant_that_fails_fidelity_is_never_recommended():
    rows = [
        row("a", "torch_fp32", 10.0),
        row("a", "ort_fp32", 5.0),
        row("a", "ort_int8", 1.0, passed=False, acc=0.5),  # fastest, but unfaithful
        row("a", "openvino_int8", 0.5, skipped="openvino not installed"),
        row("a", "torch_compile_fp32", 0.1, error="RuntimeError: boom"),
        row("b", "torch_fp32", 20.0, passed=False),
    ]
    rec = recommend(rows)
    assert rec["by_model"]["a"]["variant"] == "ort_fp32"
    assert rec["by_model"]["b"] == {"variant": None, "why": "no variant passed fidelity"}
    assert [p["variant"] for p in rec["pareto"]] == ["ort_fp32"]


def test_pareto_spans_models_and_variants():
    rows = [
        row("a", "ort_fp32", 5.0, acc=0.95),
        row("a", "ort_int8", 2.0, acc=0.94),
        row("b", "ort_fp32", 3.0, acc=0.90),  # slower and worse than a/ort_int8: dominated
        row("b", "ort_int8", 1.0, acc=0.80),
    ]
    rec = recommend(rows)
    assert [(p["model"], p["variant"]) for p in rec["pareto"]] == [
        ("b", "ort_int8"),
        ("a", "ort_int8"),
        ("a", "ort_fp32"),
    ]


def test_parse_variants_names_the_flag():
    assert parse_variants("all") == parse_variants(None)
    assert parse_variants("int8,compile") == ("int8", "compile")
    with pytest.raises(ValueError, match="--variants"):
        parse_variants("int4")


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    """One tiny model through every variant group this CPU-only test can afford."""
    import bench.measure.variants as variants

    tmp = tmp_path_factory.mktemp("deployment")
    model = tiny_model(size=SIZE)
    meta = metadata(size=SIZE)
    fp32 = export_onnx(
        model, tmp / "m.onnx", metadata=meta, image_size=SIZE, exporter="torchscript"
    )
    x = varied_inputs(40, size=SIZE, seed=3).numpy()
    with torch.no_grad():
        labels = model(torch.from_numpy(x)).argmax(1).numpy()
    labels[:4] = (labels[:4] + 1) % 6  # the reference is 90% accurate, not trivially 100%
    mp = pytest.MonkeyPatch()
    # As on a machine without the extra (CI's): rows must say so, not vanish.
    mp.setattr(
        variants, "openvino_status", lambda: (False, "openvino not installed (pip ...)", set())
    )
    try:
        rows, speed_rows = measure_deployment(
            model,
            name="m",
            fp32_onnx=fp32,
            work_dir=tmp / "variants",
            image_size=SIZE,
            calibration=CalibrationData(
                inputs=varied_inputs(8, size=SIZE, seed=9).numpy(), seed=0, source="train split"
            ),
            fidelity=FidelityData(inputs=x, labels=labels, source="test split"),
            settings=SpeedSettings(
                device=torch.device("cpu"),
                threads=1,
                groups=("fp32", "int8", "fp16", "bf16", "openvino"),
                thresholds=FidelityThresholds(),
                rounds=2,
                timing=Timing(warmup_iters=1, min_seconds=0.0, min_iters=2),
                vnni=False,
                bf16_hardware=False,
            ),
        )
    finally:
        mp.undo()
    return {r["variant"]: r for r in rows}, speed_rows, tmp


def _int8_rows(rows: dict) -> list[dict]:
    """Every INT8 candidate row: the chosen one (`ort_int8`) and the others."""
    return [r for r in rows.values() if r.get("candidate")]


def test_measured_variants_carry_speed_and_fidelity(measured):
    rows, speed_rows, _ = measured
    cands = _int8_rows(rows)
    # without VNNI (vnni=False): both activation types, with reduce_range
    assert {r["candidate"] for r in cands} >= {"u8s8_rr_minmax", "s8s8_rr_minmax"}
    for name in ("torch_fp32", "torch_channels_last_fp32", "ort_fp32",
                 *(r["variant"] for r in cands)):  # fmt: skip
        r = rows[name]
        assert r["skipped"] is None and r["error"] is None, r
        assert r["latency_ms_p50"] > 0 and r["rounds"] == 2
        # INT8 candidates beyond the fastest two are not timed at batch 32
        thr = r["throughput_img_s"]
        assert (thr or 0) > 0 or (r.get("candidate") and thr is None)
        assert r["fidelity_images"] == 40 and r["fidelity_source"] == "test split"
        for key in ("agreement", "test_accuracy", "accuracy_delta_pp", "max_abs_logit_diff"):
            assert r[key] is not None
    base = rows["torch_fp32"]
    assert base["speedup_vs_torch_fp32"] == 1.0 and base["max_abs_logit_diff"] == 0.0
    assert base["test_accuracy"] == pytest.approx(0.9) and base["passed"]
    assert rows["ort_fp32"]["passed"]  # strict parity: same function, FP32
    for r8 in cands:
        assert r8["precision"] == "int8" and r8["provider"] == "cpu"
        assert r8["size_mb"] < 0.5 * rows["ort_fp32"]["size_mb"]
        # each candidate's verdict follows the reduced-precision rule from its own figures
        rule_ok = r8["agreement"] >= 0.99 and r8["accuracy_delta_pp"] >= -0.5
        assert r8["passed"] == rule_ok and r8["fidelity"] == ("passed" if rule_ok else "failed")
    # ort_int8 is the fastest passing candidate, or a row saying none passed
    passing = [r for r in cands if r["passed"]]
    if passing:
        assert rows["ort_int8"] is min(passing, key=lambda r: r["latency_ms_p50"])
    else:
        assert "no INT8 candidate passed" in rows["ort_int8"]["skipped"]
    # every timed case is in the speed list, tagged with its variant: batch 1 for all,
    # batch 32 for all but the INT8 candidates beyond the fastest two
    timed = ["torch_fp32", "torch_channels_last_fp32", "ort_fp32", *(r["variant"] for r in cands)]
    got = {(s["variant"], s["batch_size"]) for s in speed_rows}
    assert {v for v, b in got if b == 1} == set(timed)
    b32 = {v for v, b in got if b == 32}
    assert set(timed) - b32 <= {r["variant"] for r in cands}
    assert len(b32 & {r["variant"] for r in cands}) == min(2, len(cands))


def test_skipped_variants_say_why(measured):
    rows, _, tmp = measured
    assert "openvino not installed" in rows["openvino_fp32"]["skipped"]
    assert "openvino not installed" in rows["openvino_int8"]["skipped"]
    assert "bf16" in rows["torch_bf16"]["skipped"]
    assert "GPU provider" in rows["ort_fp16"]["skipped"]
    for r in rows.values():
        if r["skipped"]:
            assert r["latency_ms_p50"] is None and not r["passed"]
    # FP16 is exported even where it cannot be timed.
    assert (tmp / "variants" / "m.fp16.onnx").is_file()
    assert json.loads(json.dumps(list(rows.values())))  # plain JSON data


def test_recommendation_from_measured_rows_is_a_passing_variant(measured):
    rows, _, _ = measured
    rec = recommend(list(rows.values()))["by_model"]["m"]
    chosen = rows[rec["variant"]]
    assert chosen["passed"] and not chosen["skipped"]
    passing = [r["latency_ms_p50"] for r in rows.values() if r["passed"] and not r["skipped"]]
    assert chosen["latency_ms_p50"] == min(passing)
    assert np.isfinite(chosen["latency_ms_p50"])
