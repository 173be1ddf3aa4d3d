"""Measuring trained models: speed rows, deployment variants and their recommendation.

`measure_model` times and judges one model (torch eager and ONNX Runtime FP32 always, the
deployment variants of --variants, the GPU rows on CUDA) in one interleaved window;
`measure_speed` runs it for each model's best seed after `bench run` trains and returns the
speed step's section of results.json (`speed_section`). `bench speed` (bench.cli.speed) calls
the same `measure_model` without training; the export step that follows a run is
bench.release.export.
"""

from __future__ import annotations

from pathlib import Path

import torch

from bench import measure as speed
from bench.registry import load_checkpoint
from bench.summary import best_rows
from exports.checkpoint import export_metadata

BATCH_SIZES = (1, 32)


def checkpoint_sizes_section(results: dict, out: Path) -> dict:
    """{"models": {name: {"checkpoint_size_mb"}}} of each model's shipped checkpoint (best
    seed), with or without the speed step: the file exists once training has saved it."""
    sizes = {}
    for name, row in best_rows(results).items():
        ckpt = out / row["checkpoint"]
        if ckpt.is_file():
            sizes[name] = {"checkpoint_size_mb": speed.file_size_mb(ckpt)}
    return {"models": sizes}


def row_metadata(meta: dict, row: dict) -> dict:
    """The export metadata of a run row's checkpoint: its own preprocessing and provenance,
    plus the figures measured after it was saved (the row's val and test accuracy)."""
    return export_metadata(
        meta,
        val_accuracy=row["val_accuracy"],
        test_accuracy=row.get("test_accuracy"),
        test_images=row.get("test_images"),
    )


def measure_speed(results: dict, out: Path, ctx, opts, reporter, staged=None) -> dict:
    """The speed step's section of results.json: training row + every inference row of each
    model's best seed (`speed`), the deployment rows, their ratios and recommendation
    (speed_section). results itself is only read.

    The checkpoint is exported to ONNX first (out/variants/<model>/<model>.onnx, where its
    INT8/FP16 copies are made) so that torch and ONNX Runtime are measured in the same
    interleaved rounds (bench.measure.driver), minutes apart no more. staged: model -> that
    file, for the export step to move into exports/ rather than export the same checkpoint
    with the same metadata a second time (a minute per large model on a CPU).
    """
    from bench.measure.deployment import SpeedSettings

    settings = SpeedSettings.from_options(opts, ctx.device)
    rows, deployment, kept = [], [], []
    for name, row in best_rows(results).items():
        rows.append(training_row(row, ctx))
        work = out / "variants" / name  # where _measure_best writes the model's files
        key = measurement_key(results, out / row["checkpoint"], settings, opts)
        earlier = earlier_measurement(work, key)
        if earlier is not None:  # this run was interrupted after measuring the model
            reporter.log(f"[{name}] speed and deployment rows kept from an earlier attempt "
                         f"of this run ({work / MEASURED}; delete it to measure "
                         "again)")  # fmt: skip
            rows += earlier["speed"]
            deployment += earlier["deployment"]
            kept.append(name)
            if staged is not None:
                staged[name] = work / f"{name}.onnx"
            continue
        model, meta = load_checkpoint(out / row["checkpoint"])
        try:
            speed_rows, dep_rows = _measure_best(model, meta, row, out, ctx, opts, settings,
                                                 reporter, staged)  # fmt: skip
            rows += speed_rows
            deployment += dep_rows
            save_measurement(work, key, speed_rows, dep_rows)
        except Exception as e:  # a speed failure is recorded, never fatal to the results
            rows.append({"model": name, "runtime": "torch", "error": f"{type(e).__name__}: {e}"})
        del model
    section = speed_section(rows, deployment, out)
    section["speed_models_kept"] = kept
    return section


# Beside each model's variant files: its rows and what they were measured with, so that a run
# killed during the speed step (minutes per model on a CPU) resumes with the next model.
MEASURED = "measured.json"


