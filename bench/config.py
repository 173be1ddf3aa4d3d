"""Configuration as typed dataclasses; each field's docstring is its `--help` text.

`Recipe` is how every model is trained (saved with the results, so a number can always be
traced to the recipe that produced it). What to run and where comes in option groups, one
dataclass each: `CommonOptions` (models and machine) and `SpeedOptions` (how speed is
measured and variants judged), which `bench run` and `bench speed` share, then
`DataOptions`, `TrainOptions` and `ExportOptions` (the steps after training). `RunOptions` is
all of them, flat (`opts.<field>`); `SpeedCommandOptions` is `bench speed`'s. `RUN_FLAGS` and
`SPEED_FLAGS` name the fields each command's parser shows: every flag is declared once, so
its help is the same wherever it appears. A `Literal[...]` field becomes an argparse choice.
Flags, a `--config recipe.toml` file and `--quick` fill them; `__post_init__` rejects bad
values with a message that names the flag.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import functools
import inspect
import os
import textwrap
import tomllib
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Literal


class ConfigError(ValueError):
    pass


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _check(ok: bool, name: str, why: str, value) -> None:
    if not ok:
        raise ConfigError(f"{_flag(name)} {why} (got {value!r})")


class _Checked:
    """Base of every options dataclass. `__post_init__` checks that each `Literal` field holds
    one of its choices, then runs the `_validate` of every class in the hierarchy, bases
    first: a group checks its own fields wherever it is used."""

    def __post_init__(self):
        hints = _hints(type(self))
        for f in dataclasses.fields(self):
            choices = literal_choices(hints[f.name])
            value = getattr(self, f.name)
            _check(not choices or value in choices, f.name, f"must be {_either(choices)}", value)
        for cls in reversed(type(self).__mro__):
            validate = vars(cls).get("_validate")
            if validate is not None:
                validate(self)


def _either(choices) -> str:
    """'a, b or c'."""
    words = [str(c) for c in choices]
    return ", ".join(words[:-1]) + " or " + words[-1] if len(words) > 1 else "".join(words)


@dataclass
class Recipe(_Checked):
    epochs: int = 10
    """Training epochs per model and seed."""
    batch_size: int = 32
    """Training batch size."""
    image_size: int = 200
    """Side of the square model input in pixels (NEU-CLS images are 200 x 200). `bench speed
    --checkpoint` defaults to the checkpoint's."""
    lr: float | None = None
    """Adam learning rate of the backbone. Default follows the weights: 1e-4 when fine-tuning
    ImageNet weights, 1e-3 from scratch."""
    head_lr_mult: float | None = None
    """Head learning rate = lr x this. Default: 10 when fine-tuning (the new head learns fast,
    the pretrained backbone slowly), 1 from scratch (nothing to protect)."""
    weight_decay: float = 0.0
    """Adam weight decay (L2)."""
    lr_gamma: float = 0.9
    """ExponentialLR factor, applied once per epoch (not per batch)."""
    label_smoothing: float = 0.0
    """Cross-entropy label smoothing."""
    crop_scale_min: float = 0.08
    """Smallest area fraction kept by RandomResizedCrop (training only)."""
    hflip: bool = True
    """Random horizontal flip during training."""
    weights: str = "auto"
    """auto | imagenet | none | PATH. auto uses ImageNet weights when they can be obtained,
    else trains from scratch with a warning."""
    val_fraction: float = 0.1
    """Fraction of each class held out for validation: it picks the best epoch, so its
    accuracy is optimistic and never the headline."""
    test_fraction: float = 0.2
    """Fraction of each class held out as the test split: evaluated once, with the best
    checkpoint; every headline number comes from it. 0 = no test split (the report then shows
    the optimistic validation accuracy, labelled as such)."""
    folds: int = 1
    """K-fold cross-validation (K >= 2): run k tests on fold k, val is carved from the other
    folds, so every image is a test image exactly once; --test-fraction is then ignored."""
    split_seed: int = 0
    """Seed of the train/val/test split (independent of the training seeds)."""
    limit_per_class: int | None = None
    """Use a stratified subset of N images per class (quick looks, tests)."""
    amp: Literal["auto", "bf16", "fp16", "off"] = "auto"
    """Training precision. auto: on CUDA bf16 where the GPU has it, else fp16 with
    GradScaler; on a CPU with AVX512_BF16 or AMX bf16 autocast; on other CPUs fp32 (bf16 would
    be emulated, slower). Rows say which precision trained and why (amp, amp_reason)."""
    channels_last: bool = True
    """channels_last memory format (faster convolutions on CUDA and on CPU oneDNN)."""
    eval_batch_size: int = 128
    """Batch size for validation, test and the parity check (no gradients: larger is cheaper)."""
    augment_corruptions: bool = False
    """Train with the corruption benchmark's families (noise at an SNR, gaussian noise, motion
    and defocus blur, brightness, contrast, uneven illumination, JPEG) at random severities on
    half of the training images; never the test-time draws."""

    def _validate(self):
        _check(self.epochs >= 1, "epochs", "must be >= 1", self.epochs)
        _check(self.batch_size >= 2, "batch_size", "must be >= 2 (BatchNorm)", self.batch_size)
        _check(self.image_size >= 16, "image_size", "must be >= 16 pixels", self.image_size)
        _check(self.lr is None or self.lr > 0, "lr", "must be > 0", self.lr)
        _check(self.head_lr_mult is None or self.head_lr_mult > 0, "head_lr_mult",
               "must be > 0", self.head_lr_mult)  # fmt: skip
        _check(self.weight_decay >= 0, "weight_decay", "must be >= 0", self.weight_decay)
        _check(0 < self.lr_gamma <= 1, "lr_gamma", "must be in (0, 1]", self.lr_gamma)
        _check(0 <= self.label_smoothing < 1, "label_smoothing", "must be in [0, 1)",
               self.label_smoothing)  # fmt: skip
        _check(0 < self.crop_scale_min <= 1, "crop_scale_min", "must be in (0, 1]",
               self.crop_scale_min)  # fmt: skip
        _check(self.eval_batch_size >= 1, "eval_batch_size", "must be >= 1", self.eval_batch_size)
        w = self.weights
        _check(w in ("auto", "imagenet", "none") or Path(w).suffix in (".pt", ".pth"), "weights",
               "must be auto, imagenet, none or a .pt/.pth file", w)  # fmt: skip
        self._validate_split()

    def _validate_split(self):
        _check(0 < self.val_fraction < 1, "val_fraction", "must be in (0, 1)", self.val_fraction)
        _check(0 <= self.test_fraction < 1 - self.val_fraction, "test_fraction",
               "must be >= 0 and leave training images", self.test_fraction)  # fmt: skip
        _check(self.folds >= 1, "folds", "must be >= 2 (or 1: no cross-validation)", self.folds)
        _check(self.folds == 1 or self.val_fraction + 1 / self.folds < 1, "folds",
               f"leaves no training images with --val-fraction {self.val_fraction}",
               self.folds)  # fmt: skip
        _check(self.limit_per_class is None or self.limit_per_class >= 3, "limit_per_class",
               "must be >= 3 (train and validation need images of every class)",
               self.limit_per_class)  # fmt: skip

    def effective_lr(self, weights_used: str) -> tuple[float, float]:
        """(backbone lr, head lr) for weights actually used ('imagenet' / 'none' / path)."""
        pretrained = weights_used != "none"
        lr = self.lr if self.lr is not None else (1e-4 if pretrained else 1e-3)
        mult = self.head_lr_mult if self.head_lr_mult is not None else (10.0 if pretrained else 1.0)
        return lr, lr * mult


