"""bench train-speed: rows per model and variant, ratios against fp32 from the same run."""

import json

import pytest
import torch

import bench.measure.trainspeed as ts
from bench.__main__ import main
from bench.amp import resolve_precision
from bench.config import ConfigError
from tests.test_compile import tiny_net


@pytest.mark.isa
def test_rows_ratios_and_isa(tmp_path, monkeypatch):
    monkeypatch.setattr(ts, "build_model", tiny_net)
    out = tmp_path / "ts.json"
    opts = ts.TrainSpeedOptions(
        models="resnet18", precisions="auto,bf16", steps=2, warmup_steps=0, batch_size=4,
        image_size=16, device="cpu", out=str(out),
    )  # fmt: skip
    results = ts.train_speed(opts, log=lambda m: None)
    rows = {r["variant"]: r for r in results["rows"]}
    assert list(rows) == ["fp32", "auto", "bf16"]  # fp32 is added: ratios need it
    assert rows["fp32"]["vs_fp32"] == 1.0
    auto = resolve_precision(torch.device("cpu"), "auto")
    assert (rows["auto"]["precision"], rows["auto"]["amp_reason"]) == (auto.name, auto.reason)
    assert rows["bf16"]["precision"] == "bf16"
    for r in rows.values():
        assert r["steps"] == 2 and r["train_img_s"] > 0 and r["error"] is None
        assert r["vs_fp32"] == pytest.approx(r["train_img_s"] / rows["fp32"]["train_img_s"])
    saved = json.loads(out.read_text())
    assert saved["environment"]["cpu_isa"]["machine"] and saved["environment"]["cpu_isa_label"]
    assert saved["rows"] == results["rows"]


def test_compile_flag_adds_compiled_variants():
    opts = ts.TrainSpeedOptions(precisions="fp32,auto", compile=True)
    assert opts.variants == ["fp32", "auto", "fp32+compile", "auto+compile"]


@pytest.mark.parametrize("bad", ["int8", "auto+fast", ","])
def test_bad_variants_name_the_flag(bad):
    with pytest.raises(ConfigError, match="--precisions"):
        ts.TrainSpeedOptions(precisions=bad)


def test_cli_rejects_bad_steps(capsys):
    assert main(["train-speed", "--steps", "0"]) == 2
    assert "--steps" in capsys.readouterr().out
