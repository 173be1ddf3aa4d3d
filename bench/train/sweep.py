"""`bench run`'s sweep: every (model, seed, fold) trained in turn, each into its own folder.

A run whose folder holds metrics.json finished in an earlier invocation (train_one reads its
row back instead of training); one with last.pt resumes after its last finished epoch. One
model's failure is recorded in its row, with the traceback in its folder's error.txt, and the
sweep carries on.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from bench.summary import summarize_models
from bench.train.loop import train_one
from neu._io import atomic_write_text


@dataclass
class Sweep:
    """The runs of one `bench run`, models x seeds x folds, each in its run_folder."""

    out: Path  # --out
    folds: dict  # fold (None without --folds) -> bench.train.folds.FoldData
    names: list[str]
    seeds: list[int]
    weights: dict[str, str]  # model -> the weights it starts from
    model_info: dict[str, dict]  # model -> params_m, gflops: added to its rows
    recipe_hash: str  # stamped into every last.pt
    accepted_hashes: set[str]  # fingerprints whose last.pt resumes (this and older versions')
    reporter: object
    save: Callable[[dict], None] = lambda results: None  # after each row (results.json, views)

    def runs(self) -> list[tuple[str, int, object]]:
        """(model, seed, fold) in training order."""
        return [(n, s, f) for n in self.names for s in self.seeds for f in self.folds]

    def run(self, results: dict) -> None:
        """Every run's row into results["rows"], with the interim summary after each."""
        self._plan(results["sweep"])
        started = time.perf_counter()
        for name, seed, fold in self.runs():
            row = self._train(name, seed, fold)
            results["rows"].append(row)
            results["summary"] = summarize_models(results["rows"])  # interim views
            self.reporter.end_model(row)
            results["sweep"]["train_seconds_actual"] = time.perf_counter() - started
            self.save(results)

    def _plan(self, record: dict) -> None:
        """results.json `sweep`: runs in all, to train now, finished earlier; and the estimate
        the reporter shows after a model's first batches."""
        to_train = dict.fromkeys(self.names, 0)
        for n, s, f in self.runs():
            to_train[n] += not (self.out / run_folder(n, s, f) / "metrics.json").exists()
        runs, trained = len(self.runs()), sum(to_train.values())
        record.update(runs=runs, runs_trained=trained, runs_finished_earlier=runs - trained)
        if not trained:
            self.reporter.log("every run finished in an earlier invocation: nothing to train")
        self.reporter.estimate = estimator(self.model_info, to_train, record)
        self.reporter.start_sweep(runs)

    def _train(self, name: str, seed: int, fold) -> dict:
        """The run's row: trained (or read back, or resumed), or failed with the reason."""
        rel, data = run_folder(name, seed, fold), self.folds[fold]
        try:
            row = train_one(name, seed, data, self.out / rel, weights=self.weights[name],
                            reporter=self.reporter, recipe_hash=self.recipe_hash,
                            legacy_hashes=self.accepted_hashes, fold=fold,
                            checkpoint=str(rel / "best.pt"))  # fmt: skip
        except Exception as e:  # one model's failure must not stop the sweep
            if data.dist.enabled:
                raise  # ...but the other ranks are in its collectives: end the run
            return self._failed(name, seed, fold, e)
        row.update(self.model_info[name])
        return row

    def _failed(self, name: str, seed: int, fold, error: Exception) -> dict:
        """The failed run's row; its traceback goes to error.txt (call while handling it)."""
        data, folder = self.folds[fold], self.out / run_folder(name, seed, fold)
        row = failed_row(name, seed, error, self.weights[name], fold)
        row.update(amp=data.precision.name, amp_reason=data.precision.reason)
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_text(folder / "error.txt", traceback.format_exc())
        if data.device.type == "cuda":
            torch.cuda.empty_cache()
        return row


def run_folder(model: str, seed: int, fold) -> Path:
    """A run's folder under --out; without cross-validation it stays <model>/seed<k>, so
    runs of older versions resume."""
    return Path(model) / f"seed{seed}" / ("" if fold is None else f"fold{fold}")


def failed_row(name: str, seed: int, error: BaseException, weights: str, fold=None) -> dict:
    return {
        "model": name,
        "seed": seed,
        "fold": fold,
        "status": "failed",
        "error": f"{type(error).__name__}: {error}",
        "weights": weights,
        "val_accuracy": None,
        "test_accuracy": None,
        "test_macro_f1": None,
        "train_seconds": None,
    }


def estimator(model_info: dict, to_train: dict[str, int], record: dict):
    """After a model's first batches: its time, and the sweep's, scaled by GFLOPs.

    to_train: model -> runs (seeds x folds) this invocation still has to train; runs that
    finished in an earlier invocation cost nothing (a run resumed mid-way is counted whole).
    The first estimate of this invocation goes into `record` (results.json `sweep`) so the
    report can set it beside the wall time actually taken.
    """

    def estimate(name, seconds_per_batch, batches, epochs):
        this = seconds_per_batch * batches * epochs
        flops = {n: model_info[n]["gflops"] for n in to_train if model_info[n]["gflops"]}
        if name not in flops:
            return f"estimate: {name} ~{this / 60:.1f} min per run"
        per_gflop = this / flops[name]
        total = sum(per_gflop * f * to_train[n] for n, f in flops.items())
        if "train_seconds_expected" not in record:
            record.update(
                train_seconds_expected=total,
                expected_from=f"{name}: {seconds_per_batch:.3f} s per batch over its first "
                "batches, scaled to every model by GFLOPs; training epochs only",
            )
        return (
            f"estimate: {name} ~{this / 60:.1f} min per run; whole sweep "
            f"~{total / 60:.{1 if total < 600 else 0}f} min (scaled by GFLOPs, training only)"
        )

    return estimate