QUICK_PRESET = {
    "limit_per_class": 20,
    "image_size": 64,
    "epochs": 2,
    "speed_min_seconds": 0.5,
    "speed_min_iters": 10,
    "variants": "int8",
}
"""--quick: a first look on a CPU in a few minutes; every output is labelled as quick.
Deployment variants: torch and ONNX Runtime FP32 and ONNX Runtime INT8 only (what a CPU line
PC would ship): with all of them, torch.compile alone spent 3 of 20 minutes compiling
DenseNet-121 in a quick --models all run on 2 AVX2 cores. --variants all brings them back."""


# --- option groups ---------------------------------------------------------------------------


@dataclass
class CommonOptions(_Checked):
    """Which models, where they run and where the results go (`bench run` and `bench speed`)."""

    models: str = "all"
    """'all' (resnet50, vgg16_bn, densenet121, shufflenet_v2_x1_0), a comma list, or fnmatch
    patterns like 'resnet*'; any torchvision classifier name works."""
    out: str | None = None
    """Output folder. Default: runs/<name> (`bench speed`: runs/speed-<size>px)."""
    device: str = "auto"
    """auto (CUDA when available) | cpu | cuda | cuda:N."""
    threads: int | None = None
    """CPU threads for torch and ONNX Runtime (default: torch's default)."""

    def _validate(self):
        _check(self.device == "auto" or self.device == "cpu" or self.device.startswith("cuda"),
               "device", "must be auto, cpu, cuda or cuda:N", self.device)  # fmt: skip
        _check(self.threads is None or self.threads >= 1, "threads", "must be >= 1", self.threads)


