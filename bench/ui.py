"""Terminal output: rich live progress on a terminal, plain line logs everywhere else (CI, pipes).

The training loop only calls the Reporter methods; it never prints.
"""

from __future__ import annotations

import sys

from rich.console import Console


class NullReporter:
    def log(self, message: str) -> None: ...
    def warn(self, message: str) -> None: ...
    def start_sweep(self, total_jobs: int) -> None: ...
    def start_model(self, name, seed, *, epochs, batches, done_epochs=0) -> None: ...
    def batch(self, i: int, *, elapsed: float) -> None: ...
    def epoch_end(self, record: dict) -> None: ...
    def end_model(self, row: dict) -> None: ...
    def close(self) -> None: ...


def _fmt_minutes(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


class PlainReporter(NullReporter):
    """One line per event; safe for logs and CI."""

    def __init__(self, console: Console | None = None, estimate=None):
        self.console = console or Console(highlight=False, soft_wrap=True)
        self.estimate = estimate  # callable(seconds_per_batch, batches, epochs) -> str | None
        self._model = None

    def log(self, message):
        self.console.print(message, markup=False)

    def warn(self, message):
        self.console.print(f"WARNING: {message}", style="bold yellow", markup=False)

    def start_model(self, name, seed, *, epochs, batches, done_epochs=0):
        self._model = (name, seed, epochs, batches)
        self._estimated = False
        self._warm = None
        self.log(f"[{name} seed {seed}] training {epochs} epochs x {batches} batches")

    # The first batches pay one-off costs (cuDNN autotuning, lazy CUDA init, allocator growth):
    # on an H200 they made a 20 s ShuffleNet job look like 6 minutes. Time the steady batches.
    WARMUP_BATCHES = 2
    ESTIMATE_AFTER = 5  # steady batches

    def batch(self, i, *, elapsed):
        if not self.estimate or self._estimated:
            return
        name, seed, epochs, batches = self._model
        if i == self.WARMUP_BATCHES:
            self._warm = (i, elapsed)
        steady_end = self.WARMUP_BATCHES + self.ESTIMATE_AFTER
        if i == steady_end or (i == batches and i < steady_end):
            self._estimated = True
            i0, t0 = getattr(self, "_warm", None) or (0, 0.0)
            if i <= i0:  # too few batches to skip the warm-up
                i0, t0 = 0, 0.0
            text = self.estimate(name, (elapsed - t0) / (i - i0), batches, epochs)
            if text:
                self.log(text)

    def epoch_end(self, r):
        name, seed, epochs, _ = self._model
        self.log(
            f"[{name} seed {seed}] epoch {r['epoch']}/{epochs} train_loss {r['train_loss']:.4f} "
            f"val_loss {r['val_loss']:.4f} val_acc {r['val_accuracy']:.4f} lr {r['lr']:.2e} "
            f"{r['epoch_seconds']:.1f}s ({r['train_img_s']:.1f} img/s)"
        )

    def end_model(self, row):
        fold = "" if row.get("fold") is None else f" fold {row['fold']}"
        tag = f"[{row['model']} seed {row['seed']}{fold}]"
        if row["status"] == "ok":
            split = row.get("accuracy_split", "val")
            self.log(
                f"{tag} done: {split}_accuracy {row[f'{split}_accuracy']:.4f} "
                f"({row[f'{split}_correct']}/{row[f'{split}_images']}) {split}_macro_f1 "
                f"{row[f'{split}_macro_f1']:.4f}, val_accuracy {row['val_accuracy']:.4f} "
                f"(picked the epoch) in {_fmt_minutes(row['train_seconds'])}"
            )
        else:
            self.warn(f"{tag} FAILED: {row['error']}")


class RichReporter(PlainReporter):
    """Live bars with ETA: one for the sweep, one for the current model's epochs and batches."""

    def __init__(self, console: Console | None = None, estimate=None):
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        super().__init__(console, estimate)
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=self.console,
        )
        self.progress.start()
        self.sweep = self.epochs = self.batches = None

    def log(self, message):
        self.progress.console.print(message, markup=False)

    def start_sweep(self, total_jobs):
        self.sweep = self.progress.add_task("sweep (model x seed)", total=total_jobs)

    def start_model(self, name, seed, *, epochs, batches, done_epochs=0):
        self._model = (name, seed, epochs, batches)
        self._estimated = False
        self._warm = None
        for task in (self.epochs, self.batches):
            if task is not None:
                self.progress.remove_task(task)
        self.epochs = self.progress.add_task(
            f"{name} seed {seed} epochs", total=epochs, completed=done_epochs
        )
        self.batches = self.progress.add_task("  batches", total=batches)

    def batch(self, i, *, elapsed):
        super().batch(i, elapsed=elapsed)
        self.progress.update(self.batches, completed=i)

    def epoch_end(self, r):
        super().epoch_end(r)
        self.progress.advance(self.epochs)
        self.progress.reset(self.batches)

    def end_model(self, row):
        super().end_model(row)
        for task in (self.epochs, self.batches):
            if task is not None:
                self.progress.remove_task(task)
        self.epochs = self.batches = None
        if self.sweep is not None:
            self.progress.advance(self.sweep)

    def close(self):
        self.progress.stop()


def make_reporter(estimate=None) -> PlainReporter:
    console = Console(highlight=False, width=None if sys.stdout.isatty() else 200)
    if console.is_terminal and not console.is_dumb_terminal:
        return RichReporter(console, estimate)
    return PlainReporter(console, estimate)
