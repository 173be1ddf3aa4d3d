"""`bench run`: data once, then the sweep of every (model, seed, fold) (bench.train.sweep), then
summary, speed, robustness, calibration, export and parity.

Each step leaves a complete, atomically written record: results.json is rewritten after
every model, so an interrupted sweep shows what finished, and re-running the same command
skips it and resumes the rest.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import torch

from bench.amp import resolve_precision
from bench.config import ConfigError, Recipe, RunOptions, to_dict
from bench.device import pick_device
from bench.device import utc_now as _now
from bench.registry import build_model, resolve_models, resolve_weights
from bench.report import core as report
from bench.summary import summarize
from bench.train.distributed import setup, teardown
from bench.train.folds import place_folds
from bench.train.sweep import Sweep
from bench.ui import NullReporter
from exports.contract import RESULTS_SCHEMA_VERSION
from neu.split import save_manifest


def default_name(recipe: Recipe, opts: RunOptions, names: list[str]) -> str:
    models = "all" if opts.models == "all" else "-".join(names)[:60]
    return f"{'quick-' if opts.quick else ''}{models}-{recipe.image_size}px"


def configure_torch(opts: RunOptions, device: torch.device) -> None:
    if opts.threads:
        torch.set_num_threads(opts.threads)
    if opts.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input sizes: let cuDNN pick the fastest


def load_data(recipe: Recipe, opts: RunOptions):
    """The dataset and its splits: one, or one per cross-validation fold."""
    from neu.dataset import load_dataset
    from neu.split import load_manifest, make_split

    if opts.split and recipe.folds > 1:
        raise ConfigError(
            f"--split {opts.split} fixes one train/val/test split, --folds {recipe.folds} makes "
            "its own: drop one of them"
        )
    ds = load_dataset(
        opts.data_path(),
        image_size=recipe.image_size,
        layout=opts.layout,
        exclude_bad=opts.exclude_bad,
    )
    if opts.split:
        return ds, [load_manifest(opts.split, ds)]
    splits = [
        make_split(
            ds,
            seed=recipe.split_seed,
            val_fraction=recipe.val_fraction,
            test_fraction=recipe.test_fraction,
            limit_per_class=recipe.limit_per_class,
            folds=recipe.folds,
            fold=k if recipe.folds > 1 else None,
        )
        for k in range(recipe.folds)
    ]
    return ds, splits


def manifest_name(split) -> str:
    return "split.json" if split.folds == 1 else f"split_fold{split.fold}.json"


def dataset_record(ds, splits) -> dict:
    """The dataset and its split(s); with cross-validation, `split` describes fold 0 and
    `folds` every fold."""
    split = splits[0]
    record = _dataset_record(ds, split)
    if len(splits) > 1:
        record["split_hash"] = _joint_hash(splits)
        record["manifest"] = [manifest_name(s) for s in splits]
        record["folds"] = [
            {"fold": s.fold, "split_hash": s.split_hash, **_split_sizes(s), **_split_norm(s)}
            for s in splits
        ]
    return record


def _joint_hash(splits) -> str:
    return hashlib.sha256(":".join(s.split_hash for s in splits).encode()).hexdigest()


def _split_sizes(split) -> dict:
    return {
        "train_images": len(split.train),
        "val_images": len(split.val),
        "test_images": len(split.test),
    }


def _split_norm(split) -> dict:
    return {"mean": [float(v) for v in split.mean], "std": [float(v) for v in split.std]}


def _dataset_record(ds, split) -> dict:
    labels = list(ds.labels)
    return {
        "root": str(ds.root),
        "layout": ds.layout,
        "num_images": len(ds.files),
        "channels": int(ds.channels),
        "classes": {c: labels.count(i) for i, c in enumerate(ds.classes)},
        "dataset_hash": ds.dataset_hash,
        "split_hash": split.split_hash,
        "split": {
            "source": split.source,
            "seed": split.seed,
            "val_fraction": split.val_fraction,
            "test_fraction": split.test_fraction,
            "limit_per_class": split.limit_per_class,
            "folds": split.folds,
            **_split_sizes(split),
        },
        **_split_norm(split),
        "normalisation": "mean/std of the training split",
        "duplicates": ds.duplicates,
        "excluded": [{"file": p.file, "problem": p.problem} for p in ds.excluded],
        "manifest": "split.json",
    }


def _fingerprint(recipe_dict: dict, ds, splits) -> str:
    # One split: its own hash (as before --folds existed, so older runs resume); K folds: all.
    key = splits[0].split_hash if len(splits) == 1 else _joint_hash(splits)
    blob = json.dumps([recipe_dict, ds.dataset_hash, key], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


# Recipe fields that change how fast a model trains or evaluates, never what it learns.
_EXECUTION_ONLY = ("eval_batch_size",)


# Recipe fields added later whose default leaves training unchanged: left out of the hash at
# their default, so runs made before they existed still resume.
_OFF_BY_DEFAULT = {"augment_corruptions": False}


def _recipe_dict(recipe: Recipe) -> dict:
    d = to_dict(recipe)
    for key, default in _OFF_BY_DEFAULT.items():
        if d.get(key) == default:
            d.pop(key)
    return d


def recipe_fingerprint(recipe: Recipe, ds, splits, precision: str) -> str:
    """What the trained weights depend on: the recipe with --amp resolved to the precision
    actually used (auto means fp32 on one CPU and bf16 on another), data and split(s)."""
    d = {**_recipe_dict(recipe), "amp": precision}
    for key in _EXECUTION_ONLY:
        d.pop(key)
    return _fingerprint(d, ds, splits)


def legacy_fingerprints(recipe: Recipe, ds, splits, precision: str, device) -> set[str]:
    """The fingerprints neu-bench gave the same training before --amp had choices (amp was a
    bool, used on CUDA only; eval_batch_size, default 64, was hashed too; no --folds), so
    runs started then still resume."""
    if recipe.folds != 1:
        return set()
    if device.type == "cuda":
        old_auto = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        amps = [True] if precision == old_auto else [False] if precision == "fp32" else []
    else:
        amps = [True, False] if precision == "fp32" else []
    old = {k: v for k, v in _recipe_dict(recipe).items() if k != "folds"}
    return {
        _fingerprint({**old, "amp": amp, "eval_batch_size": ebs}, ds, splits)
        for amp in amps
        for ebs in {recipe.eval_batch_size, 64}
    }


def run(recipe: Recipe, opts: RunOptions, reporter) -> tuple[dict, int]:
    """The whole `bench run`. Returns (results, exit code)."""
    started = time.perf_counter()
    names = resolve_models(opts.models)  # unknown names fail here, before any work
    if opts.tensorboard:
        from bench.train.tblog import summary_writer_class

        summary_writer_class()  # not installed: a clear error now, not after loading data
    # Under torchrun: join its process group (one GPU per local rank, or gloo on CPU).
    d, dist_device = setup(opts.device, opts.dist_timeout_s)
    try:
        if not d.is_main:
            reporter = NullReporter()  # rank 0 speaks for the run
        device = dist_device or pick_device(opts.device)
        configure_torch(opts, device)
        out, results, sweep = prepare(recipe, opts, names, device, d, reporter)
        sweep.run(results)
        if not d.is_main:  # speed, export and the report are rank 0's, without collectives
            return results, 0
        return _after_training(results, out, sweep.folds, opts, sweep.reporter, started)
    finally:
        teardown(d)


def prepare(recipe: Recipe, opts: RunOptions, names, device, d, reporter):
    """Everything before the first epoch -> (--out, results.json so far, the Sweep): data and
    split manifests, the resume check, weights and model sizes, the placed folds."""
    ds, splits = _load_data_in_rank_order(recipe, opts, d)
    name = opts.name or default_name(recipe, opts, names)
    out = Path(opts.out or Path("runs") / name)
    out.mkdir(parents=True, exist_ok=True)
    if opts.tensorboard and d.is_main:  # rank 0 alone writes files
        reporter = _tensorboard(reporter, out)
    precision = resolve_precision(device, recipe.amp)
    fingerprint, accepted, previous = _fingerprint_for(out, recipe, ds, splits, precision, device)
    if d.is_main:
        for split in splits:
            save_manifest(split, ds, out / manifest_name(split))
    weights = _weights(names, recipe, reporter)
    model_info = _model_info(names, len(ds.classes), recipe.image_size)
    if device.type == "cpu":
        reporter.warn(
            "no CUDA device: training on CPU. A full --models all run at 200 px takes hours "
            "here; --quick gives a first look in minutes. An estimate follows after the "
            "first batches."
        )
    reporter.log(f"training precision: {precision.name} ({precision.reason})")
    results = {
        **_header(name, recipe, opts, fingerprint, device, ds, splits),
        "weights": weights,
        "precision": {"amp": precision.name, "amp_reason": precision.reason},
        "compile": opts.compile,
        "models": model_info,
        "sweep": {},
        "rows": [],
        "speed": [],
        "exports": [],
    }
    if previous is not None:  # keep what a previous attempt measured
        results["created"] = previous.get("created", results["created"])
    folds = place_folds(ds, splits, recipe, device, deterministic=opts.deterministic,
                        compile=opts.compile, data_placement=opts.data_placement,
                        memory_budget_mb=opts.memory_budget_mb, dist=d)  # fmt: skip
    _record_placement(results, folds, d, device, recipe.batch_size, reporter)
    save = (lambda r: report.write_outputs(out, r)) if d.is_main else (lambda r: None)
    sweep = Sweep(out=out, folds=folds, names=names, seeds=opts.seed_list, weights=weights,
                  model_info=model_info, recipe_hash=fingerprint, accepted_hashes=accepted,
                  reporter=reporter, save=save)  # fmt: skip
    return out, results, sweep


def _load_data_in_rank_order(recipe: Recipe, opts: RunOptions, d):
    """load_data; under torchrun rank 0 decodes (and caches) first, the others then read its
    cache."""
    if d.is_main:
        ds, splits = load_data(recipe, opts)
    d.barrier()
    if not d.is_main:
        ds, splits = load_data(recipe, opts)
    return ds, splits


def _tensorboard(reporter, out: Path):
    from bench.train.tblog import TensorBoardReporter

    reporter = TensorBoardReporter(reporter, out / "tensorboard")
    reporter.log(f"TensorBoard curves: tensorboard --logdir {out / 'tensorboard'}")
    return reporter


def _fingerprint_for(out: Path, recipe: Recipe, ds, splits, precision, device):
    """(the run's recipe fingerprint, every fingerprint whose checkpoints resume, the previous
    results.json or None). A folder holding a run of another recipe, precision or dataset is
    refused; one started by an older version keeps that version's fingerprint."""
    fingerprint = recipe_fingerprint(recipe, ds, splits, precision.name)
    accepted = {fingerprint} | legacy_fingerprints(recipe, ds, splits, precision.name, device)
    previous = out / "results.json"
    if not previous.exists():
        return fingerprint, accepted, None
    old = json.loads(previous.read_text())
    if old.get("recipe_hash") not in accepted:
        raise ConfigError(
            f"--out {out} holds a run with another recipe, precision or dataset "
            f"({old.get('recipe_hash')} != {fingerprint}); pick a new --out/--name "
            "or delete that folder"
        )
    return old["recipe_hash"], accepted, old