@dataclass
class DataOptions(_Checked):
    """The dataset and how it is read and split."""

    data: str | None = None
    """Dataset folder. Default: $NEU_DATA, then data/NEU-CLS. `bench speed --checkpoint` judges
    the variants on this dataset's test images (default: $NEU_DATA only; its dataset and split
    hashes must be the checkpoint's) and, without one, only times them."""
    layout: Literal["auto", "neu-cls", "folder", "kaggle", "neu-det"] = "auto"
    """Dataset layout."""
    exclude_bad: bool = False
    """Skip unreadable or unlabelled files (listed in the report) instead of failing."""
    split: str | None = None
    """Reuse a split manifest (JSON written by a previous run) instead of making one. The
    split flags take its values (one given that disagrees is an error); its mean/std,
    classes, image size and channels are checked against the data."""

    def data_path(self) -> Path:
        return Path(self.data or os.environ.get("NEU_DATA") or "data/NEU-CLS")


@dataclass
class TrainOptions(_Checked):
    """How the sweep trains: seeds, determinism, compile, where the images live."""

    seeds: str = "0"
    """Training seeds, comma separated; accuracy is reported as mean, std and a 95% interval."""
    name: str | None = None
    """Run name (default: derived from models, quick and image size)."""
    deterministic: bool = False
    """Bit-reproducible runs (deterministic kernels; CPU runs resume to identical results)."""
    compile: bool = False
    """torch.compile (inductor) for training and evaluation; compile time is reported apart
    (compile_seconds) and a failure falls back to eager with the reason (compile_error)."""
    quick: bool = False
    """Preset for a first look on a CPU: 20 images per class, 64 px, 2 epochs."""
    tensorboard: bool = False
    """Write per-epoch loss, accuracy, lr and img/s curves per model and seed for TensorBoard
    under <out>/tensorboard (needs the extra: pip install '.[tensorboard]')."""
    data_placement: Literal["auto", "device", "host", "mmap"] = "auto"
    """Where the images live while training: auto (on the GPU when they take <= 25% of its
    free memory, in RAM when <= 50% of the available RAM, else read from the decode cache's
    memory map), device, host or mmap."""
    memory_budget_mb: float | None = None
    """RAM (MB) that --data-placement auto may count on (default: the system's MemAvailable)."""
    dist_timeout_s: float = 600.0
    """Under torchrun: seconds any collective may wait; a rank that died ends the others
    with an error after this long instead of a hang."""

    def _validate(self):
        try:
            seeds = self.seed_list
        except ValueError:
            seeds = None
        _check(bool(seeds), "seeds", "must be comma-separated integers like 0,1,2", self.seeds)
        _check(self.dist_timeout_s > 0, "dist_timeout_s", "must be > 0", self.dist_timeout_s)
        _check(self.memory_budget_mb is None or self.memory_budget_mb > 0, "memory_budget_mb",
               "must be > 0", self.memory_budget_mb)  # fmt: skip

    @property
    def seed_list(self) -> list[int]:
        seeds = [int(s) for s in self.seeds.split(",") if s.strip()]
        if len(set(seeds)) != len(seeds):
            raise ValueError("duplicate seed")
        return seeds


