"""`bench run`: the sweep. Data once, then every (model, seed), then speed, export and parity.

Each step leaves a complete, atomically written record: results.json is rewritten after
every model, so an interrupted sweep shows what finished, and re-running the same command
skips it and resumes the rest.
"""

from __future__ import annotations

import hashlib
import json
import time
import traceback
from pathlib import Path

import torch

from bench.amp import resolve_precision
from bench.config import ConfigError, Recipe, RunOptions, to_dict
from bench.device import pick_device
from bench.device import utc_now as _now
from bench.registry import build_model, resolve_models, resolve_weights
from bench.report import core as report
from bench.summary import summarize, summarize_models
from bench.train.distributed import setup, teardown
from bench.train.loop import Context, train_one

SCHEMA_VERSION = 1


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


def run(recipe: Recipe, opts: RunOptions, reporter) -> tuple[dict, int]:
    """The whole `bench run`. Returns (results, exit code)."""
    started = time.perf_counter()
    names = resolve_models(opts.models)  # unknown names fail here, before any work
    if opts.tensorboard:
        from bench.train.tblog import summary_writer_class

        summary_writer_class()  # not installed: a clear error now, not after loading data
    seeds = opts.seed_list
    # Under torchrun: join its process group (one GPU per local rank, or gloo on CPU).
    d, dist_device = setup(opts.device, opts.dist_timeout_s)
    try:
        return _run(recipe, opts, reporter, d, dist_device, names, seeds, started)
    finally:
        teardown(d)


