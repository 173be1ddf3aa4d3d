"""`bench run --tensorboard`: event files with the expected curves, or a clear error without it."""

from __future__ import annotations

import csv
import sys

import pytest

from bench.__main__ import main
from tests.conftest import make_neu_flat

TINY_RUN = [
    "run", "--models", "shufflenet_v2_x0_5", "--weights", "none", "--image-size", "32",
    "--epochs", "2", "--no-speed", "--export", "none", "--batch-size", "8", "--threads", "1",
    "--speed-min-seconds", "0", "--speed-min-iters", "2",
]  # fmt: skip


def _scalars(logdir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_reporter_writes_one_run_per_model_and_seed_and_forwards_everything(tmp_path):
    pytest.importorskip("tensorboard")
    from bench.train.tblog import TAGS, TensorBoardReporter
    from bench.ui import NullReporter

    class Recorder(NullReporter):
        estimate = None

        def __init__(self):
            self.calls = []

        def __getattribute__(self, name):
            if name in ("start_model", "epoch_end", "end_model", "batch", "close"):
                object.__getattribute__(self, "calls").append(name)
            return object.__getattribute__(self, name)

    inner = Recorder()
    tb = TensorBoardReporter(inner, tmp_path / "tb")
    tb.estimate = "est"
    assert inner.estimate == "est"  # set on the terminal reporter, where it is used
    for model in ("a", "b"):
        for seed in (0, 1):
            tb.start_model(model, seed, epochs=3, batches=1)
            for epoch in (1, 2, 3):
                tb.batch(1, elapsed=0.1)  # not defined by the wrapper: forwarded as is
                record = {f: 0.5 + epoch + seed for f in TAGS} | {"epoch": epoch}
                tb.epoch_end(record)
            tb.end_model({"model": model, "seed": seed})
    tb.close()
    assert inner.calls.count("epoch_end") == 12 and inner.calls.count("batch") == 12
    assert inner.calls[-1] == "close"
    for model in ("a", "b"):
        for seed in (0, 1):
            got = _scalars(tmp_path / "tb" / model / f"seed{seed}")
            assert set(got) == set(TAGS.values())
            assert got["loss/val"] == [(e, 0.5 + e + seed) for e in (1, 2, 3)]


def test_bench_run_tensorboard_curves_match_the_training_history(tmp_path):
    pytest.importorskip("tensorboard")
    from bench.train.tblog import TAGS

    data = make_neu_flat(tmp_path / "NEU-CLS", per_class=6, size=(40, 40))
    out = tmp_path / "run"
    assert main([*TINY_RUN, "--data", str(data), "--out", str(out), "--tensorboard"]) == 0
    logdir = out / "tensorboard" / "shufflenet_v2_x0_5" / "seed0"
    assert list(logdir.glob("events.out.tfevents.*"))
    got = _scalars(logdir)
    assert set(got) == set(TAGS.values())
    with open(out / "shufflenet_v2_x0_5" / "seed0" / "history.csv") as f:
        history = list(csv.DictReader(f))
    for field, tag in TAGS.items():
        assert [step for step, _ in got[tag]] == [1, 2]
        # float32 in the event file vs the float64 written to history.csv.
        assert [v for _, v in got[tag]] == pytest.approx(
            [float(h[field]) for h in history], rel=1e-6
        )


def test_missing_tensorboard_is_a_clear_error_before_any_work(tmp_path, monkeypatch, capsys):
    # A module set to None in sys.modules raises ImportError on import: TensorBoard "absent".
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    data = make_neu_flat(tmp_path / "NEU-CLS", per_class=6, size=(40, 40))
    out = tmp_path / "run"
    assert main([*TINY_RUN, "--data", str(data), "--out", str(out), "--tensorboard"]) == 2
    printed = capsys.readouterr().out
    assert "--tensorboard needs the tensorboard package" in printed
    assert "pip install 'neu-bench[tensorboard]'" in printed
    assert not out.exists()  # nothing loaded, nothing trained