@dataclass
class SpeedOptions(_Checked):
    """How latency and throughput are measured and the deployment variants judged
    (`bench run`'s speed step and `bench speed`)."""

    speed_min_seconds: float = 1.0
    """Each latency/throughput measurement runs at least this long..."""
    speed_min_iters: int = 20
    """...and at least this many iterations (after warm-up)..."""
    speed_max_seconds: float = 10.0
    """...but stops after this long per round even below --speed-min-iters (at least one
    sample; warm-up stops after this long too): a batch-32 call of a large model takes
    seconds on a CPU, and its throughput needs seconds of work, not 20 calls."""
    speed_rounds: int = 3
    """Rounds per speed measurement: every runtime is measured once per round, alternating, so
    ratios come from the same window; rows report the median over rounds and its spread."""
    strict_providers: bool = False
    """Fail when an ONNX Runtime GPU provider cannot run every node (no silent CPU fallback)."""
    variants: str = "all"
    """Deployment variants timed and judged beside torch eager FP32 and ONNX Runtime FP32:
    all, or a comma list of fp32 (channels_last), int8 (ONNX Runtime static QDQ), fp16 (ONNX,
    GPU providers), bf16 (autocast), compile (torch.compile), openvino. One that cannot run
    here gets a row saying why."""
    calibration_images: int = 256
    """INT8 calibration: this many training images (seeded, stratified by class; `bench speed`
    without a dataset: synthetic inputs)."""
    fidelity_min_agreement: float = 0.99
    """INT8/FP16/bf16 variants pass only with at least this top-1 agreement with FP32 torch on
    the test images (a fraction; FP32 variants need strict parity instead)."""
    fidelity_max_drop_pp: float = 0.5
    """...and a test-accuracy drop of at most this many percentage points."""

    def _validate(self):
        _check(self.speed_rounds >= 1, "speed_rounds", "must be >= 1", self.speed_rounds)
        _check(self.speed_min_seconds >= 0, "speed_min_seconds", "must be >= 0",
               self.speed_min_seconds)  # fmt: skip
        _check(self.speed_min_iters >= 1, "speed_min_iters", "must be >= 1", self.speed_min_iters)
        _check(self.speed_max_seconds > 0 and self.speed_max_seconds >= self.speed_min_seconds,
               "speed_max_seconds",
               f"must be > 0 and >= --speed-min-seconds ({self.speed_min_seconds})",
               self.speed_max_seconds)  # fmt: skip
        try:
            parse_variants(self.variants)
            ok = True
        except ValueError:
            ok = False
        _check(ok, "variants", f"must be all or a comma list of {', '.join(GROUPS)}", self.variants)
        _check(self.calibration_images >= 1, "calibration_images", "must be >= 1",
               self.calibration_images)  # fmt: skip
        _check(0 <= self.fidelity_min_agreement <= 1, "fidelity_min_agreement",
               "is a fraction in [0, 1] (99% is 0.99)", self.fidelity_min_agreement)  # fmt: skip
        _check(self.fidelity_max_drop_pp >= 0, "fidelity_max_drop_pp",
               "must be >= 0 (percentage points)", self.fidelity_max_drop_pp)  # fmt: skip


