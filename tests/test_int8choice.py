"""INT8 chosen by measurement (bench.measure.int8choice): the fastest passing candidate, settings
recorded, random weights never "passed", every candidate file deployable without torch."""

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
from bench.measure.int8choice import (
    Int8Candidate,
    batch32_candidates,
    choose_int8,
    fallback_settings,
)
from exports.export import export_onnx
from exports.fidelity import FidelityThresholds
from exports.quantize import int8_candidates, settings_slug
from exports.runtime import METADATA_PREFIX, Classifier
from tests.conftest import run_without_torch, write_image
from tests.test_export import metadata, tiny_model, varied_inputs

SIZE = 32


def cand(slug, p50, passed=True, **kw):
    return {"variant": f"ort_int8_{slug}", "candidate": slug, "latency_ms_p50": p50,
            "passed": passed, "skipped": None, "error": None, **kw}  # fmt: skip


def test_the_fastest_passing_candidate_is_chosen_never_a_failing_one():
    rows = [
        cand("s8s8_minmax", 20.0),
        cand("u8s8_minmax", 5.0, passed=False),  # fastest, but changes answers
        cand("u8s8_percentile", 8.0),
        cand("s8s8_percentile", 1.0, error="RuntimeError: boom"),  # never measured properly
    ]
    chosen, why = choose_int8(rows)
    assert chosen["candidate"] == "u8s8_percentile"
    assert "failed fidelity, never chosen: u8s8_minmax" in why
    # all failing: none is chosen, and the reason names them
    chosen, why = choose_int8([cand("a", 1.0, passed=False), cand("b", 2.0, passed=False)])
    assert chosen is None and "no INT8 candidate passed fidelity (a, b failed)" in why


def test_unjudged_candidates_are_chosen_on_speed_only():
    chosen, why = choose_int8([cand("s8s8_minmax", 3.0, None), cand("u8s8_minmax", 2.0, None)])
    assert chosen["candidate"] == "u8s8_minmax" and "not judged" in why and "speed only" in why


def test_batch32_takes_the_two_fastest_passing_first():
    rows = [cand("a", 1.0, passed=False), cand("b", 2.0), cand("c", 3.0), cand("d", 4.0)]
    assert batch32_candidates(rows) == ["ort_int8_b", "ort_int8_c"]
    assert batch32_candidates(rows[:2]) == ["ort_int8_b", "ort_int8_a"]


def test_candidates_follow_the_isa():
    vnni = [settings_slug(s) for s in int8_candidates(vnni=True, machine="x86_64")]
    avx2 = [settings_slug(s) for s in int8_candidates(vnni=False, machine="x86_64")]
    assert vnni == ["u8s8_minmax", "s8s8_minmax"]
    assert avx2 == ["u8s8_rr_minmax", "s8s8_rr_minmax"]
    assert all(s.per_channel for s in int8_candidates(vnni=True))


def _measure(tmp, fidelity, vnni=True):
    model = tiny_model(size=SIZE)
    fp32 = export_onnx(model, tmp / "m.onnx", metadata=metadata(size=SIZE), image_size=SIZE,
                       exporter="torchscript")  # fmt: skip
    rows, _ = measure_deployment(
        model,
        name="m",
        fp32_onnx=fp32,
        work_dir=tmp / "variants",
        image_size=SIZE,
        calibration=CalibrationData(
            inputs=varied_inputs(8, size=SIZE, seed=9).numpy(), seed=0, source="train split"
        ),
        fidelity=fidelity,
        settings=SpeedSettings(
            device=torch.device("cpu"),
            threads=1,
            groups=("int8",),
            thresholds=FidelityThresholds(),
            rounds=1,
            timing=Timing(warmup_iters=1, min_seconds=0.0, min_iters=2),
            vnni=vnni,
            bf16_hardware=False,
        ),
    )
    return {r["variant"]: r for r in rows}, model


