"""Train and evaluate one (model, seed) with the recipe: `train_one_epoch`, `evaluate`, and
`train_one`, which drives them epoch by epoch. Read top to bottom.

Resumable by construction (bench.train.checkpoints): every epoch ends with an atomic `last.pt`,
and every epoch re-seeds its own RNGs from (seed, epoch), so an epoch replayed after a crash
draws the same crops, flips and order as it would have. `metrics.json` is written last: its
presence means "done, never retrain".
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from bench.config import Recipe
from bench.registry import build_model, head_parameter_names
from bench.train.checkpoints import RunFolder, best_checkpoint
from bench.train.compile import NOT_COMPILED, compile_model
from bench.train.distributed import Dist, wrap_model
from bench.train.folds import FoldData
from bench.train.scores import accuracy, result_row, score
from bench.train.timing import StepClock, pipeline_figures


def _derive_seed(*parts) -> int:
    # Stable across processes and machines (unlike hash()).
    digest = hashlib.sha256(":".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def param_groups(model: nn.Module, lr: float, head_lr: float) -> list[dict]:
    head = head_parameter_names(model)
    named = list(model.named_parameters())
    return [
        {"name": "backbone", "params": [p for n, p in named if n not in head], "lr": lr},
        {"name": "head", "params": [p for n, p in named if n in head], "lr": head_lr},
    ]


def make_optimizer(model: nn.Module, recipe: Recipe, weights_used: str):
    lr, head_lr = recipe.effective_lr(weights_used)
    opt = torch.optim.Adam(param_groups(model, lr, head_lr), weight_decay=recipe.weight_decay)
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=recipe.lr_gamma)
    return opt, sched


def train_batches(data: FoldData) -> int:
    """Training steps per epoch. A last batch of one sample breaks BatchNorm in training mode:
    only that case is dropped."""
    n, b = len(data.train_idx), data.recipe.batch_size
    return n // b + (1 if n % b > 1 else 0)


def train_step(net, opt, scaler, loss_fn, x, y, autocast) -> torch.Tensor:
    """One optimisation step; returns the detached loss (on the device: no host sync)."""
    with autocast():
        loss = loss_fn(net(x), y)
    opt.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(opt)
    scaler.update()
    return loss.detach()


def rank_share(x: torch.Tensor, y: torch.Tensor, criterion, d: Dist):
    """(images, labels, loss) this rank steps on. Distributed: its slice of the global batch
    and its summed loss * W / B, so that DDP's gradient average over W ranks is the global
    batch's mean gradient (bench.train.distributed)."""
    if not d.enabled:
        return x, y, criterion
    global_b = len(y)
    lo, hi = d.shard(global_b)

    def loss(out, target, _scale=d.world_size / global_b):
        summed = nn.functional.cross_entropy(
            out, target, reduction="sum", label_smoothing=criterion.label_smoothing
        )
        return summed * _scale

    return x[lo:hi], y[lo:hi], loss


def train_one_epoch(net, criterion, optimizer, scaler, data: FoldData, generator, reporter):
    """One pass over the training split in an order drawn from `generator`, which draws the
    augmentation too. Returns the epoch's training figures (loss, lrs, time, data/compute)."""
    r, d = data.recipe, data.dist
    n_batches = train_batches(data)
    perm = torch.randperm(len(data.train_idx), generator=generator)
    order = data.train_idx[perm.to(data.index_device)]
    net.train()
    data.sync()
    t0 = time.perf_counter()
    loss_sum, seen = torch.zeros((), device=data.device), 0
    clock = StepClock(data.device)
    loader = iter(data.batches(order, r.batch_size, n_batches))
    for b in range(n_batches):
        start = clock.mark()
        raw, y = next(loader)  # waits only if the prefetched batch is not ready yet
        # Distributed: the whole global batch is augmented on every rank (same stream as
        # one process; ~1% of a step) and each keeps its slice.
        x = data.augment(raw, generator)
        global_b = len(y)
        x, y, step_loss = rank_share(x, y, criterion, d)
        middle = clock.mark()
        loss = train_step(net, optimizer, scaler, step_loss, x, y, data.autocast)
        clock.step(start, middle, clock.mark())
        loss_sum += loss * (global_b / d.world_size if d.enabled else global_b)
        seen += global_b
        reporter.batch(b + 1, elapsed=time.perf_counter() - t0)
    loader.close()  # stops the prefetch thread now, not at garbage collection
    d.all_sum(loss_sum)  # the ranks' summed losses: the global batch's
    data.sync()
    seconds = time.perf_counter() - t0
    data_s, compute_s = clock.totals()
    lrs = [g["lr"] for g in optimizer.param_groups]
    return {
        "loss": float(loss_sum) / max(seen, 1),
        "lr": lrs[0],
        "head_lr": lrs[1],
        "seconds": seconds,
        "img_s": seen / seconds,
        "data_seconds": data_s,
        "compute_seconds": compute_s,
        "steps": n_batches,
    }