def _weights(names: list[str], recipe: Recipe, reporter) -> dict[str, str]:
    """model -> the weights it starts from, settled before the first epoch: a missing file
    fails now."""
    weights = {n: resolve_weights(n, recipe.weights) for n in names}
    for n, w in weights.items():
        if recipe.weights == "auto" and w == "none":
            reporter.warn(
                f"{n}: ImageNet weights cannot be obtained here; training FROM SCRATCH "
                "(lr 1e-3). Put the torchvision weights file in $TORCH_HOME/hub/checkpoints "
                "to fine-tune instead."
            )
    return weights


def _model_info(names: list[str], num_classes: int, image_size: int) -> dict[str, dict]:
    """model -> params_m, gflops (results.json `models`, and every row of the model)."""
    from bench import measure as speed

    info = {}
    for n in names:
        try:
            m = build_model(n, num_classes=num_classes)
            info[n] = {
                "params_m": speed.count_params(m) / 1e6,
                "gflops": speed.count_gflops(m, image_size),
            }
        except Exception as e:  # recorded in the model's row when its training fails too
            info[n] = {"params_m": None, "gflops": None, "error": f"{e}"}
    return info


def _header(name, recipe, opts, fingerprint, device, ds, splits) -> dict:
    """results.json's first keys: what was run, where, on which data."""
    from bench import measure as speed

    env = speed.environment()
    return {
        "schema_version": RESULTS_SCHEMA_VERSION,
        "name": name,
        "quick": opts.quick,
        "created": _now(),
        "recipe": to_dict(recipe),
        "run": to_dict(opts),
        "recipe_hash": fingerprint,
        "environment": {**env, "device": _device_name(device, env)},
        "dataset": dataset_record(ds, splits),
    }


