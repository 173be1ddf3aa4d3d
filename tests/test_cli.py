"""The command lines a user types, end to end on small inputs."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.__main__ import main
from tests.conftest import make_neu_flat

REPO = Path(__file__).resolve().parents[1]


def test_bench_list_shows_registry_with_params_and_gflops(capsys):
    assert main(["list", "--image-size", "32"]) == 0
    out = capsys.readouterr().out
    for name in ("resnet50", "vgg16_bn", "densenet121", "shufflenet_v2_x1_0"):
        assert name in out
    assert "GFLOPs at 32 px" in out


def test_missing_data_folder_is_a_clear_error(tmp_path, capsys):
    code = main(["run", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "o")])
    assert code == 2
    out = capsys.readouterr().out
    assert str(tmp_path / "nope") in out


def quick_run_argv(tmp_path) -> tuple[list[str], Path, Path]:
    """(a --quick run of one small model on a miniature NEU-CLS that reaches every step in
    seconds, that NEU-CLS, its --out)."""
    data = make_neu_flat(tmp_path / "NEU-CLS", per_class=8, size=(40, 40))
    out = tmp_path / "run"
    argv = [
        "run", "--quick", "--models", "shufflenet_v2_x0_5", "--data", str(data),
        "--out", str(out), "--weights", "none", "--image-size", "32", "--epochs", "1",
        "--speed-min-seconds", "0", "--speed-min-iters", "3", "--export", "best",
        "--variants", "int8", "--calibration-images", "8",
    ]  # fmt: skip
    return argv, data, out


def test_quick_run_is_labelled_and_exports_with_parity(tmp_path, capsys):
    argv, data, out = quick_run_argv(tmp_path)
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "QUICK" in printed
    results = json.loads((out / "results.json").read_text())
    assert results["quick"] is True and results["recipe"]["limit_per_class"] == 20
    assert "QUICK PRESET" in (out / "report.md").read_text()
    (exp,) = results["exports"]
    for key in ("model", "path", "parity_passed", "max_abs_diff", "top1_disagreements", "provider"):
        assert key in exp
    # The speed step's ONNX file became the export: the checkpoint was exported once.
    assert "the speed step's export of this checkpoint" in printed
    assert not (out / "variants" / "shufflenet_v2_x0_5" / "shufflenet_v2_x0_5.onnx").exists()
    sweep = results["sweep"]
    assert sweep["speed_seconds_actual"] > 0 and sweep["export_seconds_actual"] > 0
    assert exp["parity_passed"] and exp["top1_disagreements"] == 0
    # parity runs on the test images (data that chose nothing)
    assert exp["images"] == "test"
    assert exp["n_images"] == results["dataset"]["split"]["test_images"] == 12
    assert (out / exp["path"]).is_file()
    kinds = {(r["runtime"], r["provider"], r["batch_size"]) for r in results["speed"]}
    assert {("torch", "cpu", 1), ("torch", "cpu", 32), ("onnxruntime", "cpu", 1)} <= kinds
    inference = [r for r in results["speed"] if r.get("phase") != "train"]
    for r in inference:
        for key in ("latency_ms_p50", "latency_ms_p90", "latency_ms_p99", "throughput_img_s"):
            assert r[key] > 0
        assert r["threads"] >= 1
        # torch and ORT in the same interleaved rounds (default 3), with their spread
        assert r["rounds"] == 3 and r["p50_spread_pct"] is not None
    (train,) = [r for r in results["speed"] if r.get("phase") == "train"]
    assert train["train_img_s"] > 0 and 0 < train["pipeline_efficiency"] <= 1
    assert train["data_ms_per_step"] > 0 and train["compute_ms_per_step"] > 0
    assert (out / "accuracy_vs_latency.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "accuracy_vs_latency.png" in (out / "report.md").read_text()

    # The exported model states the test accuracy and the split it was measured on.
    from exports.runtime import Classifier

    info = Classifier(out / exp["path"]).info
    (row,) = results["rows"]
    # ...the accuracy the FILE achieves (the run's own figure, maybe scored under bf16
    # autocast, is kept beside it with its precision)
    assert (info.test_accuracy, info.test_images) == (exp["file_test_accuracy"], 12)
    measured = json.loads(info.raw["neu_bench.test_accuracy_measured"])
    assert measured["correct"] == exp["file_test_correct"] and measured["precision"] == "fp32"
    torch_fig = json.loads(info.raw["neu_bench.test_accuracy_torch"])
    assert torch_fig["accuracy"] == row["test_accuracy"]
    assert torch_fig["precision"] == row["test_accuracy_precision"] == row["amp"]
    assert info.split_hash == results["dataset"]["split_hash"]
    # exports verify reproduces that figure exactly: same images, runtime, batch, count
    proc = subprocess.run(
        [sys.executable, "-m", "exports", "verify", str(out / exp["path"]), "--data", str(data),
         "--json"], capture_output=True, text=True, cwd=REPO,
    )  # fmt: skip
    verified = json.loads(proc.stdout)
    assert proc.returncode == 0 and verified["passed"], proc.stdout + proc.stderr
    assert verified["accuracy_tolerance"] == 0.0
    assert "exact" in verified["accuracy_tolerance_reason"]
    assert verified["onnx_correct"] == measured["correct"]

    # Deployment: torch FP32, ORT FP32 and ORT INT8, each with fidelity figures on the held-out
    # images, and a recommended artifact next to the FP32 export.
    deployment = {r["variant"]: r for r in results["deployment"]}
    assert {"torch_fp32", "ort_fp32", "ort_int8"} <= set(deployment)
    held_out = (
        results["dataset"]["split"]["test_images"] or results["dataset"]["split"]["val_images"]
    )
    for r in deployment.values():
        assert r["fidelity_images"] == held_out
        if r.get("skipped"):  # ort_int8 when no INT8 candidate passed: it says so
            assert "no INT8 candidate passed" in r["skipped"]
            continue
        assert r["agreement"] is not None and r["test_accuracy"] is not None
        assert r["latency_ms_p50"] > 0 and r["speedup_vs_torch_fp32"] > 0
    rec = results["recommendation"]["by_model"]["shufflenet_v2_x0_5"]
    assert deployment[rec["variant"]]["passed"]
    recommended = exp["recommended"]
    assert recommended["variant"] == rec["variant"]
    if recommended["kind"] == "onnx":
        info = Classifier(out / recommended["path"]).info
        fidelity = json.loads(info.raw["neu_bench.fidelity"])
        assert fidelity["variant"] == rec["variant"] and fidelity["agreement"] >= 0.99
    assert "Deployment variants" in (out / "report.md").read_text()

    # The exported model, run by the torch-free runtime, agrees with the run's evaluation.
    test = [i["file"] for i in json.loads((out / "split.json").read_text())["items"]
            if i["split"] == "test"]  # fmt: skip
    preds = _predict(out / exp["path"], [data / f for f in test])
    assert len(preds) == len(test) and all("class" in p for p in preds)
    metrics = json.loads((out / "shufflenet_v2_x0_5" / "seed0" / "metrics.json").read_text())
    wrong = {m["file"]: m["predicted"] for m in metrics["misclassified"]}
    truth = {f: i["class"] for i in json.loads((out / "split.json").read_text())["items"]
             for f in [i["file"]]}  # fmt: skip
    for p in preds:
        name = Path(p["file"]).name
        assert p["class"] == wrong.get(name, truth[name])

    # bench speed --checkpoint exports with the checkpoint's own preprocessing (it used to
    # write mean 0.5, std 0.25, 3 channels): the same answers as the run's export.
    ckpt = out / row["checkpoint"]
    argv = ["speed", "--models", "shufflenet_v2_x0_5", "--checkpoint", str(ckpt), "--out",
            str(tmp_path / "speed"), "--speed-min-seconds", "0", "--speed-min-iters", "2",
            "--variants", "int8", "--calibration-images", "8"]  # fmt: skip
    assert main(argv + ["--data", str(data)]) == 0
    # ...and, given the run's dataset, judged on the run's own 12 test images as bench run is
    sped_results = json.loads((tmp_path / "speed" / "results.json").read_text())
    for r in sped_results["deployment"]:
        if not r.get("skipped"):
            assert r["fidelity_source"].startswith("test split") and r["fidelity_images"] == 12
            assert r["passed"] in (True, False) and r["test_accuracy"] is not None
    ort_fp32 = next(r for r in sped_results["deployment"] if r["variant"] == "ort_fp32")
    assert ort_fp32["test_accuracy"] == exp["onnx_accuracy"]  # the same file, the same images
    # another dataset than the checkpoint's is refused, naming the flag
    other = make_neu_flat(tmp_path / "other", per_class=7, size=(40, 40))
    assert main(argv + ["--data", str(other)]) == 2
    refused = capsys.readouterr().out
    assert "--data" in refused and "dataset hash" in refused
    sped = tmp_path / "speed" / "exports" / "shufflenet_v2_x0_5.onnx"
    again = Classifier(sped).info
    assert (again.channels, again.mean, again.std) == (info.channels, info.mean, info.std)
    assert (again.classes, again.image_size, again.split_hash) == (
        info.classes, info.image_size, info.split_hash,
    )  # fmt: skip
    assert again.test_accuracy == row["test_accuracy"]
    # The run's export carries the temperature fitted on validation, bench speed's does not:
    # its probabilities, re-tempered (softmax of log q / T), are the run export's.
    import numpy as np

    t = Classifier(out / exp["path"]).temperature
    for p, q in zip(preds, _predict(sped, [data / f for f in test]), strict=True):
        assert p["class"] == q["class"]
        z = np.log(np.maximum([q["probabilities"][c] for c in p["probabilities"]], 1e-30)) / t
        q_t = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
        # same fp32 graph twice: within parity's logit tolerance (softmax halves it)
        assert max(abs(a - b) for a, b in zip(p["probabilities"].values(), q_t, strict=True)) < 5e-4


def _predict(model, files):
    proc = subprocess.run(
        [sys.executable, "-m", "exports", "predict", str(model), "--json"] + [str(f) for f in files],
        capture_output=True, text=True, cwd=REPO,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return [json.loads(line) for line in proc.stdout.splitlines()]


@pytest.mark.slow
def test_bench_speed_writes_results_with_both_runtimes(tmp_path, capsys):
    argv = [
        "speed", "--models", "shufflenet_v2_x0_5", "--image-size", "32", "--out",
        str(tmp_path), "--speed-min-seconds", "0", "--speed-min-iters", "3", "--variants", "fp32",
    ]  # fmt: skip
    assert main(argv) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    runtimes = {(r["runtime"], r["provider"]) for r in results["speed"]}
    assert runtimes == {("torch", "cpu"), ("onnxruntime", "cpu")}
    assert all(r["rounds"] == 3 and r["p50_spread_pct"] is not None for r in results["speed"])
    (ratio,) = results["speed_ratios"]
    assert ratio["latency_speedup_b1"] > 0 and ratio["throughput_ratio_b32"] > 0
    assert "ONNX Runtime vs PyTorch" in capsys.readouterr().out


def test_parity_failure_fails_the_run_and_shows_in_the_report(tmp_path, monkeypatch, capsys):
    import exports.parity as parity

    real = parity.check_parity

    def broken(*args, **kwargs):
        report = real(*args, **kwargs)
        report.passed = False
        report.top1_disagreements = 3
        report.failures = ["values: 3 top-1 disagreements (simulated)"]
        return report

    monkeypatch.setattr(parity, "check_parity", broken)
    data = make_neu_flat(tmp_path / "NEU-CLS", per_class=8, size=(40, 40))
    argv = [
        "run", "--models", "shufflenet_v2_x0_5", "--data", str(data), "--out",
        str(tmp_path / "run"), "--weights", "none", "--image-size", "32", "--epochs", "1",
        "--no-speed", "--export", "best",
    ]  # fmt: skip
    assert main(argv) == 1
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["status"] == "failed"
    (exp,) = results["exports"]
    assert exp["parity_passed"] is False and exp["top1_disagreements"] == 3
    assert "FAIL" in (tmp_path / "run" / "report.md").read_text()
    assert "PARITY FAILED" in capsys.readouterr().out


def test_bench_speed_refuses_a_gpu_provider_that_falls_back(tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the fallback cannot be provoked")
    argv = [
        "speed", "--models", "shufflenet_v2_x0_5", "--image-size", "32", "--out",
        str(tmp_path), "--ort-providers", "cpu,cuda",
    ]  # fmt: skip
    assert main(argv) == 2
    out = capsys.readouterr().out
    assert "cuda" in out.lower() and "CPUExecutionProvider" in out
    assert main(["speed", "--ort-providers", "gpu", "--out", str(tmp_path)]) == 2
    assert "choose from" in capsys.readouterr().out


def test_speed_step_files_of_models_not_exported_are_deleted(tmp_path):
    from types import SimpleNamespace

    from bench.release import export as exporting

    staged = tmp_path / "variants" / "m" / "m.onnx"
    staged.parent.mkdir(parents=True)
    staged.write_bytes(b"onnx")
    ok = {"status": "ok", "model": "m", "seed": 0, "accuracy_split": "test",
          "test_accuracy": 0.9, "test_correct": 9, "test_images": 10, "val_accuracy": 0.9,
          "val_loss": 0.3, "test_macro_f1": 0.9, "train_seconds": 1.0,
          "pipeline_efficiency": 0.9, "train_img_s": 10.0}  # fmt: skip
    from bench.summary import summarize_models

    results = {"rows": [ok], "summary": summarize_models([ok]), "speed": []}
    opts = SimpleNamespace(export="none", speed=False)
    exporting.export_and_verify(results, tmp_path, None, opts, None, staged={"m": staged})
    assert results["export_selection"] == {"how": "none", "models": []}
    assert not staged.exists()  # a working file of the speed step, not an export


def test_a_run_killed_after_the_speed_step_keeps_its_rows_when_resumed(
    tmp_path, monkeypatch, capsys
):
    from bench.release import export as exporting

    argv, _, out = quick_run_argv(tmp_path)
    argv += ["--robustness", "none", "--no-explain"]

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(exporting, "export_and_verify", killed)
    assert main(argv) == 130  # Ctrl-C while exporting: the speed step had finished
    first = json.loads((out / "results.json").read_text())
    assert first["sweep"]["speed_models_kept"] == [] and first["deployment"]
    monkeypatch.undo()
    capsys.readouterr()

    assert main(argv) == 0
    printed = capsys.readouterr().out
    again = json.loads((out / "results.json").read_text())
    assert again["sweep"]["speed_models_kept"] == ["shufflenet_v2_x0_5"]
    assert "kept from an earlier attempt of this run" in printed
    assert again["deployment"] == first["deployment"]
    assert again["speed"] == first["speed"]
    assert again["int8_choice"] == first["int8_choice"]
    assert (
        "rows of shufflenet_v2_x0_5 kept from an earlier invocation"
        in (out / "report.md").read_text()
    )
    (exp,) = again["exports"]
    assert exp["parity_passed"] and "the speed step's export of this checkpoint" in printed


def test_earlier_speed_rows_are_reused_only_under_the_same_key_and_files(tmp_path):
    from bench.measure.step import earlier_measurement, save_measurement

    work = tmp_path / "variants" / "m"
    work.mkdir(parents=True)
    (work / "m.onnx").write_bytes(b"fp32")
    (work / "m.int8.onnx").write_bytes(b"int8")
    key = {"checkpoint_sha256": "ab", "settings": "rounds=3"}
    save_measurement(work, key, [{"variant": "ort_fp32"}], [{"variant": "ort_int8"}])
    assert earlier_measurement(work, dict(key))["deployment"] == [{"variant": "ort_int8"}]
    assert earlier_measurement(work, {**key, "settings": "rounds=2"}) is None  # other flags
    assert earlier_measurement(work, {**key, "checkpoint_sha256": "cd"}) is None  # retrained
    (work / "m.int8.onnx").write_bytes(b"int8 rewritten")  # a file changed since
    assert earlier_measurement(work, key) is None
    (work / "m.int8.onnx").unlink()  # or went missing
    assert earlier_measurement(work, key) is None
    (work / "measured.json").write_text("{trunc")  # a torn file is ignored, never an error
    assert earlier_measurement(work, key) is None


def test_the_recommended_record_has_one_set_of_keys_whatever_the_variant(tmp_path):
    """Which variant is recommended depends on the machine's speed; the keys of its record in
    results.json must not."""
    import shutil

    import torch

    from bench.release.export import export_recommended
    from tests.conftest import export_plain_onnx

    (tmp_path / "exports").mkdir()
    fp32 = export_plain_onnx(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(48, 6)),
                             tmp_path / "exports" / "m.onnx", 4)  # fmt: skip
    (tmp_path / "variants" / "m").mkdir(parents=True)
    shutil.copyfile(fp32, tmp_path / "variants" / "m" / "m.int8.onnx")
    (tmp_path / "m" / "seed0").mkdir(parents=True)
    (tmp_path / "m" / "seed0" / "best.pt").write_bytes(b"\0" * 1000)
    fid = {"runtime": "x", "agreement": 1.0, "test_accuracy": 0.9, "accuracy_delta_pp": 0.0,
           "max_abs_logit_diff": 0.0, "fidelity_images": 10, "fidelity_source": "test split",
           "fidelity_rule": "r", "latency_ms_p50": 1.0, "speedup_vs_torch_fp32": 1.0,
           "passed": True}  # fmt: skip
    variants = {"torch_bf16": ("torch", "bf16"), "ort_fp32": ("onnx:fp32", "fp32"),
                "ort_int8": ("onnx:int8", "int8")}  # fmt: skip
    deployment = [{**fid, "model": "m", "variant": v, "precision": p}
                  for v, (_, p) in variants.items()]  # fmt: skip
    ok = {"status": "ok", "model": "m", "seed": 0, "val_accuracy": 0.9, "test_accuracy": 0.9,
          "checkpoint": "m/seed0/best.pt", "val_loss": 0.1}  # fmt: skip
    results = {"deployment": deployment, "rows": [ok], "environment": {}}
    records = {
        v: export_recommended({"variant": v, "artifact": a}, "m", tmp_path, fp32, results)
        for v, (a, _) in variants.items()
    }
    assert {r["kind"] for r in records.values()} == {"checkpoint", "onnx"}
    assert records["torch_bf16"]["size_mb"] == 0.001 and records["ort_int8"]["precision"] == "int8"
    keys = {v: set(r) for v, r in records.items()}
    assert keys["torch_bf16"] == keys["ort_fp32"] == keys["ort_int8"], keys
