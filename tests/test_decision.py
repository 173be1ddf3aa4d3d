"""The decision a deployment acts on: temperature and review threshold in the exported file,
`exports predict` (torch-free) applying them, and the model card beside every export."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

from exports.calibration import softmax_t
from exports.export import build_metadata, export_onnx
from exports.quantize import update_metadata
from exports.runtime import Classifier, ModelFormatError, parse_metadata
from neu import NEU_CLASSES
from neu.image import load_image, normalize
from tests.conftest import run_without_torch, write_image

SIZE = 32
MEAN, STD = [0.45, 0.45, 0.45], [0.25, 0.25, 0.25]
REVIEW = {"threshold": 0.3, "target_accuracy": 0.995, "chosen_on": "validation",
          "val_coverage": 0.5, "val_images": 10, "val_auto_accuracy": 1.0}  # fmt: skip


@pytest.fixture(scope="module")
def plain_onnx(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    net = torchvision.models.get_model("shufflenet_v2_x0_5", num_classes=6).eval()
    meta = build_metadata(
        model_name="shufflenet_v2_x0_5", classes=NEU_CLASSES, image_size=SIZE, channels=1,
        mean=MEAN, std=STD, val_accuracy=0.5, dataset_hash="d" * 64, split_hash="s" * 64,
        split={"seed": 0}, weights="none",
    )  # fmt: skip
    out = tmp_path_factory.mktemp("decision") / "plain.onnx"
    return export_onnx(net, out, metadata=meta, image_size=SIZE, exporter="torchscript")


def _stamped(plain: Path, tmp_path: Path, values: dict) -> Path:
    path = tmp_path / "stamped.onnx"
    path.write_bytes(plain.read_bytes())
    return update_metadata(path, values)


@pytest.fixture
def images(tmp_path) -> Path:
    d = tmp_path / "imgs"
    for i in range(4):
        write_image(d / f"{i}.bmp", size=(SIZE, SIZE), seed=i)
    return d


def test_metadata_round_trip(plain_onnx, tmp_path):
    path = _stamped(
        plain_onnx, tmp_path, {"temperature": "2.5", "review_threshold": json.dumps(REVIEW)}
    )
    clf = Classifier(path)
    assert clf.info.temperature == 2.5 and clf.temperature == 2.5
    assert clf.info.review == REVIEW and clf.threshold == 0.3
    assert "target accuracy 0.995" in clf.threshold_source
    old = Classifier(plain_onnx)  # a file exported before these keys: uncalibrated, no threshold
    assert old.temperature == 1.0 and old.threshold is None


@pytest.mark.parametrize(
    ("key", "value"), [("temperature", "-1"), ("review_threshold", '{"threshold": 7}')]
)
def test_bad_decision_metadata_names_the_key(plain_onnx, tmp_path, key, value):
    path = _stamped(plain_onnx, tmp_path, {key: value})
    import onnx

    props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    with pytest.raises(ModelFormatError, match=f"neu_bench.{key}"):
        parse_metadata(props, source=path)


def test_predict_applies_the_temperature(plain_onnx, tmp_path, images):
    path = _stamped(
        plain_onnx, tmp_path, {"temperature": "4.0", "review_threshold": json.dumps(REVIEW)}
    )
    files = sorted(images.iterdir())
    px = np.stack([load_image(f, size=SIZE, channels=1) for f in files])
    raw = Classifier(plain_onnx).logits(normalize(px, MEAN, STD))
    got = Classifier(path).predict_arrays(px)
    np.testing.assert_allclose(got, softmax_t(raw, 4.0), atol=1e-5)


def test_predict_json_without_torch_prints_calibrated_probabilities_and_decision(
    plain_onnx, tmp_path, images
):
    review = {**REVIEW, "threshold": 0.2}
    path = _stamped(
        plain_onnx, tmp_path, {"temperature": "0.5", "review_threshold": json.dumps(review)}
    )
    proc, attempted = run_without_torch(
        ["-m", "exports", "predict", str(path), str(images), "--json"], tmp_path
    )
    assert not attempted and proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(rows) == 4
    for r in rows:
        assert r["temperature"] == 0.5 and r["threshold"] == 0.2
        assert r["decision"] == ("auto" if r["confidence"] >= 0.2 else "review")
        assert sum(r["probabilities"].values()) == pytest.approx(1, abs=1e-5)
    # --threshold overrides the file's: 0 decides everything, 1 (almost) nothing.
    for t, want in (("0", {"auto"}), ("1", {"review"})):
        proc, _ = run_without_torch(
            ["-m", "exports", "predict", str(path), str(images), "--json", "--threshold", t],
            tmp_path,
        )
        assert {json.loads(x)["decision"] for x in proc.stdout.splitlines()} == want


def test_model_without_a_threshold_says_so_and_sends_everything_to_review(
    plain_onnx, tmp_path, images
):
    none = {"threshold": None, "target_accuracy": 0.995, "reason": "no confidence threshold "
            "makes the automatic decisions reach accuracy 0.995 on the 12 validation images"}  # fmt: skip
    path = _stamped(
        plain_onnx, tmp_path, {"temperature": "1.2", "review_threshold": json.dumps(none)}
    )
    proc, _ = run_without_torch(
        ["-m", "exports", "predict", str(path), str(images)], tmp_path, also_block=("rich",)
    )
    assert proc.returncode == 0, proc.stderr
    assert "no review threshold" in proc.stderr and "0.995" in proc.stderr
    assert "--threshold" in proc.stderr
    lines = proc.stdout.splitlines()
    assert "review threshold none" in lines[0]
    assert [row.split("\t")[3] for row in lines[2:]] == ["review"] * 4


def test_predict_rejects_a_threshold_outside_0_1(plain_onnx, images, capsys):
    from exports.__main__ import main

    with pytest.raises(SystemExit):
        main(["predict", str(plain_onnx), str(images), "--threshold", "1.5"])
    assert "--threshold" in capsys.readouterr().err
