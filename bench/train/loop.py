"""Train and evaluate one (model, seed) with the recipe. Read top to bottom.

Resumable by construction: every epoch ends with an atomic `last.pt` (model, optimizer,
scheduler, history, best so far), and every epoch re-seeds its own RNGs from (seed, epoch),
so an epoch replayed after a crash draws the same crops, flips and order as it would have.
`metrics.json` is written last: its presence means "done, never retrain".
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from bench import metrics as M
from bench.amp import resolve_precision
from bench.config import Recipe
from bench.registry import build_model, head_parameter_names
from bench.train.data import Gather, Prefetcher, decide_placement, place_images
from bench.train.distributed import Dist, wrap_model
from exports.checkpoint import make_checkpoint
from neu._io import atomic_path, atomic_write_json, atomic_write_text
from neu.augment import eval_batch, train_batch

HISTORY_FIELDS = [
    "epoch",
    "train_loss",
    "val_loss",
    "val_accuracy",
    "lr",
    "head_lr",
    "train_seconds",
    "epoch_seconds",
    "train_img_s",
    "eval_seconds",
    "data_ms_per_step",
    "compute_ms_per_step",
    "pipeline_efficiency",
]


@dataclass
class Context:
    """Everything shared by all models of a run: the images where they fit (bench.train.data),
    split, recipe."""

    dataset: object  # neu.dataset.Dataset
    split: object  # neu.split.Split
    recipe: Recipe
    device: torch.device
    deterministic: bool = False
    compile: bool = False
    data_placement: str = "auto"
    memory_budget_mb: float | None = None
    dist: Dist = field(default_factory=Dist)  # this process's place in a torchrun group
    # Another Context over the same dataset (another --folds fold) whose placed images this
    # one shares: K folds must not hold K copies on the GPU, nor place them differently.
    images_from: Context | None = None

    def __post_init__(self):
        src = self.images_from
        if src is not None and src.dataset is self.dataset and src.device == self.device:
            self.placement, self.placement_reason = src.placement, src.placement_reason
            self.images = src.images
        else:
            nbytes = self.dataset.images.numel() * self.dataset.images.element_size()
            self.placement, self.placement_reason = decide_placement(
                nbytes, self.device, self.data_placement, self.memory_budget_mb
            )
            if self.placement == "mmap" and getattr(self.dataset, "image_map", None) is None:
                self.placement_reason += " (no cache file: the images are in RAM already)"
            self.images = place_images(self.dataset, self.placement, self.device)
        # Indices and labels live beside the images: on the device, or on the CPU where
        # batches are gathered before they are sent over.
        on_device = self.placement == "device"
        self.index_device = self.device if on_device else torch.device("cpu")
        self.gather = Gather(self.dataset, self.images, self.device, on_device)
        ix = self.index_device
        self.labels = torch.as_tensor(np.asarray(self.dataset.labels), device=ix)
        self.train_idx = torch.as_tensor(np.asarray(self.split.train), device=ix)
        self.val_idx = torch.as_tensor(np.asarray(self.split.val), device=ix)
        self.test_idx = torch.as_tensor(np.asarray(self.split.test), device=ix)
        self.classes = list(self.dataset.classes)
        # On the device once: a Python list would be copied from pageable memory every batch,
        # which synchronises the CUDA stream.
        self.mean = torch.tensor(self.split.mean, dtype=torch.float32, device=self.device)
        self.std = torch.tensor(self.split.std, dtype=torch.float32, device=self.device)
        self.precision = resolve_precision(self.device, self.recipe.amp)
        self.amp_dtype = self.precision.dtype
        # channels_last on CPU too: on an AMX Xeon ResNet-50 trained 1.4x (fp32) and 2.4x
        # (bf16) faster than in contiguous format (README, bench train-speed).
        self.memory_format = (
            torch.channels_last if self.recipe.channels_last else torch.contiguous_format
        )

    def autocast(self):
        return self.precision.autocast()

    def sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def placement_record(self) -> dict:
        return {
            "placement": self.placement,
            "reason": self.placement_reason,
            "images_mb": self.dataset.images.numel() / 2**20,
        }

    def batches(self, idx: torch.Tensor, batch_size: int, n_batches: int | None = None):
        """(uint8 images on the device, labels on the device) per batch of `idx`, prefetched
        one batch ahead unless the images are on the device already."""
        n = n_batches if n_batches is not None else -(-len(idx) // batch_size)
        parts = [idx[b * batch_size : (b + 1) * batch_size] for b in range(n)]
        labels = iter(parts)
        for raw in Prefetcher(self.gather, parts, background=self.placement != "device"):
            y = self.labels.index_select(0, next(labels)).to(self.device, non_blocking=True)
            yield raw, y

    def train_inputs(self, idx: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return self.augment(self.gather(idx), generator)

    def augment(self, raw: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        r = self.recipe
        if r.augment_corruptions:
            raw = _corrupt_batch(raw, generator)
        return train_batch(
            raw,
            image_size=r.image_size,
            mean=self.mean,
            std=self.std,
            generator=generator,
            scale=(r.crop_scale_min, 1.0),
            hflip=r.hflip,
            memory_format=self.memory_format,
        )

    def eval_inputs(self, idx: torch.Tensor) -> torch.Tensor:
        return self.eval_transform(self.gather(idx))

    def eval_transform(self, raw: torch.Tensor) -> torch.Tensor:
        r = self.recipe
        x = eval_batch(
            raw,
            image_size=r.image_size,
            mean=self.mean,
            std=self.std,
        )
        return x.contiguous(memory_format=self.memory_format)


class StepClock:
    """Data vs compute time of the real training steps, measured in the same iterations.

    Each step marks three points: before its data (index, augmentation, transfer), between
    data and compute (forward, backward, step), and after. On CPU the marks are
    perf_counter reads (CPU work is synchronous). On CUDA they are CUDA events recorded on
    the stream, so timing adds no host sync per batch; `totals()` synchronizes once, at the
    end of the epoch, and reads the device-side durations.
    """

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.steps: list[tuple] = []

    def mark(self):
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def step(self, start, middle, end) -> None:
        self.steps.append((start, middle, end))

    def totals(self) -> tuple[float, float]:
        """(data seconds, compute seconds) over the steps so far."""
        if self.cuda:
            torch.cuda.synchronize()
            spans = [(a.elapsed_time(b) / 1e3, b.elapsed_time(c) / 1e3) for a, b, c in self.steps]
        else:
            spans = [(b - a, c - b) for a, b, c in self.steps]
        return sum(d for d, _ in spans), sum(c for _, c in spans)


def pipeline_figures(data_s: float, compute_s: float, steps: int) -> dict:
    """ms per step of data and compute, and pipeline_efficiency = compute / (data + compute).

    1.0: the input pipeline costs nothing; 0.5: half of every step waits for data. It cannot
    exceed 1 because both parts come from the same steps.
    """
    total = data_s + compute_s
    return {
        "data_ms_per_step": data_s / steps * 1e3 if steps else None,
        "compute_ms_per_step": compute_s / steps * 1e3 if steps else None,
        "pipeline_efficiency": compute_s / total if total > 0 else None,
    }


def _corrupt_batch(raw: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """--augment-corruptions on the CPU (neu.corrupt is numpy): the seed comes from the
    training generator, so the stream stays reproducible and rank-identical."""
    from neu.corrupt import augment_batch

    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    out = augment_batch(raw.cpu().numpy(), seed)
    return torch.from_numpy(out).to(raw.device, non_blocking=True)


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


@torch.inference_mode()
def evaluate(model: nn.Module, ctx: Context, idx: torch.Tensor) -> tuple[float, np.ndarray]:
    """(mean cross-entropy, logits as float32 numpy (N, classes)) on the given images.

    Distributed: each rank evaluates its contiguous shard, then the shards' logits are
    gathered in rank order, so every image counts exactly once (no sampler padding)."""
    model = getattr(model, "module", model)  # DDP: no collectives inside a shard's forward
    model.eval()
    n_all = len(idx)
    if ctx.dist.enabled:
        lo, hi = ctx.dist.shard(n_all)
        idx = idx[lo:hi]
    losses, outputs = [], []
    for raw, y in ctx.batches(idx, ctx.recipe.eval_batch_size):
        with ctx.autocast():
            logits = model(ctx.eval_transform(raw)).float()
        losses.append(nn.functional.cross_entropy(logits, y, reduction="sum"))
        # Logits stay on the device: one copy to the host at the end, not a sync per batch.
        outputs.append(logits)
    n = max(n_all, 1)
    loss = torch.stack(losses).sum() if losses else torch.zeros((), device=ctx.device)
    logits = (
        torch.cat(outputs).cpu().numpy() if outputs else np.zeros((0, len(ctx.classes)), np.float32)
    )
    if ctx.dist.enabled:
        loss = ctx.dist.all_sum(loss.detach().float().reshape(1).to(ctx.device))[0]
        logits = np.concatenate(ctx.dist.all_gather_object(logits))
    return float(loss) / n, logits


def _batch_sizes(n: int, batch_size: int, *, drop_single: bool) -> list[int]:
    """The distinct batch sizes a pass over n items in batches of batch_size produces."""
    sizes = [batch_size] if n >= batch_size else []
    rest = n % batch_size
    if rest > (1 if drop_single else 0):
        sizes.append(rest)
    return sizes


def compile_model(model: nn.Module, ctx: Context, loss_fn) -> tuple[nn.Module, dict]:
    """torch.compile (inductor) `model` and compile it now, for every batch shape training and
    evaluation will see, so compile time is reported apart from epoch time.

    The warm-up runs forward+backward on random inputs, so weights, BatchNorm statistics,
    gradients and the global RNG are restored afterwards: training starts exactly where eager
    would. Any failure (no C++ compiler, an unsupported op) falls back to eager with the reason.
    The returned module shares its parameters with `model`; save `model`'s state_dict, which
    has no `_orig_mod.` prefixes.
    """
    r = ctx.recipe
    info = {"compile": True, "compile_seconds": None, "compile_error": None}
    saved = {k: v.detach().clone() for k, v in model.state_dict().items()}
    train_sizes = _batch_sizes(len(ctx.train_idx), r.batch_size, drop_single=True)
    eval_sizes = {
        b
        for idx in (ctx.val_idx, ctx.test_idx)
        for b in _batch_sizes(len(idx), r.eval_batch_size, drop_single=False)
    }
    gen = torch.Generator().manual_seed(0)

    def inputs(b: int) -> torch.Tensor:
        x = torch.randn((b, 3, r.image_size, r.image_size), generator=gen)
        return x.to(ctx.device).contiguous(memory_format=ctx.memory_format)

    t0 = time.perf_counter()
    # dynamic=False: a few fixed shapes, each specialised, rather than slower symbolic kernels.
    compiled = torch.compile(model, dynamic=False)
    try:
        with torch.random.fork_rng(devices=[ctx.device] if ctx.device.type == "cuda" else []):
            model.train()
            for b in train_sizes:
                y = torch.zeros(b, dtype=torch.long, device=ctx.device)
                with ctx.autocast():
                    loss = loss_fn(compiled(inputs(b)), y)
                loss.backward()
            model.eval()
            with torch.inference_mode():
                for b in sorted(eval_sizes):
                    with ctx.autocast():
                        compiled(inputs(b))
        ctx.sync()
    except Exception as e:  # eager still trains; the row says why compile did not happen
        first_line = (str(e).strip().splitlines() or [""])[0][:300]
        info.update(compile=False, compile_error=f"{type(e).__name__}: {first_line}")
        compiled = model
    finally:
        model.load_state_dict(saved)
        model.zero_grad(set_to_none=True)
    info["compile_seconds"] = time.perf_counter() - t0
    return compiled, info


def train_step(net, opt, scaler, loss_fn, x, y, autocast) -> torch.Tensor:
    """One optimisation step; returns the detached loss (on the device: no host sync)."""
    with autocast():
        loss = loss_fn(net(x), y)
    opt.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(opt)
    scaler.update()
    return loss.detach()


def _save_torch(obj, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def _write_history(path: Path, history: list[dict]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=HISTORY_FIELDS, extrasaction="ignore")
    w.writeheader()
    w.writerows(history)
    atomic_write_text(path, buf.getvalue())


def train_one(
    name: str,
    seed: int,
    ctx: Context,
    folder: Path,
    *,
    weights: str,
    reporter=None,
    recipe_hash: str = "",
    legacy_hashes: frozenset[str] | set[str] = frozenset(),
    fold: int | None = None,
    checkpoint: str | None = None,
) -> dict:
    """Train `name` with `seed` (on cross-validation fold `fold`) into `folder`; return its
    result row (status 'ok'). `checkpoint`: best.pt's path as the row records it (relative to
    the run folder).

    Exceptions propagate: the sweep records them in the row and carries on.
    """
    from bench.ui import NullReporter

    reporter = reporter or NullReporter()
    r = ctx.recipe
    folder.mkdir(parents=True, exist_ok=True)
    done, last_path, best_path = folder / "metrics.json", folder / "last.pt", folder / "best.pt"
    if done.exists():
        row = json.loads(done.read_text())["row"]
        reporter.log(f"{name} seed {seed}: finished earlier, not retrained ({done})")
        return row

    torch.manual_seed(_derive_seed(seed, "init"))
    model = build_model(name, num_classes=len(ctx.classes), weights=weights)
    model = model.to(ctx.device, memory_format=ctx.memory_format)
    opt, sched = make_optimizer(model, r, weights)
    scaler = ctx.precision.grad_scaler()
    loss_fn = nn.CrossEntropyLoss(label_smoothing=r.label_smoothing)
    d = ctx.dist
    sum_loss = nn.CrossEntropyLoss(label_smoothing=r.label_smoothing, reduction="sum")

    history: list[dict] = []
    best = {"val_accuracy": -1.0, "val_loss": float("inf"), "epoch": -1}
    start_epoch = 0
    if last_path.exists():
        state = torch.load(last_path, map_location=ctx.device, weights_only=True)
        if state.get("recipe_hash") not in {recipe_hash, *legacy_hashes}:
            raise RuntimeError(
                f"{last_path} was written by a different recipe or split; delete it or use "
                "another --out to start this model afresh"
            )
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        history, best, start_epoch = state["history"], state["best"], state["epoch"]
        reporter.log(f"{name} seed {seed}: resuming after epoch {start_epoch} ({last_path})")

    # `net` runs the batches; `model` (the same parameters) is what checkpoints save.
    net, compiled = model, {"compile": False, "compile_seconds": None, "compile_error": None}
    if ctx.compile and start_epoch < r.epochs:
        reporter.log(f"{name} seed {seed}: compiling (torch.compile, inductor)")
        net, compiled = compile_model(model, ctx, loss_fn)
        if compiled["compile_error"]:
            reporter.warn(
                f"{name}: torch.compile failed, training eager: {compiled['compile_error']}"
            )
    net = wrap_model(net, d, ctx.device)

    n_train = len(ctx.train_idx)
    # A last batch of one sample breaks BatchNorm in training mode: drop only that case.
    n_batches = n_train // r.batch_size + (1 if n_train % r.batch_size > 1 else 0)
    reporter.start_model(name, seed, epochs=r.epochs, batches=n_batches, done_epochs=start_epoch)

    for epoch in range(start_epoch, r.epochs):
        epoch_seed = _derive_seed(seed, "epoch", epoch)
        torch.manual_seed(epoch_seed)  # dropout (VGG) and anything else on the global RNG
        gen = torch.Generator().manual_seed(epoch_seed)
        order = ctx.train_idx[torch.randperm(n_train, generator=gen).to(ctx.index_device)]
        net.train()
        ctx.sync()
        t0 = time.perf_counter()
        loss_sum, seen = torch.zeros((), device=ctx.device), 0
        clock = StepClock(ctx.device)
        loader = iter(ctx.batches(order, r.batch_size, n_batches))
        for b in range(n_batches):
            start = clock.mark()
            raw, y = next(loader)  # waits only if the prefetched batch is not ready yet
            # Distributed: the whole global batch is augmented on every rank (same stream as
            # one process; ~1% of a step) and each keeps its slice; see bench.train.distributed.
            x = ctx.augment(raw, gen)
            global_b = len(y)
            step_loss = loss_fn
            if d.enabled:
                lo, hi = d.shard(global_b)
                x, y = x[lo:hi], y[lo:hi]

                def step_loss(out, t, _scale=d.world_size / global_b):
                    return sum_loss(out, t) * _scale

            middle = clock.mark()
            loss = train_step(net, opt, scaler, step_loss, x, y, ctx.autocast)
            clock.step(start, middle, clock.mark())
            loss_sum += loss * (global_b / d.world_size if d.enabled else global_b)
            seen += global_b
            reporter.batch(b + 1, elapsed=time.perf_counter() - t0)
        loader.close()  # stops the prefetch thread now, not at garbage collection
        d.all_sum(loss_sum)  # the ranks' summed losses: the global batch's
        ctx.sync()
        train_seconds = time.perf_counter() - t0
        data_s, compute_s = clock.totals()
        lrs = [g["lr"] for g in opt.param_groups]
        sched.step()  # once per epoch: the tutorial's per-batch stepping decayed lr 45x too fast
        t_eval = time.perf_counter()
        val_loss, logits = evaluate(net, ctx, ctx.val_idx)
        val_acc = float((logits.argmax(1) == ctx.labels[ctx.val_idx].cpu().numpy()).mean())
        record = {
            "epoch": epoch + 1,
            "train_loss": float(loss_sum) / max(seen, 1),
            "val_loss": val_loss,
            "val_accuracy": val_acc,
            "lr": lrs[0],
            "head_lr": lrs[1],
            "train_seconds": train_seconds,
            "epoch_seconds": time.perf_counter() - t0,
            "train_img_s": seen / train_seconds,
            "eval_seconds": time.perf_counter() - t_eval,
            "data_seconds": data_s,
            "compute_seconds": compute_s,
            "steps": n_batches,
            **pipeline_figures(data_s, compute_s, n_batches),
        }
        history.append(record)
        if val_acc > best["val_accuracy"] or (
            val_acc == best["val_accuracy"] and val_loss < best["val_loss"]
        ):
            best = {"val_accuracy": val_acc, "val_loss": val_loss, "epoch": epoch + 1}
            if d.is_main:
                _save_torch(_checkpoint(name, seed, model, ctx, weights, best), best_path)
        if d.is_main:  # only rank 0 writes; the others wait at the barrier below
            _save_torch(
                {
                    "epoch": epoch + 1,
                    "model": model.state_dict(),
                    "optimizer": opt.state_dict(),
                    "scheduler": sched.state_dict(),
                    "scaler": scaler.state_dict(),
                    "history": history,
                    "best": best,
                    "recipe_hash": recipe_hash,
                },
                last_path,
            )
            _write_history(folder / "history.csv", history)
        d.barrier()
        reporter.epoch_end(record)

    row, details = _final_metrics(
        name, seed, ctx, folder, model, net, opt, loss_fn, history, weights
    )
    row.update(compiled)
    row["fold"] = fold
    row["checkpoint"] = checkpoint or str(Path(name) / f"seed{seed}" / "best.pt")
    if d.is_main:
        atomic_write_json(done, {"row": row, **details})
        last_path.unlink(missing_ok=True)  # done: best.pt and metrics.json are what remain
    d.barrier()
    return row


def _checkpoint(name, seed, model, ctx: Context, weights, best) -> dict:
    s = ctx.split
    return make_checkpoint(
        model,
        model=name,
        classes=ctx.classes,
        num_classes=len(ctx.classes),
        image_size=ctx.recipe.image_size,
        channels=int(ctx.dataset.channels),
        mean=[float(v) for v in s.mean],
        std=[float(v) for v in s.std],
        val_accuracy=best["val_accuracy"],
        dataset_hash=ctx.dataset.dataset_hash,
        split_hash=s.split_hash,
        split=s.info(),
        weights=weights,
        seed=seed,
        epoch=best["epoch"],
    )


def _steady_train_img_s(history: list[dict]) -> tuple[float, bool]:
    """Training img/s over the timed epochs, first excluded (warm-up, allocator, caches)."""
    timed = history[1:] or history
    seconds = sum(h["train_seconds"] for h in timed)
    images = sum(h["train_img_s"] * h["train_seconds"] for h in timed)
    return images / seconds, len(history) < 2


def _steady_pipeline(history: list[dict]) -> dict:
    """Data/compute per step and pipeline efficiency over the timed epochs, first excluded."""
    timed = [h for h in (history[1:] or history) if "data_seconds" in h]
    steps = sum(h["steps"] for h in timed)
    data_s = sum(h["data_seconds"] for h in timed)
    return pipeline_figures(data_s, sum(h["compute_seconds"] for h in timed), steps)


def _final_metrics(name, seed, ctx: Context, folder, model, net, opt, loss_fn, history, weights):
    t_eval = time.perf_counter()
    state = torch.load(folder / "best.pt", map_location=ctx.device, weights_only=True)
    model.load_state_dict(state["state_dict"])
    # Val chose the checkpoint; test (when there is one) is seen here, once, by that checkpoint.
    # `net` is the compiled module when --compile is on; it shares `model`'s weights.
    val_loss, val = _score(net, ctx, ctx.val_idx)
    test = _score(net, ctx, ctx.test_idx)[1] if len(ctx.test_idx) else None
    headline = test or val

    train_img_s, includes_first = _steady_train_img_s(history)
    lr, head_lr = ctx.recipe.effective_lr(weights)
    row = {
        "model": name,
        "seed": seed,
        "status": "ok",
        "error": None,
        "weights": weights,
        "amp": ctx.precision.name,
        "amp_reason": ctx.precision.reason,
        "lr": lr,
        "head_lr": head_lr,
        "epochs": len(history),
        "best_epoch": state["epoch"],
        # the split every headline figure (summary, report, exports) comes from
        "accuracy_split": "test" if test else "val",
        # scored under this autocast precision; the exported file states its own (fp32) figure
        "test_accuracy_precision": ctx.precision.name,
        **{f"val_{k}": v for k, v in val["row"].items()},
        **{f"test_{k}": (test["row"][k] if test else None) for k in val["row"]},
        "val_loss": val_loss,
        # Training loops only; evaluation (per-epoch validation + the final one) apart.
        "train_seconds": sum(h["train_seconds"] for h in history),
        "eval_seconds": sum(h.get("eval_seconds", 0.0) for h in history),
        "train_img_s": train_img_s,
        "train_img_s_includes_first_epoch": includes_first,
        **_steady_pipeline(history),
        "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
    }
    row["eval_seconds"] += time.perf_counter() - t_eval  # + the final evaluation
    details = {
        "evaluated_on": row["accuracy_split"],
        **headline["details"],
        "classes": ctx.classes,
        "history": history,
    }
    return row, details


def _score(model: nn.Module, ctx: Context, idx: torch.Tensor) -> tuple[float, dict]:
    """(loss, scores) of `model` on the images `idx`: the row's figures (accuracy, correct,
    images, Clopper-Pearson interval, macro-F1) and the details metrics.json keeps (confusion
    matrix, per-class scores, misclassified files, every prediction for paired tests)."""
    loss, logits = evaluate(model, ctx, idx)
    labels = ctx.labels[idx].cpu().numpy()
    preds = logits.argmax(1)
    cm = M.confusion_matrix(labels, preds, len(ctx.classes))
    report = M.classification_report(cm, ctx.classes)
    correct = int((preds == labels).sum())
    probs = torch.softmax(torch.from_numpy(logits), 1).numpy()
    files = [ctx.dataset.files[i] for i in idx.cpu().numpy()]
    lo, hi = M.clopper_pearson(correct, len(labels))
    misclassified = [
        {
            "file": files[i],
            "true": ctx.classes[labels[i]],
            "predicted": ctx.classes[preds[i]],
            "confidence": float(probs[i, preds[i]]),
        }
        for i in np.flatnonzero(preds != labels)
    ]
    return loss, {
        "row": {
            "accuracy": report["accuracy"],
            "correct": correct,
            "images": len(labels),
            "accuracy_ci95_low": lo,
            "accuracy_ci95_high": hi,
            "macro_f1": report["macro_f1"],
        },
        "details": {
            "confusion_matrix": cm.tolist(),
            "per_class": report["per_class"],
            "misclassified": misclassified,
            "predictions": {
                "files": files,
                "labels": labels.tolist(),
                "predicted": preds.tolist(),
            },
        },
    }
