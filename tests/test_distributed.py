"""torchrun/DDP training: a 2-process gloo run is the same experiment as one process, a dead
rank ends the run within the collective timeout, and the run then resumes."""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from bench.config import Recipe
from bench.train.distributed import Dist

S = 24
LR = 1e-3


def _tiny_convnet(weights=None) -> nn.Module:
    # No BatchNorm: on CPU/gloo BN statistics are per rank, so only a BN-free net can be
    # compared weight for weight with a single process.
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, stride=2),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(16, 1000),
    )


def _register():
    from bench.registry import list_models, register_model

    if "tiny_convnet" not in list_models():
        register_model("tiny_convnet")(_tiny_convnet)


def _train(data: Path, out: Path, d: Dist, epochs: int = 1, amp: str = "off") -> dict:
    from bench.train.folds import FoldData
    from bench.train.loop import train_one
    from neu.dataset import load_dataset
    from neu.split import make_split

    _register()
    ds = load_dataset(data, image_size=S, cache_dir=False)
    split = make_split(ds, seed=0, val_fraction=0.2, test_fraction=0.2, limit_per_class=None)
    # batch 7 does not divide over 2 ranks: rank 0 takes 4 samples, rank 1 takes 3.
    # amp is pinned: the default `auto` means bf16 on a CPU with AVX512_BF16/AMX and fp32
    # elsewhere, and each precision needs its own tolerance below.
    recipe = Recipe(image_size=S, batch_size=7, epochs=epochs, lr=LR, channels_last=False, amp=amp)
    ctx = FoldData(ds, split, recipe, torch.device("cpu"), deterministic=True, dist=d)
    return train_one("tiny_convnet", 0, ctx, out, weights="none", recipe_hash="t")


def _worker(rank, world, data, out, init, epochs=1, die_on_eval_call=None, amp="off"):
    # 10 s bounds how long the dying-rank test waits; the others get a margin for a loaded CI
    # machine, where a rank saving its checkpoint can keep the other waiting for seconds.
    timeout = dt.timedelta(seconds=10 if die_on_eval_call is not None else 120)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world, timeout=timeout)
    torch.set_num_threads(1)
    d = Dist(rank=rank, world_size=world, local_rank=rank, backend="gloo")
    if die_on_eval_call is not None and rank == 1:
        import bench.train.loop as bt

        real, calls = bt.evaluate, []

        def dying_evaluate(*a, **k):  # rank 1 dies at its n-th evaluation
            calls.append(1)
            if len(calls) == die_on_eval_call:
                os._exit(3)
            return real(*a, **k)

        bt.evaluate = dying_evaluate
    try:
        _train(Path(data), Path(out), d, epochs=epochs, amp=amp)
    except Exception as e:
        Path(out, f"error-rank{rank}.txt").write_text(f"{type(e).__name__}: {e}")
        raise
    finally:
        dist.destroy_process_group()


def _single_and_ddp(data: Path, tmp_path: Path, amp: str):
    single = _train(data, tmp_path / "single", Dist(), amp=amp)
    init = f"file://{tmp_path / 'rdzv'}"
    mp.spawn(_worker, args=(2, str(data), str(tmp_path / "ddp"), init, 1, None, amp), nprocs=2)
    a = torch.load(tmp_path / "single" / "best.pt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "ddp" / "best.pt", weights_only=True)["state_dict"]
    assert a.keys() == b.keys()
    return single, a, b


def _assert_same_evaluation(single: dict, tmp_path: Path) -> None:
    assert single["val_images"] > 0
    ddp_row = json.loads((tmp_path / "ddp" / "metrics.json").read_text())["row"]
    # Evaluation covers every validation image exactly once across the two shards.
    assert ddp_row["val_images"] == single["val_images"]
    assert ddp_row["amp"] == single["amp"]
    # The held-out test split is scored the same way: each test image once, in split order.
    assert ddp_row["accuracy_split"] == single["accuracy_split"] == "test"
    assert ddp_row["test_images"] == single["test_images"] > 0
    ddp_pred = json.loads((tmp_path / "ddp" / "metrics.json").read_text())["predictions"]
    one_pred = json.loads((tmp_path / "single" / "metrics.json").read_text())["predictions"]
    assert ddp_pred["files"] == one_pred["files"]
    assert len(set(ddp_pred["files"])) == len(ddp_pred["files"]) == single["test_images"]


@pytest.mark.isa
def test_two_gloo_ranks_train_the_same_weights_as_one_process(tiny_neu, tmp_path):
    single, a, b = _single_and_ddp(tiny_neu, tmp_path, amp="off")
    assert single["amp"] == "fp32"
    # Same data, crops and steps; only the order of fp32 sums differs (two shards' gradients
    # summed by all-reduce vs one batch), ~1e-7 relative per step, and Adam moves each weight
    # by at most ~lr = 1e-3 per step: a few steps stay far inside 1e-5.
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-5, msg=k)
    _assert_same_evaluation(single, tmp_path)
    ddp_row = json.loads((tmp_path / "ddp" / "metrics.json").read_text())["row"]
    assert ddp_row["val_accuracy"] == pytest.approx(single["val_accuracy"])
    assert ddp_row["test_accuracy"] == pytest.approx(single["test_accuracy"])


