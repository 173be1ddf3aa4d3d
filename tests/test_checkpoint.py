"""The checkpoint format (exports.checkpoint): written by bench.train.loop, read by bench and exports."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from exports.checkpoint import (
    META_KEYS,
    build_architecture,
    load_checkpoint,
    make_checkpoint,
    read_checkpoint,
)

REPO = Path(__file__).resolve().parents[1]


def _meta(**over):
    meta = {
        "model": "shufflenet_v2_x0_5", "classes": list("abcdef"), "num_classes": 6,
        "image_size": 32, "channels": 3, "mean": [0.4] * 3, "std": [0.2] * 3,
        "val_accuracy": 0.5, "dataset_hash": "d" * 8, "split_hash": "s" * 8, "split": {},
        "weights": "none", "seed": 0, "epoch": 1,
    }  # fmt: skip
    return {**meta, **over}


def test_round_trip_rebuilds_the_same_network(tmp_path):
    torch.manual_seed(0)
    model = build_architecture("shufflenet_v2_x0_5", num_classes=6).eval()
    path = tmp_path / "best.pt"
    torch.save(make_checkpoint(model, **_meta()), path)

    loaded, meta = load_checkpoint(path)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    assert not loaded.training
    assert "state_dict" not in meta and {k: meta[k] for k in META_KEYS} == _meta()
    assert loaded(x).shape == (2, 6)  # 6 classes, not ImageNet's 1000


def test_make_checkpoint_refuses_incomplete_or_unknown_metadata():
    model = torch.nn.Linear(2, 2)
    meta = _meta()
    del meta["mean"]
    with pytest.raises(TypeError, match="missing \\['mean'\\]"):
        make_checkpoint(model, **meta)
    with pytest.raises(TypeError, match="unknown \\['colour'\\]"):
        make_checkpoint(model, **_meta(), colour="blue")


def test_reading_something_else_names_the_file_and_the_fix(tmp_path):
    missing = tmp_path / "nope.pt"
    with pytest.raises(FileNotFoundError, match="nope.pt.*best.pt"):
        read_checkpoint(missing)
    plain = tmp_path / "state.pt"
    torch.save({"weight": torch.zeros(2)}, plain)
    with pytest.raises(ValueError, match="state.pt is not a neu-bench checkpoint.*best.pt"):
        read_checkpoint(plain)


def test_exports_rebuilds_a_checkpoint_without_the_bench_package(tmp_path):
    """exports verify --checkpoint needs no bench: bench is made unimportable in a subprocess."""
    model = build_architecture("shufflenet_v2_x0_5", num_classes=6)
    path = tmp_path / "best.pt"
    torch.save(make_checkpoint(model, **_meta()), path)
    code = (
        "import sys; sys.modules['bench'] = None\n"
        "from exports.checkpoint import load_checkpoint\n"
        f"m, meta = load_checkpoint({str(path)!r})\n"
        "print(meta['model'], m.fc.out_features)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert out.stdout.split() == ["shufflenet_v2_x0_5", "6"]


def test_bench_registry_rebuilds_a_registered_model_with_its_own_builder(tmp_path, monkeypatch):
    from bench import registry

    built = []

    def tiny(weights=None):
        built.append(weights)
        return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 1000))

    monkeypatch.setitem(registry._REGISTRY, "tiny_ckpt_net", tiny)
    model = registry.build_model("tiny_ckpt_net", num_classes=6)
    path = tmp_path / "best.pt"
    torch.save(make_checkpoint(model, **_meta(model="tiny_ckpt_net")), path)
    loaded, meta = registry.load_checkpoint(path)
    assert built == [None, None] and loaded[1].out_features == 6
    assert meta["model"] == "tiny_ckpt_net"
