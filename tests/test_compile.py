"""--compile: inductor on a tiny model on CPU, compile time apart, eager fallback with a reason."""

import json

import pytest
import torch
from torch import nn

import bench.cli.run as bench_run
import bench.train.loop as bench_train
from bench.ui import NullReporter
from tests.conftest import make_neu_flat
from tests.test_train import MODEL, tiny_opts, tiny_recipe


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_neu_flat(tmp_path_factory.mktemp("d") / "NEU-CLS", per_class=10, size=(40, 40))


def tiny_net(name, num_classes, weights):
    # Small enough that inductor compiles forward+backward in seconds on 2 cores.
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, num_classes),
    )


def _run(data, out, monkeypatch, **opts):
    monkeypatch.setattr(bench_train, "build_model", tiny_net)
    recipe = tiny_recipe(epochs=2)
    return bench_run.run(recipe, tiny_opts(data, out, **opts), NullReporter())


@pytest.mark.slow
def test_compiled_training_saves_plain_checkpoints_and_reports_compile_time(
    data, tmp_path, monkeypatch
):
    eager, _ = _run(data, tmp_path / "eager", monkeypatch)
    results, code = _run(data, tmp_path / "compiled", monkeypatch, compile=True)
    assert code == 0
    (row,) = results["rows"]
    assert row["compile"] is True and row["compile_error"] is None, row["compile_error"]
    assert row["compile_seconds"] > 0
    # Compilation happened before the clock of epoch 1 started, not inside it.
    history = json.loads((tmp_path / "compiled" / MODEL / "seed0" / "metrics.json").read_text())
    assert sum(h["train_seconds"] for h in history["history"]) < row["compile_seconds"] * 5
    state = torch.load(tmp_path / "compiled" / MODEL / "seed0" / "best.pt", weights_only=True)
    assert not [k for k in state["state_dict"] if "_orig_mod" in k]
    # Same recipe, same data: compiled and eager learn the same thing (fp32 reassociation only).
    (e,) = eager["rows"]
    assert row["val_loss"] == pytest.approx(e["val_loss"], rel=1e-3, abs=1e-4)
    assert "torch.compile" in (tmp_path / "compiled" / "report.md").read_text()


def test_compile_failure_falls_back_to_eager_with_the_reason(data, tmp_path, monkeypatch):
    class NoCompiler(nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, x):
            raise RuntimeError("InductorError: no C++ compiler found (simulated)\nmore")

    monkeypatch.setattr(torch, "compile", lambda model, **kw: NoCompiler(model))
    results, code = _run(data, tmp_path, monkeypatch, compile=True)
    assert code == 0
    (row,) = results["rows"]
    assert row["status"] == "ok" and row["compile"] is False
    assert row["compile_error"] == "RuntimeError: InductorError: no C++ compiler found (simulated)"
    assert row["compile_seconds"] >= 0
    assert "fell back to eager" in (tmp_path / "report.md").read_text()


@pytest.mark.needs_cuda
def test_compiled_training_on_cuda(data, tmp_path, monkeypatch):
    results, code = _run(data, tmp_path, monkeypatch, compile=True, device="cuda")
    assert code == 0
    (row,) = results["rows"]
    assert row["compile"] is True and row["compile_error"] is None, row["compile_error"]
    assert row["amp"] == results["precision"]["amp"] != "fp32"
    state = torch.load(tmp_path / MODEL / "seed0" / "best.pt", weights_only=True)
    assert not [k for k in state["state_dict"] if "_orig_mod" in k]