@torch.inference_mode()
def evaluate(model: nn.Module, data: FoldData, idx: torch.Tensor) -> tuple[float, np.ndarray]:
    """(mean cross-entropy, logits as float32 numpy (N, classes)) on the given images.

    Distributed: each rank evaluates its contiguous shard, then the shards' logits are
    gathered in rank order, so every image counts exactly once (no sampler padding)."""
    model = getattr(model, "module", model)  # DDP: no collectives inside a shard's forward
    model.eval()
    n_all = len(idx)
    if data.dist.enabled:
        lo, hi = data.dist.shard(n_all)
        idx = idx[lo:hi]
    losses, outputs = [], []
    for raw, y in data.batches(idx, data.recipe.eval_batch_size):
        with data.autocast():
            logits = model(data.eval_transform(raw)).float()
        losses.append(nn.functional.cross_entropy(logits, y, reduction="sum"))
        # Logits stay on the device: one copy to the host at the end, not a sync per batch.
        outputs.append(logits)
    n = max(n_all, 1)
    loss = torch.stack(losses).sum() if losses else torch.zeros((), device=data.device)
    if outputs:
        logits = torch.cat(outputs).cpu().numpy()
    else:
        logits = np.zeros((0, len(data.classes)), np.float32)
    if data.dist.enabled:
        loss = data.dist.all_sum(loss.detach().float().reshape(1).to(data.device))[0]
        logits = np.concatenate(data.dist.all_gather_object(logits))
    return float(loss) / n, logits


def run_epoch(net, criterion, optimizer, scheduler, scaler, data, epoch_seed, reporter) -> dict:
    """Train one epoch, step the schedule, validate: the epoch's history row (less its number)."""
    torch.manual_seed(epoch_seed)  # dropout (VGG) and anything else on the global RNG
    generator = torch.Generator().manual_seed(epoch_seed)
    t0 = time.perf_counter()
    train = train_one_epoch(net, criterion, optimizer, scaler, data, generator, reporter)
    scheduler.step()  # once per epoch: stepped per batch, the lr would decay batches-per-epoch times too fast
    t_eval = time.perf_counter()
    val_loss, logits = evaluate(net, data, data.val_idx)
    return {
        "train_loss": train["loss"],
        "val_loss": val_loss,
        "val_accuracy": accuracy(logits, data, data.val_idx),
        "lr": train["lr"],
        "head_lr": train["head_lr"],
        "train_seconds": train["seconds"],
        "epoch_seconds": time.perf_counter() - t0,
        "train_img_s": train["img_s"],
        "eval_seconds": time.perf_counter() - t_eval,
        "data_seconds": train["data_seconds"],
        "compute_seconds": train["compute_seconds"],
        "steps": train["steps"],
        **pipeline_figures(train["data_seconds"], train["compute_seconds"], train["steps"]),
    }


