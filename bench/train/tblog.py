"""`bench run --tensorboard`: per-epoch scalar curves for TensorBoard, one run per model/seed.

A reporter that wraps the terminal reporter: the training loop already tells its reporter
about every epoch, so TensorBoard needs no hook of its own. Event files go to
`<out>/tensorboard/<model>/seed<k>/`; watch them live with
`tensorboard --logdir <out>/tensorboard`. The writer is flushed after every epoch, so a
crash or Ctrl-C loses nothing already trained, and a resumed model appends its remaining
epochs in a new event file (TensorBoard merges them by step).

TensorBoard is an optional extra (`pip install .[tensorboard]`): it is imported only here,
only when asked for, and its absence is a ConfigError before any work starts.
"""

from __future__ import annotations

from pathlib import Path

from bench.config import ConfigError

# history.csv field -> TensorBoard tag. Grouped by prefix so TensorBoard draws one chart per
# quantity with every model/seed overlaid.
TAGS = {
    "train_loss": "loss/train",
    "val_loss": "loss/val",
    "val_accuracy": "accuracy/val",
    "lr": "lr/backbone",
    "head_lr": "lr/head",
    "train_img_s": "speed/train_img_s",
    "epoch_seconds": "time/epoch_seconds",
}


def summary_writer_class():
    """torch's SummaryWriter, or a ConfigError that says how to install TensorBoard."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as e:
        raise ConfigError(
            "--tensorboard needs the tensorboard package, which is not installed here "
            f"({e}). Install it with: pip install 'neu-bench[tensorboard]' (from a clone: "
            "pip install '.[tensorboard]'), or pip install tensorboard; or drop --tensorboard."
        ) from None
    return SummaryWriter


class TensorBoardReporter:
    """Forwards every reporter call to `inner` and writes each finished epoch's scalars.

    Methods it does not define (log, warn, batch, any added later) go straight to `inner`
    through __getattr__, so a new reporter call can never be swallowed here.
    """

    def __init__(self, inner, logdir: str | Path):
        self._writer_cls = summary_writer_class()
        self.inner = inner
        self.logdir = Path(logdir)
        self._writer = None

    def __getattr__(self, name):
        return getattr(self.inner, name)

    # `run` sets reporter.estimate after wrapping; it belongs to the terminal reporter.
    @property
    def estimate(self):
        return getattr(self.inner, "estimate", None)

    @estimate.setter
    def estimate(self, value):
        self.inner.estimate = value

    def start_model(self, name, seed, *, epochs, batches, done_epochs=0):
        self._close_writer()
        self._writer = self._writer_cls(log_dir=str(self.logdir / name / f"seed{seed}"))
        self.inner.start_model(name, seed, epochs=epochs, batches=batches, done_epochs=done_epochs)

    def epoch_end(self, record):
        if self._writer is not None:
            for field, tag in TAGS.items():
                if record.get(field) is not None:
                    self._writer.add_scalar(tag, float(record[field]), global_step=record["epoch"])
            self._writer.flush()  # visible in TensorBoard now, and safe from a crash
        self.inner.epoch_end(record)

    def end_model(self, row):
        self._close_writer()
        self.inner.end_model(row)

    def close(self):
        self._close_writer()
        self.inner.close()

    def _close_writer(self):
        if self._writer is not None:
            self._writer.close()
            self._writer = None
