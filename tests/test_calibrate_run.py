"""End to end on a miniature NEU-CLS: bench run's calibration, review threshold, Grad-CAM and
model card; `bench calibrate` and `bench explain` on an existing run folder."""

from __future__ import annotations

import json
import shutil

import pytest

from bench.__main__ import main
from exports.runtime import Classifier
from tests.conftest import make_neu_flat

MODEL = "shufflenet_v2_x0_5"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("calrun")
    data = make_neu_flat(tmp / "NEU-CLS", per_class=8, size=(40, 40))
    out = tmp / "run"
    argv = [
        "run", "--models", MODEL, "--data", str(data), "--out", str(out), "--weights", "none",
        "--image-size", "32", "--epochs", "1", "--no-speed", "--export", "best",
    ]  # fmt: skip
    assert main(argv) == 0
    return data, out, json.loads((out / "results.json").read_text())


def test_run_records_calibration_before_after_and_the_operating_point(run):
    _, out, results = run
    cal = results["calibration"]
    assert cal["target_accuracy"] == 0.995 and cal["n_bins"] == 15
    (rec,) = cal["rows"]
    assert rec["fitted_on"] == "validation" and rec["evaluated_on"] == "test"
    assert rec["fit_images"] == results["dataset"]["split"]["val_images"]
    for when in ("before", "after"):
        assert set(rec[when]) >= {"ece", "mce", "nll", "brier"}
        assert rec[when]["images"] == results["dataset"]["split"]["test_images"]
    assert rec["temperature"] > 0 and rec["aurc"] is not None
    assert "threshold" in rec["review"]
    for png in ("reliability_" + MODEL + ".png", "risk_coverage.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
    md = (out / "report.md").read_text()
    assert "## Calibration" in md and "## Review threshold" in md
    assert "ECE before -> after" in md and "risk_coverage.png" in md


def test_gradcam_pngs_are_embedded_in_report_html(run):
    _, out, results = run
    items = results["explanations"]["models"][MODEL]
    wrong = sum(i["kind"] == "misclassified" for i in items)
    assert wrong == results["rows"][0]["test_images"] - results["rows"][0]["test_correct"]
    assert len(items) - wrong <= 6  # one correct image per class at most
    html = (out / "report.html").read_text()
    for i in items:
        assert (out / i["png"]).is_file()
        assert f"{i['true']} / {i['predicted']} / p={i['probability']:.3f}" in html
    assert html.count('<div class="gallery">') == 1
    assert html.count("data:image/png;base64,") >= len(items) + 2


def test_export_carries_temperature_threshold_and_card(run):
    _, out, results = run
    (exp,) = results["exports"]
    rec = results["calibration"]["rows"][0]
    info = Classifier(out / exp["path"]).info
    assert info.temperature == pytest.approx(rec["temperature"])
    assert info.review["target_accuracy"] == 0.995
    assert info.review["threshold"] == rec["review"]["threshold"]
    if info.review["threshold"] is None:
        assert "no confidence threshold" in info.review["reason"]
    card_meta = json.loads(info.raw["neu_bench.model_card"])
    assert card_meta["card"] == f"{MODEL}.card.md" and card_meta["split_hash"]
    card = (out / "exports" / f"{MODEL}.card.md").read_text()
    for section in ("Model details", "Intended use", "Factors", "Metrics", "Evaluation data",
                    "Training data", "Quantitative analyses", "Ethical considerations",
                    "Caveats and recommendations"):  # fmt: skip
        assert f"## {section}" in card, section
    ds = results["dataset"]
    for text in ("academic research use only", "Song and Y. Yan", ds["split_hash"],
                 "crazing 8", "Clopper-Pearson 95% CI", f"{rec['temperature']:.4f}",
                 "|---|---|---|\n| ECE |", "Review threshold", "FP32 ONNX parity", "ISA"):  # fmt: skip
        assert text in card, text
    # The corruption benchmark runs by default: the card summarises this model's figures.
    summary = [s for s in results["robustness"]["summary"] if s["model"] == MODEL]
    assert summary and "Robustness to image corruptions: measured" in card
    fp32 = next(s for s in summary if s["variant"] == "fp32")
    assert f"| fp32 | {100 * fp32['clean_accuracy']:.2f}% |" in card


def test_bench_calibrate_on_a_copy_of_a_run_folder(run, tmp_path):
    """The same computation on an existing run: a lower target gives a threshold (or the
    same 'none' with its reason), stamped into the copy's export; the original is untouched."""
    data, out, results = run
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    (copy / "shufflenet_v2_x0_5" / "seed0" / "calibration_logits.npz").unlink()
    argv = ["calibrate", str(copy), "--target-accuracy", "0.1", "--no-explain", "--data", str(data)]
    assert main(argv) == 0
    again = json.loads((copy / "results.json").read_text())
    (rec,) = again["calibration"]["rows"]
    assert rec["temperature"] == pytest.approx(results["calibration"]["rows"][0]["temperature"])
    assert rec["review"]["target_accuracy"] == 0.1
    info = Classifier(copy / again["exports"][0]["path"]).info
    assert info.review["target_accuracy"] == 0.1
    assert info.review["threshold"] == rec["review"]["threshold"]
    assert Classifier(out / results["exports"][0]["path"]).info.review["target_accuracy"] == 0.995


def test_bench_explain_any_image(run, tmp_path, capsys):
    data, out, _ = run
    argv = ["explain", str(out), "--model", MODEL, "--images", str(data / "Sc_3.bmp"),
            "--out", str(tmp_path / "x")]  # fmt: skip
    assert main(argv) == 0
    assert (tmp_path / "x" / "Sc_3.png").read_bytes()[:4] == b"\x89PNG"
    assert "true scratches" in capsys.readouterr().out
    assert main(["explain", str(out), "--model", "resnet50"]) == 2


def test_card_says_when_robustness_was_not_measured():
    from bench.report.card import _robustness

    assert _robustness({}, MODEL).startswith("Not measured")
    other = {"robustness": {"summary": [{"model": "resnet50", "variant": "fp32"}]}}
    assert "no entry for this model" in _robustness(other, MODEL)