def _record_placement(results: dict, folds: dict, d, device, batch_size: int, reporter):
    """results.json `distributed` (every rank's host and device) and `data_placement`."""
    data = next(iter(folds.values()))
    results["distributed"] = d.record(device)
    if d.enabled:
        reporter.log(f"distributed: {d.world_size} ranks, {d.backend}; global batch {batch_size}")
    reporter.log(f"data placement: {data.placement} ({data.placement_reason})")
    results["data_placement"] = data.placement_record()


def _after_training(results: dict, out: Path, folds: dict, opts: RunOptions, reporter, started):
    """Rank 0, once the sweep is done: summary, speed, robustness, calibration and Grad-CAM,
    export and parity, the final report. -> (results, exit code)."""
    ctx = next(iter(folds.values()))
    # Computed once: every later step and view reads these keys.
    results.update(summarize(out, results))
    from bench.measure.step import checkpoint_sizes_section
    from bench.release.section import assign

    assign(results, checkpoint_sizes_section(results, out))  # in the report with --no-speed too
    staged: dict[str, Path] = {}  # model -> ONNX file the speed step exported (see there)
    if opts.speed:
        from bench.measure.step import measure_speed

        t = time.perf_counter()
        section = measure_speed(results, out, ctx, opts, reporter, staged)
        # Models whose rows an interrupted earlier attempt had measured: they cost no time here.
        results["sweep"]["speed_models_kept"] = section.pop("speed_models_kept")
        assign(results, section)
        results["sweep"]["speed_seconds_actual"] = time.perf_counter() - t
        report.write_outputs(out, results)
    if opts.robustness != "none":
        _robustness(results, out, opts, reporter, staged)
    _calibrate_and_explain(results, out, folds, opts, reporter)
    from bench.release.export import export_and_verify

    t = time.perf_counter()
    export_and_verify(results, out, ctx, opts, reporter, contexts=folds, staged=staged)
    results["sweep"]["export_seconds_actual"] = time.perf_counter() - t
    results["updated"] = _now()
    results["sweep"]["seconds_actual"] = time.perf_counter() - started
    failed = [r for r in results["rows"] if r["status"] != "ok"]
    parity_failed = [e for e in results["exports"] if not e.get("parity_passed")]
    results["status"] = "ok" if not failed and not parity_failed else "failed"
    report.write_outputs(out, results, final=True)
    return results, 1 if failed or parity_failed else 0