def measurement_key(results: dict, checkpoint: Path, settings, opts) -> dict:
    """What a model's speed and deployment rows depend on: the checkpoint's bytes, the run's
    recipe and data (recipe_hash), the speed flags as resolved here, the calibration sample
    and the machine and runtimes. Rows are reused only under an equal key."""
    from bench.measure.robustness import file_sha256

    env = results.get("environment", {})
    machine = ("cpu", "cpu_isa_class", "cpu_affinity", "torch", "onnxruntime", "openvino",
               "ort_available_providers", "cuda_device")  # fmt: skip
    return {
        "schema_version": results.get("schema_version"),
        "recipe_hash": results.get("recipe_hash"),
        "checkpoint_sha256": file_sha256(checkpoint),
        "settings": repr(settings),
        "calibration_images": opts.calibration_images,
        "environment": {k: env.get(k) for k in machine},
    }


def earlier_measurement(work_dir: Path, key: dict) -> dict | None:
    """{"speed", "deployment"} saved by save_measurement under an equal key, while every file
    it listed in work_dir is still there with its size; else None (measure again)."""
    import json

    path = work_dir / MEASURED
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if saved.get("key") != key:
        return None
    for fname, size in saved.get("files", {}).items():
        f = work_dir / fname
        if not f.is_file() or f.stat().st_size != size:
            return None
    return saved


def save_measurement(work_dir: Path, key: dict, speed_rows: list, dep_rows: list) -> None:
    from neu._io import atomic_write_json

    files = {f.name: f.stat().st_size for f in sorted(work_dir.iterdir())
             if f.is_file() and f.name != MEASURED and not f.name.startswith(".")}  # fmt: skip
    atomic_write_json(work_dir / MEASURED, {"key": key, "files": files, "speed": speed_rows,
                                            "deployment": dep_rows})  # fmt: skip


def _measure_best(model, meta, row, out, ctx, opts, settings, reporter, staged):
    """(speed rows, deployment rows) of one model's shipped checkpoint (its best seed)."""
    from exports.export import export_onnx

    name = row["model"]
    onnx_path = out / "variants" / name / f"{name}.onnx"
    reporter.log(f"[{name}] exporting to ONNX for the speed rounds ({onnx_path})")
    export_onnx(model, onnx_path, metadata=row_metadata(meta, row), image_size=meta["image_size"])
    if staged is not None:
        staged[name] = onnx_path
    reporter.log(
        f"[{name}] measuring deployment variants ({opts.variants}) on "
        f"{ctx.device}, {opts.speed_rounds} interleaved rounds"
    )
    speed_rows, dep_rows, notes = measure_model(
        model,
        name=name,
        onnx_path=onnx_path,
        out=out,
        image_size=ctx.recipe.image_size,
        settings=settings,
        calibration=_train_calibration(ctx, opts),
        fidelity=_fidelity_images(ctx),
        log=reporter.log,
    )
    for note in notes:  # GPU provider not really usable: say so, never mislabel
        reporter.log(note)
    return speed_rows, dep_rows


def measure_model(
    model, *, name, onnx_path, out, image_size, settings, calibration, fidelity, log
) -> tuple[list[dict], list[dict], list[str]]:
    """(speed rows, deployment rows, notes) of one model, as `settings`
    (bench.measure.deployment.SpeedSettings) say.

    settings.gpu_rows: also the GPU rows (torch AMP, every ONNX Runtime GPU provider, largest
    batch) on CUDA or for explicitly named providers; the deployment variants (torch eager and
    ORT FP32 among them, all in one window) always. On a plain CPU run the variants' own
    timed cases are the speed rows, so nothing is measured twice.
    """
    from bench.measure.deployment import measure_deployment

    notes: list[str] = []
    rows: list[dict] = []
    if settings.gpu_rows:
        log(f"[{name}] measuring torch and onnxruntime providers on {settings.device}")
        rows += speed.speed_rows_for_model(
            model,
            name=name,
            image_size=image_size,
            onnx_path=onnx_path,
            device=settings.device,
            batch_sizes=BATCH_SIZES,
            providers=settings.providers,
            threads=settings.threads,
            rounds=settings.rounds,
            timing=settings.timing,
            notes=notes,
            strict_providers=settings.strict_providers,
        )
    dep_rows, dep_speed = measure_deployment(
        model,
        name=name,
        fp32_onnx=onnx_path,
        work_dir=out / "variants" / name,
        image_size=image_size,
        calibration=calibration,
        fidelity=fidelity,
        settings=settings,
        log=log,
    )
    return (rows if settings.gpu_rows else dep_speed), dep_rows, notes