@dataclass
class ExportOptions(_Checked):
    """What a run does after training: the speed step, the export and the steps beside it
    (corruption benchmark, review threshold, explanations, model repository)."""

    speed: bool = True
    """Measure latency and throughput after training: torch, ONNX Runtime and the --variants."""
    export: str = "pareto"
    """best | pareto (best + accuracy/latency Pareto front) | all | none | comma list of models."""
    robustness: str = "snr,s3"
    """Corruption benchmark on the test images after training: snr,s3 (Song & Yan's SNR levels
    50/40/30/20 dB plus every corruption at severity 3), full (severities 1-5), none, or a
    comma list of snr, s1..s5, NAME, NAME:SEVERITY, snr:DB. Deployment variants that passed
    fidelity are evaluated on the SNR levels."""
    robustness_seed: int = 0
    """Seed of the corruption draws (each image's draw also depends on its content hash, the
    corruption and the severity, so every model sees the same corrupted images)."""
    target_accuracy: float = 0.995
    """Accuracy the automatic decisions must reach: on the validation images, the smallest
    calibrated-confidence threshold whose images reach it becomes the review threshold
    stored in the export (images below it go to an inspector); its coverage and accuracy are
    reported on the test images."""
    explain: bool = True
    """Grad-CAM overlays for every misclassified test image and one correct image per class
    of each model (PNGs under <out>/explain/, embedded in report.html)."""
    embed_preprocessing: bool = False
    """Also write a raw-pixel copy of every exported file (<model>.raw.onnx beside it): uint8
    pixels in ([batch, H, W] grey, [batch, H, W, 3] RGB), scaling, grey-to-3-channel repeat and
    mean/std inside the graph, resize outside; its parity with the plain file on every test
    image is recorded."""
    export_repository: str | None = None
    """Also write a Triton / OpenVINO Model Server model repository of the exported files
    (raw-pixel input) into this folder: DIR/<model>/config.pbtxt, labels.txt, 1/model.onnx."""

    def _validate(self):
        _check(0 < self.target_accuracy <= 1, "target_accuracy", "must be in (0, 1], e.g. 0.995",
               self.target_accuracy)  # fmt: skip
        if self.export_repository:
            from exports.repository import RepositoryError, check_repository

            try:
                check_repository(Path(self.export_repository))
                why = ""
            except RepositoryError as e:
                why = str(e)
            _check(not why, "export_repository", why, self.export_repository)
        from neu.corrupt import CorruptionSpecError, parse_plan

        try:
            parse_plan(self.robustness)
        except CorruptionSpecError as e:
            raise ConfigError(f"{e} (got {self.robustness!r})") from None


@dataclass
class RunOptions(ExportOptions, SpeedOptions, TrainOptions, DataOptions, CommonOptions):
    """`bench run`: every group, flat (fields in the order common, data, train, speed, export)."""


@dataclass
class SpeedCommandOptions(SpeedOptions, CommonOptions):
    """`bench speed`: measure without training, on random weights or a checkpoint."""

    checkpoint: str | None = None
    """A best.pt to measure instead of random weights."""
    num_classes: int = 6
    """Head size of the random-weight models (without --checkpoint)."""
    ort_providers: str | None = None
    """ONNX Runtime providers to measure, e.g. cpu,cuda,tensorrt. Default: cpu, plus cuda and
    tensorrt when they really run on this machine. Named GPU providers that fall back to CPU
    are an error."""
    # The flags of DataOptions.data and Recipe.image_size (declared there, see SPEED_FLAGS);
    # None when not given: $NEU_DATA, and the checkpoint's image size (else 200 px).
    data: str | None = None
    image_size: int | None = None


# Each command's flags in --help order: (group title, class, its fields shown or None: all).
RUN_FLAGS = (
    ("models and machine", CommonOptions, None),
    ("data", DataOptions, None),
    ("train", TrainOptions, None),
    ("speed", SpeedOptions, None),
    ("after training", ExportOptions, None),
    ("recipe", Recipe, None),
)
SPEED_FLAGS = (
    ("models and machine", CommonOptions, None),
    ("data", DataOptions, ("data",)),
    ("recipe", Recipe, ("image_size",)),
    ("speed", SpeedOptions, None),
    ("checkpoint or random weights", SpeedCommandOptions,
     ("checkpoint", "num_classes", "ort_providers")),
)  # fmt: skip


def add_flags(parser: argparse.ArgumentParser, spec) -> None:
    """Every flag of RUN_FLAGS or SPEED_FLAGS, one argument group per option group."""
    for title, cls, names in spec:
        add_dataclass_args(parser, cls, title=title, only=names)