@pytest.mark.isa
def test_two_gloo_ranks_match_one_process_under_bf16_autocast(tiny_neu, tmp_path):
    """DDP under the precision `--amp auto` picks on bf16 hardware (emulated elsewhere)."""
    single, a, b = _single_and_ddp(tiny_neu, tmp_path, amp="bf16")
    assert single["amp"] == "bf16"
    history = json.loads((tmp_path / "single" / "metrics.json").read_text())["history"]
    steps = sum(h["steps"] for h in history)
    # bf16 keeps 8 significant bits (unit roundoff u = 2^-8). One process rounds the
    # weight gradient of all 7 samples once; two ranks round their 4- and 3-sample parts, then
    # sum them in fp32: the gradients differ by ~2u relative. Adam's step is ~lr * m / sqrt(v),
    # so each step differs by ~2u * lr where the gradient is clearly nonzero; over `steps`
    # steps the weights differ by at most steps * lr * 2u, allowed 4x for the feedback of
    # earlier differences through the forward pass. Where a gradient is ~0 its sign can flip
    # between the two runs, moving that weight by up to 2 * lr per step; those weights are few,
    # so at least 99% of the weights must meet the bound and none may exceed Adam's 2*lr*steps.
    u = 2.0**-8
    bound = 4 * steps * LR * 2 * u
    diffs = torch.cat([(b[k].float() - a[k].float()).abs().flatten() for k in a])
    within = (diffs <= bound).float().mean().item()
    assert within >= 0.99, f"only {within:.2%} of weights within {bound:.2e} (steps {steps})"
    assert diffs.max().item() <= 2 * LR * steps * 1.01
    # Not vacuous: training moved the weights far more than the two runs differ.
    from bench.registry import build_model
    from bench.train.loop import _derive_seed

    torch.manual_seed(_derive_seed(0, "init"))
    init = build_model("tiny_convnet", num_classes=6, weights="none").state_dict()
    moved = torch.cat([(a[k].float() - init[k].float()).flatten() for k in a]).norm()
    assert diffs.norm() < 0.05 * moved
    _assert_same_evaluation(single, tmp_path)


@pytest.mark.slow
def test_a_dead_rank_ends_the_run_within_the_timeout_and_it_resumes(tiny_neu, tmp_path):
    out = tmp_path / "ddp"
    ctx = mp.get_context("spawn")
    init = f"file://{tmp_path / 'rdzv1'}"
    # Rank 1 dies in epoch 2's validation, after epoch 1 was checkpointed.
    procs = [
        ctx.Process(target=_worker, args=(r, 2, str(tiny_neu), str(out), init, 2, 2))
        for r in range(2)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)  # the collective timeout is 10 s
    assert all(p.exitcode is not None for p in procs), "a rank hung past the timeout"
    assert procs[1].exitcode == 3 and procs[0].exitcode != 0
    error = (out / "error-rank0.txt").read_text()
    assert "DistBackendError" in error or "timed out" in error.lower() or "Connection" in error
    assert torch.load(out / "last.pt", weights_only=True)["epoch"] == 1
    # The same command again resumes after epoch 1 and finishes.
    mp.spawn(
        _worker, args=(2, str(tiny_neu), str(out), f"file://{tmp_path / 'rdzv2'}", 2), nprocs=2
    )
    row = json.loads((out / "metrics.json").read_text())["row"]
    assert row["epochs"] == 2