def _train_calibration(ctx, opts):
    """INT8 calibration images: a seeded, class-stratified sample of the TRAINING split."""
    from bench.measure.deployment import CalibrationData
    from exports.quantize import calibration_indices

    idx = calibration_indices(
        ctx.labels.cpu().numpy(),
        ctx.train_idx.cpu().numpy(),
        opts.calibration_images,
        seed=ctx.recipe.split_seed,
    )
    x = ctx.eval_inputs(torch.as_tensor(idx, device=ctx.images.device))
    return CalibrationData(
        inputs=x.float().cpu().contiguous().numpy(),
        seed=ctx.recipe.split_seed,
        source="train split",
    )


def _fidelity_images(ctx):
    """Every test image (the validation images when the split has no test part)."""
    from bench.measure.deployment import FidelityData

    idx, source = ctx.test_idx, "test split"
    if len(idx) == 0:
        idx, source = ctx.val_idx, "validation split (the split has no test images)"
    x = ctx.eval_inputs(idx).float().cpu().contiguous().numpy()
    return FidelityData(inputs=x, labels=ctx.labels[idx].cpu().numpy(), source=source)


def training_row(row: dict, ctx) -> dict:
    """The training speed of one model (its best seed), in the same list as inference."""
    return {
        "model": row["model"],
        "phase": "train",
        "runtime": "torch",
        "provider": ctx.device.type,
        "precision": row.get("amp") or ctx.precision.name,
        "batch_size": ctx.recipe.batch_size,
        "image_size": ctx.recipe.image_size,
        "threads": torch.get_num_threads(),
        "train_img_s": row["train_img_s"],
        "data_ms_per_step": row.get("data_ms_per_step"),
        "compute_ms_per_step": row.get("compute_ms_per_step"),
        "pipeline_efficiency": row.get("pipeline_efficiency"),
        "train_img_s_includes_first_epoch": row["train_img_s_includes_first_epoch"],
    }


def speed_section(speed_rows: list[dict], deployment: list[dict], out: Path) -> dict:
    """The keys a speed measurement owns in results.json: its rows (`speed`, `deployment`),
    `speed_ratios`, and with deployment rows the recommendation (fastest passing variant per
    model, Pareto), `int8_choice`, and the Pareto plot (`deployment_plot`, or its entry of the
    `plot_errors` log)."""
    from bench.measure.deployment import plot_pareto, recommend

    section = {"speed": speed_rows, "deployment": deployment,
               "speed_ratios": speed.speedup(speed_rows)}  # fmt: skip
    if not deployment:
        return section
    section["recommendation"] = recommend(deployment)
    choices = {r["model"]: r["int8_choice"] for r in deployment if r.get("int8_choice")}
    if choices:  # the chosen INT8 settings and why, per model (bench.measure.int8choice)
        section["int8_choice"] = choices
    try:
        if plot_pareto(deployment, out / "deployment_pareto.png"):
            section["deployment_plot"] = "deployment_pareto.png"
    except Exception as e:  # a picture must never cost the run its numbers and exports
        section["plot_errors"] = [f"deployment Pareto: {type(e).__name__}: {e}"]
    return section
