"""A run's folder, and how training resumes from it.

    last.pt       after every epoch, atomically: model, optimizer, scheduler, scaler, history,
                  best so far and the recipe fingerprint; removed once the run is done
    best.pt       the epoch with the best validation accuracy (exports.checkpoint's format)
    history.csv   one row per epoch
    metrics.json  written last: its presence means "done, never retrain"

Every epoch re-seeds its own RNGs from (seed, epoch) (bench.train.loop), so an epoch replayed
after a crash draws the same crops, flips and order as it would have.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from exports.checkpoint import make_checkpoint
from neu._io import atomic_path, atomic_write_json, atomic_write_text

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
class Progress:
    """How far a run has trained: epochs done, their history rows, the best epoch so far."""

    epoch: int = 0
    history: list[dict] = field(default_factory=list)
    best: dict = field(
        default_factory=lambda: {"val_accuracy": -1.0, "val_loss": float("inf"), "epoch": -1}
    )

    def add(self, record: dict) -> bool:
        """Count the epoch `record` describes; True when it is the best so far (higher
        validation accuracy, or the same with a lower validation loss)."""
        self.epoch = record["epoch"]
        self.history.append(record)
        acc, loss = record["val_accuracy"], record["val_loss"]
        best = self.best
        if acc > best["val_accuracy"] or (acc == best["val_accuracy"] and loss < best["val_loss"]):
            self.best = {"val_accuracy": acc, "val_loss": loss, "epoch": record["epoch"]}
            return True
        return False


class RunFolder:
    """One (model, seed, fold)'s folder. `state`: name -> object with state_dict() and
    load_state_dict() (model, optimizer, scheduler, scaler), what last.pt holds."""

    def __init__(self, folder: Path):
        folder.mkdir(parents=True, exist_ok=True)
        self.done = folder / "metrics.json"
        self.last = folder / "last.pt"
        self.best = folder / "best.pt"
        self.history = folder / "history.csv"

    def finished_row(self) -> dict:
        return json.loads(self.done.read_text())["row"]

    def resume(self, state: dict, device: torch.device, accepted: set[str]) -> Progress:
        """Load last.pt into `state` when there is one (written under an `accepted` recipe
        fingerprint, else an error); without one the run starts afresh, at epoch 0."""
        if not self.last.exists():
            return Progress()
        saved = torch.load(self.last, map_location=device, weights_only=True)
        if saved.get("recipe_hash") not in accepted:
            raise RuntimeError(
                f"{self.last} was written by a different recipe or split; delete it or use "
                "another --out to start this model afresh"
            )
        for key, obj in state.items():
            obj.load_state_dict(saved[key])
        return Progress(epoch=saved["epoch"], history=saved["history"], best=saved["best"])

    def save_best(self, checkpoint: dict) -> None:
        _save_torch(checkpoint, self.best)

    def save_last(self, state: dict, progress: Progress, recipe_hash: str) -> None:
        """last.pt and history.csv after an epoch."""
        last = {
            "epoch": progress.epoch,
            **{key: obj.state_dict() for key, obj in state.items()},
            "history": progress.history,
            "best": progress.best,
            "recipe_hash": recipe_hash,
        }
        _save_torch(last, self.last)
        _write_history(self.history, progress.history)

    def finish(self, row: dict, details: dict) -> None:
        atomic_write_json(self.done, {"row": row, **details})
        self.last.unlink(missing_ok=True)  # done: best.pt and metrics.json are what remain


def best_checkpoint(name: str, seed: int, model, data, weights: str, best: dict) -> dict:
    """best.pt's content: the weights with everything deployment needs (classes, image size,
    the training split's normalisation, hashes of the data and split)."""
    s = data.split
    return make_checkpoint(
        model,
        model=name,
        classes=data.classes,
        num_classes=len(data.classes),
        image_size=data.recipe.image_size,
        channels=int(data.dataset.channels),
        mean=[float(v) for v in s.mean],
        std=[float(v) for v in s.std],
        val_accuracy=best["val_accuracy"],
        dataset_hash=data.dataset.dataset_hash,
        split_hash=s.split_hash,
        split=s.info(),
        weights=weights,
        seed=seed,
        epoch=best["epoch"],
    )


def _save_torch(obj, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def _write_history(path: Path, history: list[dict]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=HISTORY_FIELDS, extrasaction="ignore")
    w.writeheader()
    w.writerows(history)
    atomic_write_text(path, buf.getvalue())
