"""The harness end to end on a miniature NEU set: outputs, recipe, resume, failure isolation."""

import csv
import dataclasses
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import bench.cli.run as bench_run
import bench.train.sweep as bench_sweep
from bench.amp import resolve_precision
from bench.config import Recipe, RunOptions
from bench.registry import build_model
from bench.train.loop import make_optimizer
from bench.ui import NullReporter
from tests.conftest import make_neu_flat

MODEL = "shufflenet_v2_x0_5"  # any torchvision classifier works; this one is tiny
REPO = Path(__file__).resolve().parents[1]


def tiny_recipe(**kw):
    base = dict(epochs=3, batch_size=8, image_size=32, eval_batch_size=16, weights="none")
    return Recipe(**{**base, **kw})


def tiny_opts(data, out, **kw):
    base = dict(
        models=MODEL,
        data=str(data),
        out=str(out),
        deterministic=True,
        speed=False,
        export="none",
        speed_min_seconds=0.0,
        speed_min_iters=2,
    )
    return RunOptions(**{**base, **kw})


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_neu_flat(tmp_path_factory.mktemp("d") / "NEU-CLS", per_class=10, size=(40, 40))


@pytest.fixture(scope="module")
def finished(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    results, code = bench_run.run(tiny_recipe(), tiny_opts(data, out), NullReporter())
    return out, results, code


@pytest.mark.isa
def test_run_writes_every_output(finished):
    out, results, code = finished
    assert code == 0
    for name in ("results.json", "results.csv", "report.md", "split.json"):
        assert (out / name).is_file(), name
    seed_dir = out / MODEL / "seed0"
    for name in ("best.pt", "history.csv", "metrics.json"):
        assert (seed_dir / name).is_file(), name
    assert not (seed_dir / "last.pt").exists()  # removed once the model is finished
    on_disk = json.loads((out / "results.json").read_text())
    (row,) = on_disk["rows"]
    for key in (
        "model", "seed", "fold", "status", "error", "val_accuracy", "test_accuracy",
        "test_correct", "test_images", "test_accuracy_ci95_low", "test_accuracy_ci95_high",
        "test_macro_f1", "train_seconds",
    ):  # fmt: skip
        assert key in row
    assert row["status"] == "ok" and row["error"] is None and row["weights"] == "none"
    # Which precision trained the model and why, in the row, the run record and the report.
    auto = resolve_precision(torch.device("cpu"), "auto")
    assert (row["amp"], row["amp_reason"]) == (auto.name, auto.reason)
    assert on_disk["precision"] == {"amp": auto.name, "amp_reason": auto.reason}
    assert row["compile"] is False and row["compile_error"] is None
    sweep = on_disk["sweep"]
    assert 0 < sweep["train_seconds_actual"] <= sweep["seconds_actual"]
    assert (sweep["runs"], sweep["runs_trained"], sweep["runs_finished_earlier"]) == (1, 1, 0)
    assert 0 <= sweep["export_seconds_actual"] <= sweep["seconds_actual"]
    assert row["fold"] is None and row["accuracy_split"] == "test"
    assert 0 <= row["val_accuracy"] <= 1
    # default split 70/10/20 of 10 images per class: 1 val and 2 test images per class
    assert (row["val_images"], row["test_images"]) == (6, 12)
    assert row["test_accuracy"] == row["test_correct"] / 12
    assert row["test_accuracy_ci95_low"] <= row["test_accuracy"] <= row["test_accuracy_ci95_high"]
    assert on_disk["recipe"]["image_size"] == 32
    assert on_disk["dataset"]["dataset_hash"] and on_disk["environment"]["torch"]
    metrics = json.loads((seed_dir / "metrics.json").read_text())
    # every headline number comes from the test images, not the ones that chose the epoch
    assert metrics["evaluated_on"] == "test"
    split = json.loads((out / "split.json").read_text())
    test_files = {it["file"] for it in split["items"] if it["split"] == "test"}
    assert set(metrics["predictions"]["files"]) == test_files
    cm = metrics["confusion_matrix"]
    assert len(cm) == 6 and sum(map(sum, cm)) == row["test_images"] == 12
    assert len(metrics["misclassified"]) == row["test_images"] - row["test_correct"]
    assert {m["file"] for m in metrics["misclassified"]} <= test_files
    (summary,) = on_disk["summary"]
    assert summary["accuracy_split"] == "test" and summary["images"] == 12
    assert summary["accuracy_mean"] == row["test_accuracy"]
    with open(out / "results.csv") as f:
        assert next(csv.DictReader(f))["test_accuracy"] == str(row["test_accuracy"])
    report = (out / "report.md").read_text()
    assert f"Training precision: **{auto.name}** ({auto.reason})" in report
    assert "Sweep wall time" in report
    assert "Confusion matrix" in report and "Clopper-Pearson 95% (n=12 test images)" in report
    assert "**test accuracy**" in report and "optimistic" not in report
    assert "| class | precision | recall | F1 | support |" in report
    if row["test_correct"] < row["test_images"]:
        assert metrics["misclassified"][0]["file"] in report


def test_scheduler_steps_once_per_epoch(finished):
    out, _, _ = finished
    with open(out / MODEL / "seed0" / "history.csv") as f:
        history = list(csv.DictReader(f))
    lrs = [float(h["lr"]) for h in history]
    assert lrs == pytest.approx([1e-3, 1e-3 * 0.9, 1e-3 * 0.81])


def test_param_groups_and_head_lr():
    model = build_model("resnet18", num_classes=6)
    opt, sched = make_optimizer(model, Recipe(), "imagenet")
    backbone, head = opt.param_groups
    assert (backbone["lr"], head["lr"]) == pytest.approx((1e-4, 1e-3))
    assert {id(p) for p in head["params"]} == {id(model.fc.weight), id(model.fc.bias)}
    n_params = len(list(model.parameters()))
    assert len(backbone["params"]) + len(head["params"]) == n_params
    for _ in range(2):
        opt.step()
        sched.step()
    assert opt.param_groups[1]["lr"] == pytest.approx(1e-3 * 0.81)


def test_finished_model_is_never_retrained(finished, data, monkeypatch):
    out, results, _ = finished

    def boom(*a, **k):
        raise AssertionError("retrained a finished model")

    monkeypatch.setattr("bench.train.loop.build_model", boom)
    again, code = bench_run.run(tiny_recipe(), tiny_opts(data, out), NullReporter())
    assert code == 0
    assert again["rows"][0]["val_accuracy"] == results["rows"][0]["val_accuracy"]


def test_other_recipe_in_same_folder_is_refused(finished, data):
    out, _, _ = finished
    with pytest.raises(ValueError, match="another recipe"):
        bench_run.run(tiny_recipe(epochs=4), tiny_opts(data, out), NullReporter())


@pytest.mark.isa
def test_another_precision_in_same_folder_is_refused(finished, data):
    out, results, _ = finished
    other = "bf16" if results["precision"]["amp"] == "fp32" else "off"
    with pytest.raises(ValueError, match="precision"):
        bench_run.run(tiny_recipe(amp=other), tiny_opts(data, out), NullReporter())


def _legacy_hash(recipe: Recipe, dataset: dict) -> str:
    """How neu-bench fingerprinted a recipe before --amp had choices (amp was a bool)."""
    # The recipe of that version: amp a bool, eval_batch_size hashed, no --folds and no
    # --augment-corruptions yet.
    old = {**dataclasses.asdict(recipe), "amp": True}
    del old["folds"], old["augment_corruptions"]
    blob = json.dumps([old, dataset["dataset_hash"], dataset["split_hash"]], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


@pytest.mark.isa
def test_run_started_before_amp_choices_still_resumes(data, finished, tmp_path):
    if finished[1]["precision"]["amp"] != "fp32":
        pytest.skip("the old version trained fp32 on every CPU; this one picks bf16 here")
    log = []

    class Log(StopAfter):
        def log(self, message):
            log.append(message)

    with pytest.raises(KeyboardInterrupt):
        bench_run.run(tiny_recipe(), tiny_opts(data, tmp_path), StopAfter(1))
    legacy = _legacy_hash(tiny_recipe(), finished[1]["dataset"])
    last = tmp_path / MODEL / "seed0" / "last.pt"
    state = torch.load(last, weights_only=True)
    state["recipe_hash"] = legacy
    torch.save(state, last)
    (tmp_path / "results.json").write_text(json.dumps({"recipe_hash": legacy}))
    resumed, code = bench_run.run(tiny_recipe(), tiny_opts(data, tmp_path), Log(-1))
    assert code == 0 and resumed["recipe_hash"] == legacy
    assert any("resuming after epoch 1" in m for m in log)
    assert _metrics(resumed) == _metrics(finished[1])


def test_one_failure_is_recorded_and_the_sweep_continues(data, tmp_path, monkeypatch):
    real = bench_sweep.train_one

    def flaky(name, *a, **k):
        if name == "resnet18":
            raise RuntimeError("CUDA out of memory (simulated)")
        return real(name, *a, **k)

    monkeypatch.setattr(bench_sweep, "train_one", flaky)
    opts = tiny_opts(data, tmp_path, models=f"resnet18,{MODEL}")
    results, code = bench_run.run(tiny_recipe(epochs=1), opts, NullReporter())
    assert code == 1
    failed, ok = results["rows"]
    assert failed["status"] == "failed" and "out of memory" in failed["error"]
    assert ok["status"] == "ok"
    assert (tmp_path / "resnet18" / "seed0" / "error.txt").is_file()
    assert "failed" in (tmp_path / "report.md").read_text()


class StopAfter(NullReporter):
    def __init__(self, epochs):
        self.left = epochs

    def epoch_end(self, record):
        self.left -= 1
        if self.left == 0:
            raise KeyboardInterrupt


def _metrics(results):
    keep = ("val_accuracy", "test_accuracy", "test_macro_f1", "val_loss", "best_epoch")
    return [{k: r[k] for k in keep} for r in results["rows"]]


@pytest.mark.isa
def test_interrupted_run_resumes_to_identical_results(data, finished, tmp_path):
    with pytest.raises(KeyboardInterrupt):
        bench_run.run(tiny_recipe(), tiny_opts(data, tmp_path), StopAfter(2))
    assert (tmp_path / MODEL / "seed0" / "last.pt").is_file()
    assert not list(tmp_path.rglob("*.tmp"))  # Ctrl-C leaves no half-written file
    resumed, code = bench_run.run(tiny_recipe(), tiny_opts(data, tmp_path), NullReporter())
    assert code == 0
    _, uninterrupted, _ = finished
    assert _metrics(resumed) == _metrics(uninterrupted)
    with open(tmp_path / MODEL / "seed0" / "history.csv") as f:
        assert len(list(csv.DictReader(f))) == 3
    assert (resumed["sweep"]["runs_trained"], resumed["sweep"]["runs_finished_earlier"]) == (1, 0)
    # Once more: nothing left to train, and the report says so instead of "no estimate".
    again, code = bench_run.run(tiny_recipe(), tiny_opts(data, tmp_path), NullReporter())
    assert code == 0 and _metrics(again) == _metrics(uninterrupted)
    assert (again["sweep"]["runs_trained"], again["sweep"]["runs_finished_earlier"]) == (0, 1)
    report_md = (tmp_path / "report.md").read_text()
    assert "nothing to train: all 1 runs finished in an earlier invocation" in report_md
    assert "no estimate" not in report_md


def _cli(data, out, epochs):
    return [
        sys.executable, "-m", "bench", "run", "--models", MODEL, "--data", str(data),
        "--out", str(out), "--epochs", str(epochs), "--image-size", "32", "--batch-size", "4",
        "--weights", "none", "--deterministic", "--no-speed", "--export", "none",
    ]  # fmt: skip


@pytest.mark.slow
def test_sigkill_mid_epoch_then_rerun_matches_uninterrupted(data, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    clean = subprocess.run(_cli(data, tmp_path / "a", 4), env=env, capture_output=True, text=True)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    proc = subprocess.Popen(_cli(data, tmp_path / "b", 4), env=env, stdout=subprocess.DEVNULL)
    last = tmp_path / "b" / MODEL / "seed0" / "last.pt"
    deadline = time.time() + 120
    while not last.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    time.sleep(0.3)  # into the next epoch
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert last.exists(), "the run finished before it could be killed"
    again = subprocess.run(_cli(data, tmp_path / "b", 4), env=env, capture_output=True, text=True)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "resuming after epoch" in again.stdout
    a = json.loads((tmp_path / "a" / "results.json").read_text())
    b = json.loads((tmp_path / "b" / "results.json").read_text())
    assert _metrics(a) == _metrics(b)
    assert torch.equal(
        torch.load(tmp_path / "a" / MODEL / "seed0" / "best.pt")["state_dict"]["fc.weight"],
        torch.load(tmp_path / "b" / MODEL / "seed0" / "best.pt")["state_dict"]["fc.weight"],
    )


def test_pipeline_efficiency_splits_the_real_steps_into_data_and_compute(
    data, tmp_path, monkeypatch
):
    """A data path made 30 ms slower per batch must show up as data time, not compute, and
    evaluation time (made 0.2 s slower per call) must not count as training time."""
    from bench.train import loop as train

    slow_augment, slow_eval = train.FoldData.augment, train.evaluate

    def augment(self, raw, generator):  # the data part of every training step
        time.sleep(0.03)
        return slow_augment(self, raw, generator)

    def evaluate(*args, **kwargs):
        time.sleep(0.2)
        return slow_eval(*args, **kwargs)

    monkeypatch.setattr(train.FoldData, "augment", augment)
    monkeypatch.setattr(train, "evaluate", evaluate)
    results, code = bench_run.run(
        tiny_recipe(epochs=2), tiny_opts(data, tmp_path / "o"), NullReporter()
    )
    assert code == 0
    (row,) = results["rows"]
    assert row["data_ms_per_step"] >= 30
    expected = row["compute_ms_per_step"] / (row["data_ms_per_step"] + row["compute_ms_per_step"])
    assert row["pipeline_efficiency"] == pytest.approx(expected) and row["pipeline_efficiency"] < 1
    history = list(csv.DictReader(open(tmp_path / "o" / MODEL / "seed0" / "history.csv")))
    for h in history:
        # data + compute account for the timed loop (the rest is loop overhead: small)
        steps_s = (float(h["data_ms_per_step"]) + float(h["compute_ms_per_step"])) / 1e3
        n_steps = float(h["train_seconds"]) / steps_s
        assert (
            0.9 * n_steps <= 6 <= 1.1 * n_steps + 1
        )  # 42 training images (70/10/20 of 60) / batch 8
    # 2 per-epoch validations + best-checkpoint evaluation (+ test) each slept 0.2 s
    assert row["eval_seconds"] >= 0.6
    assert row["train_seconds"] == pytest.approx(sum(float(h["train_seconds"]) for h in history))


def test_sweep_estimate_is_recorded_once_and_scaled_by_gflops():
    info = {"a": {"gflops": 1.0}, "b": {"gflops": 3.0}}
    record = {}
    estimate = bench_sweep.estimator(info, {"a": 2, "b": 2}, record)
    text = estimate("a", 2.0, 10, 3)  # 60 s for a; b has 3x the FLOPs; two seeds each
    assert "whole sweep ~8.0 min" in text  # a quick sweep's 0.4 min once printed as "~0 min"
    assert record["train_seconds_expected"] == pytest.approx((60 + 180) * 2)
    estimate("b", 100.0, 10, 3)  # later models refine the log line, not the start-of-run figure
    assert record["train_seconds_expected"] == pytest.approx(480)
    assert record["expected_from"].startswith("a: 2.000 s per batch")


def test_sweep_estimate_leaves_out_runs_finished_earlier():
    # A resumed sweep whose "b" runs are done: only a's two runs remain (120 s), not 480 s.
    record = {}
    estimate = bench_sweep.estimator(
        {"a": {"gflops": 1.0}, "b": {"gflops": 3.0}}, {"a": 2, "b": 0}, record
    )
    estimate("a", 2.0, 10, 3)
    assert record["train_seconds_expected"] == pytest.approx(120)


def test_without_test_split_the_report_says_optimistic(data, tmp_path):
    recipe = tiny_recipe(epochs=1, test_fraction=0.0, val_fraction=0.2)
    results, code = bench_run.run(recipe, tiny_opts(data, tmp_path), NullReporter())
    assert code == 0
    (row,) = results["rows"]
    assert row["accuracy_split"] == "val" and row["test_accuracy"] is None
    assert results["summary"][0]["accuracy_mean"] == row["val_accuracy"]
    report = (tmp_path / "report.md").read_text()
    assert "validation accuracy (also used to pick the checkpoint: optimistic)" in report
    assert "**test accuracy**" not in report


@pytest.mark.slow
def test_folds_test_every_image_once_and_pool(data, tmp_path):
    recipe = tiny_recipe(epochs=1, folds=2)
    opts = tiny_opts(data, tmp_path, models=f"{MODEL},mobilenet_v3_small")
    results, code = bench_run.run(recipe, opts, NullReporter())
    assert code == 0
    rows = results["rows"]
    assert [(r["model"], r["fold"]) for r in rows] == [
        (m, k) for m in (MODEL, "mobilenet_v3_small") for k in range(2)
    ]
    tested = []
    for r in rows[:2]:
        metrics = json.loads((tmp_path / r["checkpoint"]).with_name("metrics.json").read_text())
        tested += metrics["predictions"]["files"]
        assert (tmp_path / f"split_fold{r['fold']}.json").is_file()
    assert len(tested) == len(set(tested)) == 60  # every image a test image exactly once
    s = results["summary"][0]
    assert (s["folds"], s["images"]) == (2, 60)
    assert s["correct"] == sum(r["test_correct"] for r in rows[:2])
    assert s["accuracy_mean"] == pytest.approx(s["correct"] / 60)
    assert "2 folds pooled" in s["ci_method"] and s["fold_accuracy_std"] is not None
    # the two models compared pairwise on the same 60 test images
    (c,) = results["comparisons"]
    assert (c["model_a"], c["model_b"], c["images"]) == (MODEL, "mobilenet_v3_small", 60)
    right = {}
    for r in rows:
        m = json.loads((tmp_path / r["checkpoint"]).with_name("metrics.json").read_text())
        p = m["predictions"]
        for f, y, yhat in zip(p["files"], p["labels"], p["predicted"], strict=True):
            right[r["model"], f] = y == yhat
    files = {f for _, f in right}
    a_only = sum(right[MODEL, f] and not right["mobilenet_v3_small", f] for f in files)
    b_only = sum(right["mobilenet_v3_small", f] and not right[MODEL, f] for f in files)
    assert (c["a_only_correct"], c["b_only_correct"]) == (a_only, b_only)
    assert 0 < c["p_value"] <= 1
    assert {x["indistinguishable_from_best"] is not None for x in results["summary"]} == {True}
    report = (tmp_path / "report.md").read_text()
    assert "Paired comparison (exact McNemar test)" in report
    # resume: a re-run retrains nothing and gives the same rows
    again, code = bench_run.run(recipe, opts, NullReporter())
    assert code == 0 and again["rows"] == rows
