"""exports.quantize + exports.fidelity: INT8 / FP16 copies of an export, and how they are judged."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from exports.export import export_onnx
from exports.fidelity import FidelityThresholds, compare_logits
from exports.quantize import (
    Int8Settings,
    calibration_indices,
    convert_fp16,
    int8_settings,
    quantize_int8,
    update_metadata,
)
from exports.runtime import METADATA_PREFIX, Classifier, parse_metadata, softmax
from neu import NEU_CLASSES
from neu.image import normalize
from tests.conftest import run_without_torch, write_image
from tests.test_export import metadata, tiny_model

SIZE = 32
MEAN, STD = [0.45, 0.45, 0.45], [0.25, 0.25, 0.25]


def pixels(n, seed):
    return np.random.default_rng(seed).integers(0, 256, (n, 1, SIZE, SIZE), dtype=np.uint8)


@pytest.fixture(scope="module")
def fp32_path(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("quantize") / "shufflenet_v2_x0_5.onnx"
    meta = metadata(size=SIZE, mean=MEAN, std=STD)
    return export_onnx(tiny_model(size=SIZE), out, metadata=meta, image_size=SIZE,
                       exporter="torchscript")  # fmt: skip


@pytest.fixture(scope="module")
def calibration() -> np.ndarray:
    return normalize(pixels(12, seed=1), MEAN, STD)


@pytest.fixture(scope="module")
def int8_path(fp32_path, calibration) -> Path:
    out = fp32_path.with_name("shufflenet_v2_x0_5.int8.onnx")
    settings = int8_settings(vnni=False, machine="x86_64")
    quantize_int8(
        fp32_path, out, calibration, settings, calibration={"seed": 7, "source": "train split"}
    )
    return out


def _initializers(proto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}


# --- choosing the settings and the calibration images --------------------------------------


def test_int8_settings_follow_ort_guidance_for_the_cpu():
    avx2 = int8_settings(vnni=False, machine="x86_64")
    assert avx2.reduce_range and "VNNI" in avx2.reason
    assert not int8_settings(vnni=True, machine="x86_64").reduce_range
    assert not int8_settings(vnni=False, machine="aarch64").reduce_range
    # S8S8 QDQ with per-channel weights is the guide's first choice on every CPU.
    assert (avx2.activation_type, avx2.weight_type, avx2.per_channel) == ("int8", "int8", True)
    with pytest.raises(ValueError, match="calibration_method"):
        Int8Settings(reduce_range=False, calibration_method="kl")
    with pytest.raises(ValueError, match="weight_type"):
        Int8Settings(reduce_range=False, weight_type="int4")


def test_calibration_indices_stratified_seeded_and_from_candidates_only():
    labels = np.array([0] * 60 + [1] * 30 + [2] * 10)
    train = np.arange(0, 100, 2)  # 30 of class 0, 15 of class 1, 5 of class 2
    picked = calibration_indices(labels, train, 10, seed=0)
    assert len(picked) == 10 and len(set(picked)) == 10
    assert set(picked) <= set(train)  # never a validation/test image
    # Shares follow the class counts among the candidates: 6 / 3 / 1.
    assert np.bincount(labels[picked], minlength=3).tolist() == [6, 3, 1]
    np.testing.assert_array_equal(picked, calibration_indices(labels, train, 10, seed=0))
    assert not np.array_equal(picked, calibration_indices(labels, train, 10, seed=1))
    np.testing.assert_array_equal(calibration_indices(labels, train, 500), train)
    with pytest.raises(ValueError, match=">= 1"):
        calibration_indices(labels, train, 0)


# --- INT8 end to end ------------------------------------------------------------------------


def test_int8_is_static_qdq_per_channel_and_calibrated_on_the_given_images(
    int8_path, fp32_path, calibration
):
    proto = onnx.load(str(int8_path))
    ops = {n.op_type for n in proto.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops
    inits = _initializers(proto)
    producer = {o: n for n in proto.graph.node for o in n.output}

    convs = [n for n in proto.graph.node if n.op_type == "Conv"]
    assert convs
    for conv in convs:
        dq = producer[conv.input[1]]  # every Conv weight is int8 behind a DequantizeLinear
        assert dq.op_type == "DequantizeLinear"
        weight, scale = inits[dq.input[0]], inits[dq.input[1]]
        assert weight.dtype == np.int8
        assert scale.shape == (weight.shape[0],)  # one scale per output channel
        assert np.abs(weight.astype(int)).max() <= 64  # reduce_range: 7-bit weights

    # Activation ranges come from the calibration images: MinMax over the network input gives
    # the input's QuantizeLinear scale = (max - min) / 255 for int8 (range widened to hold 0).
    q_in = next(n for n in proto.graph.node if n.op_type == "QuantizeLinear" and "input" in n.input)
    lo, hi = min(calibration.min(), 0.0), max(calibration.max(), 0.0)
    assert inits[q_in.input[1]] == pytest.approx((hi - lo) / 255, rel=1e-5)
    assert inits[q_in.input[2]].dtype == np.int8

    # int8 weights: the file shrinks to well under half of the FP32 one.
    assert int8_path.stat().st_size < 0.5 * fp32_path.stat().st_size


def test_int8_file_describes_itself(int8_path, fp32_path):
    fp32 = Classifier(fp32_path).info.raw
    clf = Classifier(int8_path)
    assert clf.info.precision == "int8" and Classifier(fp32_path).info.precision == "fp32"
    # Everything a deployment needs is carried over unchanged.
    for key in ("classes", "image_size", "channels", "mean", "std", "split_hash", "resize"):
        assert clf.info.raw[METADATA_PREFIX + key] == fp32[METADATA_PREFIX + key]
    q = json.loads(clf.info.raw[METADATA_PREFIX + "quantization"])
    assert q["calibration_images"] == 12 and q["calibration_seed"] == 7
    assert q["calibration_source"] == "train split" and q["calibration_method"] == "minmax"
    assert (q["reduce_range"], q["activation_type"], q["weight_type"]) == (True, "int8", "int8")
    assert q["format"] == "QDQ" and q["per_channel"] is True
    assert not any(k.startswith("onnx.quant") for k in clf.info.raw)


@pytest.mark.isa
def test_int8_runs_in_onnxruntime_and_differs_from_fp32_by_quantization_only(int8_path, fp32_path):
    x = normalize(pixels(16, seed=2), MEAN, STD)
    ref = Classifier(fp32_path).logits(x)
    clf = Classifier(int8_path)
    out = clf.logits(x)
    assert out.shape == ref.shape and out.dtype == np.float32 and np.isfinite(out).all()
    assert np.abs(out - ref).max() > 0  # really quantized, not a copy of the FP32 graph
    # predict_arrays is softmax of the same session's logits, batch by batch.
    np.testing.assert_allclose(
        clf.predict_arrays(pixels(16, seed=2), batch_size=5), softmax(out), atol=1e-6
    )
    fid = compare_logits(ref, out, np.arange(16) % 6, precision="int8")
    assert fid.n_images == 16 and 0 <= fid.agreement <= 1
    assert fid.max_abs_logit_diff == pytest.approx(float(np.abs(out - ref).max()))


def test_predict_runs_an_int8_file_without_torch(int8_path, tmp_path):
    d = tmp_path / "imgs"
    for i in range(3):
        write_image(d / f"{i}.bmp", size=(40, 40), seed=i)
    proc, attempted = run_without_torch(
        ["-m", "exports", "predict", str(int8_path), str(d), "--json"], tmp_path
    )
    assert not attempted, f"torch import attempted: {attempted}\n{proc.stderr}"
    assert proc.returncode == 0, proc.stderr
    results = [json.loads(line) for line in proc.stdout.splitlines()]
    expected = Classifier(int8_path).predict_files(sorted(d.iterdir()))
    assert [r["class"] for r in results] == [r["class"] for r in expected]
    for got, want in zip(results, expected, strict=True):
        assert got["confidence"] == pytest.approx(want["confidence"], abs=1e-6)


def test_quantize_bad_input_errors_name_the_problem(fp32_path, tmp_path):
    settings = int8_settings(vnni=True)
    with pytest.raises(ValueError, match=r"\(N, 3, S, S\)"):
        quantize_int8(fp32_path, tmp_path / "x.onnx", np.zeros((4, 32, 32)), settings)
    with pytest.raises(FileNotFoundError, match="export the FP32 model first"):
        quantize_int8(
            tmp_path / "missing.onnx", tmp_path / "x.onnx", np.zeros((1, 3, 4, 4)), settings
        )
    assert not (tmp_path / "x.onnx").exists()


# --- FP16 ------------------------------------------------------------------------------------


def test_fp16_keeps_float32_io_and_metadata(fp32_path, tmp_path):
    out = tmp_path / "m.fp16.onnx"
    info = convert_fp16(fp32_path, out)
    assert info["keep_io_types"] is True
    proto = onnx.load(str(out))
    onnx.checker.check_model(proto)  # topologically sorted, valid
    float_inits = [t for t in proto.graph.initializer if t.data_type in (1, 10)]
    assert float_inits and all(t.data_type == onnx.TensorProto.FLOAT16 for t in float_inits)
    clf = Classifier(out)
    assert clf.info.precision == "fp16" and clf.classes == list(NEU_CLASSES)
    x = normalize(pixels(8, seed=3), MEAN, STD)
    ref, got = Classifier(fp32_path).logits(x), clf.logits(x)
    assert got.dtype == np.float32
    # fp16 keeps 11 significant bits (unit roundoff 4.9e-4); through ~20 layers the relative
    # error stays well under 1e-2 of the logit scale, a wrong conversion is off by O(1).
    assert np.abs(got - ref).max() <= 1e-2 * np.abs(ref).max()


def test_update_metadata_stamps_fidelity(int8_path, tmp_path):
    copy = tmp_path / "m.onnx"
    copy.write_bytes(int8_path.read_bytes())
    update_metadata(copy, {"fidelity": json.dumps({"agreement": 1.0})})
    info = parse_metadata(
        {p.key: p.value for p in onnx.load(str(copy)).metadata_props}, source=copy
    )
    assert json.loads(info.raw[METADATA_PREFIX + "fidelity"]) == {"agreement": 1.0}
    assert info.precision == "int8"
    assert ort.InferenceSession(str(copy)).get_outputs()[0].name == "logits"


# --- fidelity rules -----------------------------------------------------------------------


def _logits(n=200, seed=0):
    rng = np.random.default_rng(seed)
    ref = rng.standard_normal((n, 6)).astype(np.float32)
    ref[np.arange(n), np.arange(n) % 6] += 5.0  # clear margins: top-1 = n % 6
    return ref, np.arange(n) % 6


def flip(ref, rows):
    """A copy of `ref` whose top-1 class is moved to the next class on `rows`."""
    out = ref.copy()
    for i in rows:
        k = int(out[i].argmax())
        out[i, (k + 1) % out.shape[1]] = out[i, k] + 1.0
    return out


def test_fp32_variants_need_strict_parity():
    ref, y = _logits()
    assert compare_logits(ref, ref + 5e-4, y, precision="fp32").passed
    off = compare_logits(ref, ref + 2e-3, y, precision="fp32")
    assert not off.passed and "atol" in off.failures[0]
    one_flip = compare_logits(ref, flip(ref, [3]), y, precision="fp32")
    assert not one_flip.passed and one_flip.top1_disagreements == 1


def test_reduced_precision_rule_agreement_and_accuracy_delta():
    ref, y = _logits(200)  # reference accuracy 100%
    # 1 flip in 200: agreement 99.5%, accuracy -0.5 pp: both limits hold exactly.
    ok = compare_logits(ref, flip(ref, [0]), y, precision="int8")
    assert ok.passed and ok.agreement == 0.995 and ok.accuracy_delta_pp == -0.5
    # 2 flips: -1.0 pp and 99.0% agreement: the accuracy rule fails.
    two = compare_logits(ref, flip(ref, [0, 1]), y, precision="int8")
    assert not two.passed and two.accuracy_delta_pp == -1.0
    assert any("dropped by 1.00 pp" in f for f in two.failures)
    # Flips that do not cost accuracy still fail agreement: 2 wrong -> right, 2 right -> wrong.
    y2 = y.copy()
    y2[[10, 11]] = (y2[[10, 11]] + 1) % 6
    mixed = flip(ref, [10, 11, 12, 13])
    fid = compare_logits(ref, mixed, y2, precision="bf16")
    assert fid.accuracy_delta_pp == 0.0 and fid.agreement == 0.98 and not fid.passed
    loose = FidelityThresholds(min_agreement=0.95)
    assert compare_logits(ref, mixed, y2, precision="bf16", thresholds=loose).passed


def test_fidelity_without_labels_and_with_nan():
    ref, _ = _logits(50)
    fid = compare_logits(ref, ref, None, precision="fp16")
    assert fid.passed and fid.test_accuracy is None and fid.accuracy_delta_pp is None
    bad = ref.copy()
    bad[0, 0] = np.nan
    assert not compare_logits(ref, bad, None, precision="int8").passed
    with pytest.raises(ValueError, match="precision"):
        compare_logits(ref, ref, None, precision="int4")
    with pytest.raises(ValueError, match="0.99"):
        FidelityThresholds(min_agreement=99)