@pytest.fixture(scope="module")
def random_weights(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("int8-random")
    x = varied_inputs(16, size=SIZE, seed=3).numpy()
    fid = FidelityData(inputs=x, labels=None, source="synthetic", not_judged="random weights")
    rows, _ = _measure(tmp, fid)
    return rows, tmp


def test_random_weight_rows_are_not_judged_and_only_speed_is_recommended(random_weights):
    rows, _ = random_weights
    for r in rows.values():
        assert r["passed"] is None, r["variant"]
        assert r["fidelity"] == "not judged (random weights)"
    rec = recommend(list(rows.values()))["by_model"]["m"]
    assert rec["variant"] is None and rec["recommendation"] == "speed only"
    assert "not judged (random weights)" in rec["why"]
    assert rows["ort_int8"]["candidate"] in ("u8s8_minmax", "s8s8_minmax")


def test_chosen_settings_and_why_are_in_the_file_and_the_row(random_weights):
    rows, tmp = random_weights
    choice = rows["ort_int8"]["int8_choice"]
    assert choice["chosen"] == rows["ort_int8"]["candidate"]
    assert choice["settings"]["activation_type"] in ("uint8", "int8")
    assert choice["settings"]["reduce_range"] is False  # vnni=True
    assert {c["candidate"] for c in choice["candidates"]} == {"u8s8_minmax", "s8s8_minmax"}
    assert choice["step_seconds"]["step"] > 0 and choice["cpu_isa_class"]
    info = Classifier(tmp / "variants" / "m.int8.onnx").info.raw
    stamped = json.loads(info[METADATA_PREFIX + "int8_choice"])
    assert stamped["chosen"] == choice["chosen"] and stamped["why"] == choice["why"]
    made = json.loads(info[METADATA_PREFIX + "quantization"])
    assert made["activation_type"] == choice["settings"]["activation_type"]
    assert made["calibration_method"] == "minmax" and made["per_channel"] is True


def test_every_candidate_file_predicts_without_torch(random_weights, tmp_path):
    _, tmp = random_weights
    files = sorted((tmp / "variants").glob("m.int8*.onnx"))
    assert len(files) == 3  # two candidates + the chosen copy
    d = tmp_path / "imgs"
    for i in range(2):
        write_image(d / f"{i}.bmp", size=(40, 40), seed=i)
    for f in files:
        proc, attempted = run_without_torch(
            ["-m", "exports", "predict", str(f), str(d), "--json"], tmp_path
        )
        assert not attempted and proc.returncode == 0, (f, proc.stderr)
        assert len(proc.stdout.splitlines()) == 2


def test_fallback_is_percentile_for_the_failing_minmax_candidates_only():
    a, b = int8_candidates(vnni=True, machine="x86_64")
    cands = [Int8Candidate(settings_slug(a), a, None), Int8Candidate(settings_slug(b), b, None)]
    judged = {"ort_int8_u8s8_minmax": {"passed": False}, "ort_int8_s8s8_minmax": {"passed": True}}
    out = fallback_settings(cands, judged)
    assert [settings_slug(s) for s in out] == ["u8s8_percentile"]


def test_when_every_candidate_fails_percentile_is_tried_and_none_is_chosen(tmp_path, monkeypatch):
    import dataclasses

    import bench.measure.deployment as dep

    real = dep.compare_logits

    def strict(ref, logits, labels, *, precision, thresholds):
        fid = real(ref, logits, labels, precision=precision, thresholds=thresholds)
        if precision == "int8":  # as if quantization flipped answers
            fid = dataclasses.replace(fid, passed=False, failures=["agreement 90% < 99%"])
        return fid

    monkeypatch.setattr(dep, "compare_logits", strict)
    x = varied_inputs(16, size=SIZE, seed=3).numpy()
    rows, _ = _measure(tmp_path, FidelityData(inputs=x, labels=np.arange(16) % 6,
                                               source="test split"))  # fmt: skip
    slugs = {r["candidate"] for r in rows.values() if r.get("candidate")}
    assert slugs == {"u8s8_minmax", "s8s8_minmax", "u8s8_percentile", "s8s8_percentile"}
    assert all(r["passed"] is False for r in rows.values() if r.get("candidate"))
    assert "no INT8 candidate passed fidelity" in rows["ort_int8"]["skipped"]
    assert not (tmp_path / "variants" / "m.int8.onnx").exists()  # nothing unfaithful shipped
    assert recommend(list(rows.values()))["by_model"]["m"]["variant"] != "ort_int8"
    raw = Classifier(tmp_path / "variants" / "m.int8.u8s8_percentile.onnx").info.raw
    info = json.loads(raw[METADATA_PREFIX + "quantization"])
    assert info["calibration_method"] == "percentile" and info["calibration_images"] == 8


def test_a_checkpoint_without_data_is_timed_not_judged(monkeypatch):
    from bench.cli.speed import _images

    monkeypatch.delenv("NEU_DATA", raising=False)
    logged = []
    cal, fid = _images({"model": "m"}, None, SIZE, 4, logged.append)
    assert fid.not_judged == "no dataset: pass --data or set NEU_DATA" and fid.labels is None
    assert "not judged" in logged[0] and cal.inputs.shape == (4, 3, SIZE, SIZE)
    _, fid = _images(None, None, SIZE, 4, None)
    assert fid.not_judged == "random weights"
