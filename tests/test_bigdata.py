"""Data larger than memory: placement decision, and a dataset bigger than the memory budget
trains end to end from the decode cache's memory map with flat peak memory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from bench.config import ConfigError, RunOptions
from bench.train.data import decide_placement
from neu import NEU_CODES
from tests.conftest import write_image

ROOT = Path(__file__).resolve().parents[1]
MB = 2**20


def make_big_dataset(root: Path, per_class: int, size: int) -> Path:
    """A NEU-CLS-style flat folder of distinct random gray BMPs, size x size pixels."""
    for ci, code in enumerate(NEU_CODES):
        for k in range(per_class):
            write_image(root / f"{code}_{k + 1}.bmp", size=(size, size), seed=ci * 100_000 + k)
    return root


def test_placement_follows_size_and_budget():
    cpu = torch.device("cpu")
    assert decide_placement(10 * MB, cpu, "auto", memory_budget_mb=64)[0] == "host"
    placement, reason = decide_placement(40 * MB, cpu, "auto", memory_budget_mb=64)
    assert placement == "mmap" and "--memory-budget-mb 64" in reason
    assert decide_placement(1, cpu, "mmap")[0] == "mmap"
    placement, reason = decide_placement(1, cpu, "device")
    assert placement == "host" and "on CPU" in reason


def test_placement_flags_are_validated():
    with pytest.raises(ConfigError, match="--data-placement"):
        RunOptions(data_placement="disk")
    with pytest.raises(ConfigError, match="--memory-budget-mb"):
        RunOptions(memory_budget_mb=0)


# Runs `bench run` in a fresh interpreter with a tiny registered model and prints the peak
# resident memory (VmHWM): the same script on a tiny dataset is the interpreter + torch
# baseline.
SCRIPT = textwrap.dedent(
    """
    import json, sys
    from torch import nn
    from bench.registry import register_model

    @register_model("tinynet")
    def tinynet(weights=None):
        return nn.Sequential(
            nn.Conv2d(3, 8, 5, stride=4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
            nn.Linear(8, 1000),
        )

    from bench.__main__ import main
    code = main(sys.argv[1:])
    hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM:")][0].split()[1]
    print(json.dumps({"code": code, "vmhwm_kb": int(hwm)}))
    """
)


def _train(tmp_path: Path, data: Path, name: str, budget_mb: int) -> dict:
    out = tmp_path / f"out-{name}"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "NEU_CACHE_DIR": str(tmp_path / "cache")}
    args = [
        "run", "--models", "tinynet", "--data", str(data), "--epochs", "1",
        "--image-size", "128", "--weights", "none", "--device", "cpu", "--threads", "1",
        "--no-speed", "--export", "none", "--memory-budget-mb", str(budget_mb), "--out", str(out),
    ]  # fmt: skip
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, *args], env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    last = json.loads(proc.stdout.strip().splitlines()[-1])
    assert last["code"] == 0, proc.stdout[-3000:]
    return {**last, "results": json.loads((out / "results.json").read_text()), "log": proc.stdout}


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc (Linux)")
def test_dataset_larger_than_budget_trains_from_the_map_in_flat_memory(tmp_path):
    budget_mb = 32
    big = make_big_dataset(tmp_path / "big", per_class=400, size=128)  # 37.5 MB decoded
    tiny = make_big_dataset(tmp_path / "tiny", per_class=60, size=128)  # 5.6 MB decoded

    baseline = _train(tmp_path, tiny, "tiny", budget_mb)
    run = _train(tmp_path, big, "big", budget_mb)

    placement = run["results"]["data_placement"]
    assert placement["placement"] == "mmap" and placement["images_mb"] > budget_mb
    assert "data placement: mmap" in run["log"]
    assert baseline["results"]["data_placement"]["placement"] == "host"
    row = run["results"]["rows"][0]
    assert row["status"] == "ok" and row["val_images"] > 0
    grown_mb = (run["vmhwm_kb"] - baseline["vmhwm_kb"]) / 1024
    # 37.5 MB of images, decoded, counted and trained on, cost less than the budget.
    assert grown_mb < budget_mb, (grown_mb, run["vmhwm_kb"], baseline["vmhwm_kb"])

    # `neu inspect` reports the big dataset normally (from the same cache).
    proc = subprocess.run(
        [sys.executable, "-m", "neu", "inspect", str(big), "--json", "--image-size", "128"],
        env={**os.environ, "PYTHONPATH": str(ROOT), "NEU_CACHE_DIR": str(tmp_path / "cache")},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout)
    assert report["usable"] and report["num_images"] == 2400
    assert set(report["classes"].values()) == {400}


def test_folds_share_one_placement_of_the_images(tmp_path):
    # --folds K builds K Contexts over one dataset: the images must be placed once (not K
    # copies in RAM or on the GPU) and every fold must read them from the same place.
    from bench.config import Recipe
    from bench.train.folds import FoldData
    from neu.dataset import load_dataset
    from neu.split import make_split

    ds = load_dataset(make_big_dataset(tmp_path / "d", 6, 16), image_size=16, cache_dir=False)
    recipe = Recipe(image_size=16, batch_size=4, epochs=1)
    cpu = torch.device("cpu")
    first = FoldData(ds, make_split(ds, folds=3, fold=0), recipe, cpu, data_placement="host")
    ctxs = [first] + [
        FoldData(ds, make_split(ds, folds=3, fold=k), recipe, cpu, images_from=first)
        for k in (1, 2)
    ]
    assert first.images.data_ptr() != ds.images.data_ptr()  # host: placed (copied) once
    for c in ctxs[1:]:
        assert c.placement == "host" and c.images is first.images
    # Different folds, different test images, gathered from the shared copy.
    assert set(ctxs[1].test_idx.tolist()).isdisjoint(ctxs[2].test_idx.tolist())
    raw, _ = next(ctxs[2].batches(ctxs[2].test_idx, 4))
    assert torch.equal(raw.cpu(), ds.images[ctxs[2].test_idx[:4]])
