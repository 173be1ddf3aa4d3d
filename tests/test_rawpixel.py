"""exports.rawpixel: uint8 pixels in, the preprocessing inside the graph, same answers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from exports.export import export_onnx
from exports.quantize import int8_settings, quantize_int8
from exports.rawpixel import (
    RawParityError,
    check_raw_parity,
    compose,
    embed_preprocessing,
    raw_path_for,
)
from exports.runtime import METADATA_PREFIX, Classifier, ModelFormatError, parse_metadata
from neu.image import normalize
from tests.conftest import run_without_torch, write_image
from tests.test_export import metadata, tiny_model

SIZE = 32
MEAN, STD = [0.45, 0.4, 0.35], [0.25, 0.2, 0.3]  # distinct per channel: a mix-up shows


def pixels(n, channels, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, channels, SIZE, SIZE), dtype=np.uint8)


def _export(tmp: Path, channels: int) -> Path:
    meta = metadata(size=SIZE, mean=MEAN, std=STD, channels=channels)
    return export_onnx(tiny_model(size=SIZE), tmp / "shufflenet_v2_x0_5.onnx", metadata=meta,
                       image_size=SIZE, exporter="torchscript")  # fmt: skip


@pytest.fixture(scope="module")
def grey_plain(tmp_path_factory) -> Path:
    return _export(tmp_path_factory.mktemp("grey"), 1)


@pytest.fixture(scope="module")
def rgb_plain(tmp_path_factory) -> Path:
    return _export(tmp_path_factory.mktemp("rgb"), 3)


def _session(path_or_bytes):
    return ort.InferenceSession(path_or_bytes, providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("kind", ["grey", "rgb"])
def test_composed_graph_takes_uint8_pixels_and_gives_the_plain_answers(
    kind, grey_plain, rgb_plain, tmp_path
):
    plain = grey_plain if kind == "grey" else rgb_plain
    channels = 1 if kind == "grey" else 3
    raw = tmp_path / "m.raw.onnx"
    x = pixels(40, channels, seed=3)  # 40: a full batch of 32 and a short one
    figures = embed_preprocessing(plain, raw, pixels=x, source="test")
    assert figures["passed"] and figures["top1_disagreements"] == 0
    assert figures["images"] == 40 and figures["max_abs_logit_diff"] <= 1e-4

    proto = onnx.load(str(raw))
    (inp,) = proto.graph.input
    dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
    assert inp.name == "pixels" and inp.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert dims == (["batch", SIZE, SIZE] if channels == 1 else ["batch", SIZE, SIZE, 3])
    # The network is the plain file's, untouched: every node and weight is still there.
    plain_proto = onnx.load(str(plain))
    assert {n.op_type for n in proto.graph.node} >= {n.op_type for n in plain_proto.graph.node}
    assert len(proto.graph.node) == len(plain_proto.graph.node) + 5
    assert {t.name for t in plain_proto.graph.initializer} <= {
        t.name for t in proto.graph.initializer
    }

    info = parse_metadata({p.key: p.value for p in proto.metadata_props})
    assert info.input_kind == "raw"
    assert info.raw[METADATA_PREFIX + "input_layout"] == ("NHW" if channels == 1 else "NHWC")
    pre = json.loads(info.raw[METADATA_PREFIX + "preprocessing"])
    assert any("resize" in step for step in pre["outside_graph"])
    assert not any("resize" in step for step in pre["in_graph"])
    stamped = json.loads(info.raw[METADATA_PREFIX + "raw_parity"])
    assert stamped["passed"] and stamped["images"] == 40

    # Classifier reads the kind from the metadata and gives the same probabilities.
    a, b = Classifier(plain), Classifier(raw)
    assert b.info.raw_pixels and not a.info.raw_pixels
    np.testing.assert_allclose(b.predict_arrays(x), a.predict_arrays(x), atol=1e-6)
    # ... which are the plain model run on numpy-normalised pixels, i.e. the training input.
    direct = _session(str(plain)).run(None, {"input": normalize(x, MEAN, STD)})[0]
    np.testing.assert_allclose(b.logits(b._model_input(x)), direct, atol=1e-4)


def test_int8_file_gets_a_raw_pixel_copy_with_the_int8_answers(grey_plain, tmp_path):
    int8 = tmp_path / "shufflenet_v2_x0_5.int8.onnx"
    quantize_int8(grey_plain, int8, normalize(pixels(12, 1, seed=1), MEAN, STD),
                  int8_settings(vnni=False, machine="x86_64"))  # fmt: skip
    x = pixels(20, 1, seed=4)
    figures = embed_preprocessing(int8, pixels=x, source="test")
    raw = raw_path_for(int8)
    assert raw.name == "shufflenet_v2_x0_5.int8.raw.onnx" and raw.is_file()
    assert figures["passed"] and figures["top1_disagreements"] == 0
    a, b = Classifier(int8), Classifier(raw)
    assert b.info.precision == "int8" and b.info.raw_pixels
    np.testing.assert_allclose(b.predict_arrays(x), a.predict_arrays(x), atol=1e-5)


def test_parity_check_catches_a_wrong_normalisation(grey_plain):
    plain = onnx.load(str(grey_plain))
    wrong = onnx.ModelProto()
    wrong.CopyFrom(plain)
    props = {p.key: p.value for p in wrong.metadata_props}
    props[METADATA_PREFIX + "std"] = json.dumps([0.5, 0.5, 0.5])  # not what training used
    del wrong.metadata_props[:]
    onnx.helper.set_model_props(wrong, props)
    info = parse_metadata({p.key: p.value for p in plain.metadata_props})
    bad = _session(compose(wrong).SerializeToString())
    figures = check_raw_parity(_session(str(grey_plain)), bad, pixels(16, 1), info)
    assert not figures["passed"] and figures["failures"]
    good = _session(compose(plain).SerializeToString())
    assert check_raw_parity(_session(str(grey_plain)), good, pixels(16, 1), info)["passed"]


def test_failed_parity_writes_nothing(grey_plain, tmp_path, monkeypatch):
    import exports.rawpixel as rp

    monkeypatch.setattr(
        rp, "check_raw_parity", lambda *a, **k: {"passed": False, "failures": ["x"]}
    )
    dst = tmp_path / "m.raw.onnx"
    with pytest.raises(RawParityError, match="parity"):
        embed_preprocessing(grey_plain, dst)
    assert not dst.exists()


def test_bad_input_names_the_dtype_and_both_sizes(grey_plain, rgb_plain, tmp_path):
    embed_preprocessing(grey_plain, tmp_path / "g.raw.onnx")
    embed_preprocessing(rgb_plain, tmp_path / "c.raw.onnx")
    grey, rgb = Classifier(tmp_path / "g.raw.onnx"), Classifier(tmp_path / "c.raw.onnx")
    with pytest.raises(ValueError, match=r"uint8.*got float32"):
        grey.logits(np.zeros((1, SIZE, SIZE), np.float32))
    with pytest.raises(ValueError, match=r"200 x 200 px but the model takes 32 x 32"):
        grey.logits(np.zeros((1, 200, 200), np.uint8))
    with pytest.raises(ValueError, match=r"\(N, H, W, 3\)"):
        rgb.logits(np.zeros((1, SIZE, SIZE), np.uint8))
    with pytest.raises(ValueError, match=r"64 x 64 px but the model takes 32 x 32"):
        grey.predict_arrays(np.zeros((1, 1, 64, 64), np.uint8))
    # ONNX Runtime itself refuses float pixels for a client that bypasses the Classifier.
    with pytest.raises(Exception, match="(?i)uint8|type"):
        grey.session.run(None, {"pixels": np.zeros((1, SIZE, SIZE), np.float32)})
    with pytest.raises(ModelFormatError, match="already takes raw pixels"):
        compose(onnx.load(str(tmp_path / "g.raw.onnx")))


def test_predict_runs_a_raw_pixel_file_without_torch(grey_plain, tmp_path):
    raw = tmp_path / "m.raw.onnx"
    embed_preprocessing(grey_plain, raw)
    imgs = [write_image(tmp_path / f"i{k}.png", size=(48, 40), seed=k) for k in range(3)]
    outputs = {}
    for path in (grey_plain, raw):
        proc, attempted = run_without_torch(
            ["-m", "exports", "predict", str(path), *map(str, imgs), "--json"], tmp_path
        )
        assert proc.returncode == 0, proc.stderr
        assert attempted == []
        outputs[path] = [json.loads(line) for line in proc.stdout.splitlines()]
    for a, b in zip(outputs[grey_plain], outputs[raw], strict=True):
        assert a["class"] == b["class"]
        for c, p in a["probabilities"].items():
            assert abs(p - b["probabilities"][c]) <= 1e-6