def _robustness(results, out, opts, reporter, staged) -> None:
    """The corruption benchmark (bench.release.robustness) on the files the speed step proved
    faithful; a failure is recorded, never fatal to the results and exports."""
    from bench.release.robustness import robustness_step

    t = time.perf_counter()
    try:
        robustness_step(results, out, data=opts.data_path(), spec=opts.robustness,
                        seed=opts.robustness_seed, threads=opts.threads, staged=staged,
                        log=reporter.log, layout=opts.layout)  # fmt: skip
    except Exception as e:
        results["robustness_error"] = f"{type(e).__name__}: {e}"
        reporter.warn(f"robustness benchmark failed: {results['robustness_error']}")
    results["sweep"]["robustness_seconds_actual"] = time.perf_counter() - t
    report.write_outputs(out, results)


def _calibrate_and_explain(results, out, folds, opts, reporter) -> None:
    """Temperature, review threshold (bench.release.calibrate) and Grad-CAM
    (bench.release.explain) of every trained model; after the speed step, whose deployment
    variants' logits they also score."""
    from bench.release.calibrate import calibrate_into

    if not any(r["status"] == "ok" for r in results["rows"]):
        return
    t = time.perf_counter()
    calibrate_into(results, out, folds, opts.target_accuracy, reporter)
    if opts.explain:
        from bench.release.explain import explain_into

        explain_into(results, out, folds, reporter)
    results["sweep"]["calibration_seconds_actual"] = time.perf_counter() - t
    report.write_outputs(out, results)


def _device_name(device: torch.device, env: dict) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return env.get("cpu") or "cpu"