def speed_command_options(values: dict) -> SpeedCommandOptions:
    """`bench speed`'s parsed flags (absent when not given) as its options."""
    try:
        return SpeedCommandOptions(**values)
    except TypeError as e:
        raise ConfigError(str(e)) from None


# --- dataclass <-> argparse / TOML -----------------------------------------------------------


def field_docs(cls) -> dict[str, str]:
    """Attribute docstrings (the string literal under each field), as litgpt does; a group's
    fields keep their docstrings in every class made of it."""
    docs: dict[str, str] = {}
    for base in reversed(cls.__mro__):
        if dataclasses.is_dataclass(base):
            docs.update(_own_field_docs(base))
    return docs


def _own_field_docs(cls) -> dict[str, str]:
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body
    docs = {}
    for node, nxt in zip(body, body[1:], strict=False):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(nxt, ast.Expr)
            and isinstance(nxt.value, ast.Constant)
            and isinstance(nxt.value.value, str)
        ):
            docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


@functools.cache
def _hints(cls) -> dict:
    return typing.get_type_hints(cls)


def _base_type(annotation):
    hints = typing.get_args(annotation)
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        return next(h for h in hints if h is not type(None))
    return annotation


def literal_choices(annotation) -> tuple:
    """The values of a `Literal[...]` (or `Literal[...] | None`) annotation, else ()."""
    typ = _base_type(annotation)
    return typing.get_args(typ) if typing.get_origin(typ) is Literal else ()


def _value_type(annotation):
    """The Python type a field's values have: a Literal's is that of its choices."""
    choices = literal_choices(annotation)
    return type(choices[0]) if choices else _base_type(annotation)


def add_dataclass_args(parser: argparse.ArgumentParser, cls, *, title: str, only=None) -> None:
    """One flag per field (only those named in `only`, when given); defaults are SUPPRESS so
    we can tell what the user actually set."""
    group = parser.add_argument_group(title)
    docs = field_docs(cls)
    fields = dataclasses.fields(cls)
    unknown = set(only or ()) - {f.name for f in fields}
    if unknown:
        raise TypeError(f"{cls.__name__} has no fields {sorted(unknown)}")
    for f in fields:
        if only is not None and f.name not in only:
            continue
        default = f.default if f.default is not dataclasses.MISSING else None
        # argparse %-formats help strings.
        help_text = f"{docs.get(f.name, '')} (default: {default})".replace("%", "%%")
        group.add_argument(
            _flag(f.name),
            dest=f.name,
            default=argparse.SUPPRESS,
            help=help_text,
            **_argument_kind(_hints(cls)[f.name], f.name),
        )


def _argument_kind(annotation, name: str) -> dict:
    """add_argument's action, type, choices and metavar for a field's annotation."""
    typ = _value_type(annotation)
    if typ is bool:
        return {"action": argparse.BooleanOptionalAction}
    choices = literal_choices(annotation)
    if choices:
        return {"type": _parser_for(typ, name), "choices": choices}
    return {"type": _parser_for(typ, name), "metavar": typ.__name__.upper()}


def _parser_for(typ, name):
    def parse(text: str):
        try:
            return typ(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{_flag(name)} expects {typ.__name__}, got {text!r}"
            ) from None

    return parse


def load_toml(path: str | Path) -> dict:
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"--config {path}: file not found") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"--config {path}: invalid TOML ({e})") from None
    # Accept flat keys or [recipe] / [run] tables; dashes or underscores.
    flat = {}
    for key, value in data.items():
        if isinstance(value, dict) and key in ("recipe", "run"):
            flat.update(value)
        else:
            flat[key] = value
    return {k.replace("-", "_"): v for k, v in flat.items()}