def _run(recipe, opts, reporter, d, dist_device, names, seeds, started):
    from bench import measure as speed
    from neu.split import save_manifest

    if not d.is_main:
        from bench.ui import NullReporter

        reporter = NullReporter()  # rank 0 speaks for the run
    device = dist_device or pick_device(opts.device)
    configure_torch(opts, device)

    # Rank 0 decodes (and caches) first; the others then read its cache.
    if d.is_main:
        ds, splits = load_data(recipe, opts)
    d.barrier()
    if not d.is_main:
        ds, splits = load_data(recipe, opts)
    name = opts.name or default_name(recipe, opts, names)
    out = Path(opts.out or Path("runs") / name)
    out.mkdir(parents=True, exist_ok=True)
    if opts.tensorboard and d.is_main:  # rank 0 alone writes files
        from bench.train.tblog import TensorBoardReporter

        reporter = TensorBoardReporter(reporter, out / "tensorboard")
        reporter.log(f"TensorBoard curves: tensorboard --logdir {out / 'tensorboard'}")
    precision = resolve_precision(device, recipe.amp)
    fingerprint = recipe_fingerprint(recipe, ds, splits, precision.name)
    accepted = {fingerprint} | legacy_fingerprints(recipe, ds, splits, precision.name, device)
    previous = out / "results.json"
    if previous.exists():
        old = json.loads(previous.read_text())
        if old.get("recipe_hash") in accepted:
            fingerprint = old["recipe_hash"]  # an older version's run keeps its hash
        else:
            raise ConfigError(
                f"--out {out} holds a run with another recipe, precision or dataset "
                f"({old.get('recipe_hash')} != {fingerprint}); pick a new --out/--name "
                "or delete that folder"
            )
    if d.is_main:
        for split in splits:
            save_manifest(split, ds, out / manifest_name(split))

    # Weights are settled for every model before the first epoch: a missing file fails now.
    weights = {n: resolve_weights(n, recipe.weights) for n in names}
    for n, w in weights.items():
        if recipe.weights == "auto" and w == "none":
            reporter.warn(
                f"{n}: ImageNet weights cannot be obtained here; training FROM SCRATCH "
                "(lr 1e-3). Put the torchvision weights file in $TORCH_HOME/hub/checkpoints "
                "to fine-tune instead."
            )
    model_info = {}
    for n in names:
        try:
            m = build_model(n, num_classes=len(ds.classes))
            model_info[n] = {
                "params_m": speed.count_params(m) / 1e6,
                "gflops": speed.count_gflops(m, recipe.image_size),
            }
        except Exception as e:  # recorded in the model's row when its training fails too
            model_info[n] = {"params_m": None, "gflops": None, "error": f"{e}"}
    if device.type == "cpu":
        reporter.warn(
            "no CUDA device: training on CPU. A full --models all run at 200 px takes hours "
            "here; --quick gives a first look in minutes. An estimate follows after the "
            "first batches."
        )
    reporter.log(f"training precision: {precision.name} ({precision.reason})")

    env = speed.environment()
    results = {
        "schema_version": SCHEMA_VERSION,
        "name": name,
        "quick": opts.quick,
        "created": _now(),
        "recipe": to_dict(recipe),
        "run": to_dict(opts),
        "recipe_hash": fingerprint,
        "environment": {**env, "device": _device_name(device, env)},
        "dataset": dataset_record(ds, splits),
        "weights": weights,
        "precision": {"amp": precision.name, "amp_reason": precision.reason},
        "compile": opts.compile,
        "models": model_info,
        "sweep": {},
        "rows": [],
        "speed": [],
        "exports": [],
    }
    if previous.exists():  # keep what a previous attempt measured
        results["created"] = old.get("created", results["created"])

    # One Context per fold (one in all without --folds); the first places the images (GPU,
    # RAM or the cache's map) and the others share them.
    contexts: dict = {}
    for split in splits:
        contexts[split.fold] = Context(
            ds,
            split,
            recipe,
            device,
            deterministic=opts.deterministic,
            compile=opts.compile,
            data_placement=opts.data_placement,
            memory_budget_mb=opts.memory_budget_mb,
            dist=d,
            images_from=next(iter(contexts.values()), None),
        )
    ctx = contexts[splits[0].fold]
    results["distributed"] = d.record(device)
    if d.enabled:
        reporter.log(
            f"distributed: {d.world_size} ranks, {d.backend}; global batch {recipe.batch_size}"
        )
    reporter.log(f"data placement: {ctx.placement} ({ctx.placement_reason})")
    results["data_placement"] = ctx.placement_record()

    # One run per model x seed x fold; a run whose folder has metrics.json finished earlier
    # (train_one then reads its row back instead of training).
    to_train = {
        n: sum(
            not (out / _run_folder(n, s, f) / "metrics.json").exists()
            for s in seeds
            for f in contexts
        )
        for n in names
    }
    runs, trained = len(names) * len(seeds) * len(splits), sum(to_train.values())
    results["sweep"].update(runs=runs, runs_trained=trained, runs_finished_earlier=runs - trained)
    if not trained:
        reporter.log("every run finished in an earlier invocation: nothing to train")
    reporter.estimate = _estimator(model_info, to_train, results["sweep"])
    reporter.start_sweep(runs)
    train_started = time.perf_counter()
    for n in names:
        for seed in seeds:
            for fold, fold_ctx in contexts.items():
                rel = _run_folder(n, seed, fold)
                folder = out / rel
                try:
                    row = train_one(
                        n,
                        seed,
                        fold_ctx,
                        folder,
                        weights=weights[n],
                        reporter=reporter,
                        recipe_hash=fingerprint,
                        legacy_hashes=accepted,
                        fold=fold,
                        checkpoint=str(rel / "best.pt"),
                    )
                    row.update(model_info[n])
                except KeyboardInterrupt:
                    raise
                except Exception as e:  # one model's failure must not stop the sweep
                    if d.enabled:
                        raise  # ...but the other ranks are in its collectives: end the run
                    row = failed_row(n, seed, e, weights[n], fold)
                    row.update(amp=precision.name, amp_reason=precision.reason)
                    (folder / "error.txt").parent.mkdir(parents=True, exist_ok=True)
                    from neu._io import atomic_write_text

                    atomic_write_text(folder / "error.txt", traceback.format_exc())
                    if device.type == "cuda":
                        torch.cuda.empty_cache()
                results["rows"].append(row)
                results["summary"] = summarize_models(results["rows"])  # interim views
                reporter.end_model(row)
                results["sweep"]["train_seconds_actual"] = time.perf_counter() - train_started
                if d.is_main:
                    report.write_outputs(out, results)

    if not d.is_main:  # speed, export and the report are rank 0's, without collectives
        return results, 0
    # Computed once: every later step and view reads these keys.
    results.update(summarize(out, results))
    from bench.measure.step import record_checkpoint_sizes

    record_checkpoint_sizes(results, out)  # shown in the report with or without --no-speed
    staged: dict[str, Path] = {}  # model -> ONNX file the speed step exported (see there)
    if opts.speed:
        from bench.measure.step import measure_speed

        t = time.perf_counter()
        results.update(measure_speed(results, out, ctx, opts, reporter, staged))
        results["sweep"]["speed_seconds_actual"] = time.perf_counter() - t
        report.write_outputs(out, results)
    if opts.robustness != "none":
        _robustness(results, out, opts, reporter, staged)
    _calibrate_and_explain(results, out, contexts, opts, reporter)
    from bench.release.export import export_and_verify

    t = time.perf_counter()
    export_and_verify(results, out, ctx, opts, reporter, contexts=contexts, staged=staged)
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


def _calibrate_and_explain(results, out, contexts, opts, reporter) -> None:
    """Temperature, review threshold (bench.release.calibrate) and Grad-CAM (bench.release.explain) of every
    trained model; after the speed step, whose deployment variants' logits they also score."""
    from bench.release.calibrate import calibrate_into

    if not any(r["status"] == "ok" for r in results["rows"]):
        return
    t = time.perf_counter()
    calibrate_into(results, out, contexts, opts.target_accuracy, reporter)
    if opts.explain:
        from bench.release.explain import explain_into

        explain_into(results, out, contexts, reporter)
    results["sweep"]["calibration_seconds_actual"] = time.perf_counter() - t
    report.write_outputs(out, results)


def _run_folder(model: str, seed: int, fold) -> Path:
    """A run's folder under --out; without cross-validation it stays <model>/seed<k>, so
    runs of older versions resume."""
    return Path(model) / f"seed{seed}" / ("" if fold is None else f"fold{fold}")


def _device_name(device: torch.device, env: dict) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return env.get("cpu") or "cpu"


def _estimator(model_info: dict, to_train: dict[str, int], record: dict):
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