def train_one(
    name: str,
    seed: int,
    data: FoldData,
    folder: Path,
    *,
    weights: str,
    reporter=None,
    recipe_hash: str = "",
    legacy_hashes: frozenset[str] | set[str] = frozenset(),
    fold: int | None = None,
    checkpoint: str | None = None,
) -> dict:
    """Train `name` with `seed` on `data` (cross-validation fold `fold`) into `folder`; return
    its result row (status 'ok'). `checkpoint`: best.pt's path as the row records it (relative
    to the run folder); `recipe_hash` is stamped into last.pt, which resumes when it carries
    that or one of `legacy_hashes`.

    Exceptions propagate: the sweep records them in the row and carries on.
    """
    from bench.ui import NullReporter

    reporter = reporter or NullReporter()
    files, d, epochs = RunFolder(folder), data.dist, data.recipe.epochs
    if files.done.exists():
        reporter.log(f"{name} seed {seed}: finished earlier, not retrained ({files.done})")
        return files.finished_row()
    model, optimizer, scheduler, scaler = _build(name, seed, data, weights)
    state = {"model": model, "optimizer": optimizer, "scheduler": scheduler, "scaler": scaler}
    progress = files.resume(state, data.device, accepted={recipe_hash, *legacy_hashes})
    if progress.epoch:
        reporter.log(f"{name} seed {seed}: resuming after epoch {progress.epoch} ({files.last})")
    criterion = nn.CrossEntropyLoss(label_smoothing=data.recipe.label_smoothing)
    # `net` runs the batches; `model` (the same parameters) is what checkpoints save.
    net, compiled = _runner(name, seed, model, data, criterion, progress.epoch < epochs, reporter)
    reporter.start_model(
        name, seed, epochs=epochs, batches=train_batches(data), done_epochs=progress.epoch
    )
    for epoch in range(progress.epoch, epochs):
        epoch_seed = _derive_seed(seed, "epoch", epoch)
        fig = run_epoch(net, criterion, optimizer, scheduler, scaler, data, epoch_seed, reporter)
        record = {"epoch": epoch + 1, **fig}
        improved = progress.add(record)
        if d.is_main:  # only rank 0 writes; the others wait at the barrier below
            if improved:
                files.save_best(best_checkpoint(name, seed, model, data, weights, progress.best))
            files.save_last(state, progress, recipe_hash)
        d.barrier()
        reporter.epoch_end(record)
    row, details = final_metrics(name, seed, data, files, model, net, progress.history, weights)
    row.update(compiled, fold=fold)
    row["checkpoint"] = checkpoint or str(Path(name) / f"seed{seed}" / "best.pt")
    if d.is_main:
        files.finish(row, details)
    d.barrier()
    return row


def _build(name: str, seed: int, data: FoldData, weights: str):
    """(model, optimizer, scheduler, grad scaler), the model initialised from `seed`."""
    torch.manual_seed(_derive_seed(seed, "init"))
    model = build_model(name, num_classes=len(data.classes), weights=weights)
    model = model.to(data.device, memory_format=data.memory_format)
    optimizer, scheduler = make_optimizer(model, data.recipe, weights)
    return model, optimizer, scheduler, data.precision.grad_scaler()


def _runner(name, seed, model, data: FoldData, criterion, will_train: bool, reporter):
    """(the module that runs the batches, the row's compile figures): `model` compiled when
    --compile is on and there are epochs left to train, wrapped in DDP when distributed."""
    net, compiled = model, NOT_COMPILED
    if data.compile and will_train:
        reporter.log(f"{name} seed {seed}: compiling (torch.compile, inductor)")
        net, compiled = compile_model(model, data, criterion)
        if compiled["compile_error"]:
            error = compiled["compile_error"]
            reporter.warn(f"{name}: torch.compile failed, training eager: {error}")
    return wrap_model(net, data.dist, data.device), compiled


def final_metrics(name, seed, data: FoldData, files, model, net, history, weights):
    """(row, metrics.json details) of the best checkpoint, loaded back into `model`.

    Validation chose the checkpoint; the test images (when there are any) are seen here, once,
    by that checkpoint, and give the headline. `net` is the compiled module when --compile is
    on; it shares `model`'s weights.
    """
    t_eval = time.perf_counter()
    state = torch.load(files.best, map_location=data.device, weights_only=True)
    model.load_state_dict(state["state_dict"])
    val_loss, val = _score(net, data, data.val_idx)
    test = _score(net, data, data.test_idx)[1] if len(data.test_idx) else None
    params_m = sum(p.numel() for p in model.parameters()) / 1e6
    row = result_row(name, seed, data, weights, history=history, best_epoch=state["epoch"],
                     val=val, val_loss=val_loss, test=test, params_m=params_m)  # fmt: skip
    row["eval_seconds"] += time.perf_counter() - t_eval  # + the final evaluation
    details = {
        "evaluated_on": row["accuracy_split"],
        **(test or val)["details"],
        "classes": data.classes,
        "history": history,
    }
    return row, details


def _score(net: nn.Module, data: FoldData, idx: torch.Tensor) -> tuple[float, dict]:
    """(loss, scores.score) of `net` on the images `idx`."""
    loss, logits = evaluate(net, data, idx)
    return loss, score(data, idx, logits)