def build_configs(args: dict, *, config_file: str | None = None) -> tuple[Recipe, RunOptions]:
    """Precedence: explicit flags > --config file > --quick preset > defaults."""
    values: dict = {}
    if args.get("quick"):
        values.update(QUICK_PRESET)
    given = set(args)
    if config_file:
        from_file = load_toml(config_file)
        values.update(from_file)
        given |= set(from_file)
    values.update(args)
    names = {f.name for f in dataclasses.fields(Recipe)} | {
        f.name for f in dataclasses.fields(RunOptions)
    }
    unknown = sorted(set(values) - names)
    if unknown:
        raise ConfigError(
            f"--config {config_file}: unknown keys {unknown}; valid keys are the flag names"
        )
    _check_types(values)
    recipe_keys = {f.name for f in dataclasses.fields(Recipe)}
    try:
        recipe = Recipe(**{k: v for k, v in values.items() if k in recipe_keys})
        run = RunOptions(**{k: v for k, v in values.items() if k not in recipe_keys})
    except TypeError as e:
        raise ConfigError(str(e)) from None
    if run.split:
        recipe = _recipe_of_manifest(recipe, run.split, given)
    return recipe, run


# Recipe field -> the split manifest's key for it: --split fixes all of them.
SPLIT_FLAGS = {
    "split_seed": "seed",
    "val_fraction": "val_fraction",
    "test_fraction": "test_fraction",
    "limit_per_class": "limit_per_class",
}


def _recipe_of_manifest(recipe: Recipe, manifest: str, given: set[str]) -> Recipe:
    """The recipe with the split flags the manifest was made with, so the results, report and
    resume fingerprint show the split actually used. A flag given (on the command line or in
    --config) that disagrees is an error naming both; an unreadable manifest is left to the
    data loader, which names what is wrong with it."""
    import json

    try:
        m = json.loads(Path(manifest).read_text())
        stated = {f: m[key] for f, key in SPLIT_FLAGS.items()}
    except (OSError, ValueError, KeyError, TypeError):
        return recipe
    for name, value in stated.items():
        if name in given and getattr(recipe, name) != value:
            raise ConfigError(
                f"{_flag(name)} {getattr(recipe, name)!r} disagrees with --split {manifest}, "
                f"which was made with {_flag(name)} {value!r}: the manifest fixes the split, "
                f"so drop {_flag(name)} (or drop --split to make a new split)"
            )
    return dataclasses.replace(recipe, **stated)


def _check_types(values: dict) -> None:
    """Flags are parsed by type already; this catches `epochs = "ten"` in a TOML file."""
    hints = {**_hints(Recipe), **_hints(RunOptions)}
    for key, value in values.items():
        typ = _value_type(hints[key])
        if value is None:
            continue
        ok = (
            isinstance(value, bool)
            if typ is bool
            else isinstance(value, (int, float)) and not isinstance(value, bool)
            if typ is float
            else isinstance(value, typ) and not isinstance(value, bool)
        )
        if not ok:
            raise ConfigError(f"{_flag(key)} expects {typ.__name__}, got {value!r}")


def to_dict(obj) -> dict:
    return dataclasses.asdict(obj)


__all__ = [
    "ConfigError",
    "CommonOptions",
    "DataOptions",
    "ExportOptions",
    "Recipe",
    "RunOptions",
    "RUN_FLAGS",
    "SPEED_FLAGS",
    "SpeedCommandOptions",
    "SpeedOptions",
    "TrainOptions",
    "QUICK_PRESET",
    "add_dataclass_args",
    "add_flags",
    "build_configs",
    "field_docs",
    "literal_choices",
    "load_toml",
    "speed_command_options",
    "to_dict",
]


# --variants groups, in the order rows are shown.
GROUPS = ("fp32", "int8", "fp16", "bf16", "compile", "openvino")


def parse_variants(text: str | None) -> tuple[str, ...]:
    """'all' / None -> every group; else a comma list of GROUPS (error names the flag)."""
    if text is None or text.strip() in ("", "all"):
        return GROUPS
    wanted = tuple(v.strip() for v in text.split(",") if v.strip())
    unknown = [v for v in wanted if v not in GROUPS]
    if unknown or not wanted:
        raise ValueError(
            f"--variants {text!r}: unknown {unknown}; choose from all, {', '.join(GROUPS)}"
        )
    return wanted
