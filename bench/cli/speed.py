"""`python -m bench speed`: the measurements of `bench run` without training, on random
weights or a checkpoint (best.pt), with or without a dataset."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from bench import measure as speed
from bench.device import pick_device
from bench.device import utc_now as _now
from bench.measure.deployment import SpeedSettings
from bench.measure.step import measure_model, speed_section
from bench.registry import build_model, load_checkpoint, resolve_models
from bench.report import core as report
from exports.checkpoint import export_metadata
from exports.contract import RESULTS_SCHEMA_VERSION

# Without a dataset (`bench speed`) variants are calibrated and compared on seeded N(0, 1)
# inputs, the distribution of normalised images: fidelity then covers agreement and logits,
# not accuracy, and the rows say so.
SYNTHETIC_FIDELITY_IMAGES = 64


def _synthetic_calibration(n: int, image_size: int):
    from bench.measure.deployment import CalibrationData

    x = np.random.default_rng(0).standard_normal((n, 3, image_size, image_size), np.float32)
    return CalibrationData(inputs=x, seed=0, source="synthetic N(0,1) inputs (no dataset)")


def _synthetic_fidelity(image_size: int, not_judged: str):
    from bench.measure.deployment import FidelityData

    n = SYNTHETIC_FIDELITY_IMAGES
    x = np.random.default_rng(1).standard_normal((n, 3, image_size, image_size), np.float32)
    return FidelityData(
        inputs=x,
        labels=None,
        source=f"synthetic: {n} seeded N(0,1) inputs, no labels",
        not_judged=not_judged,
    )


def _images(meta: dict | None, data: str | None, image_size: int, n_calibration: int, log):
    """(calibration, fidelity) for `bench speed`: a checkpoint with its dataset is calibrated
    on its training images and judged on its test images (bench.measure.ckptdata); random weights,
    or a checkpoint without data, get synthetic inputs and rows that say "not judged"."""
    from bench.measure.ckptdata import checkpoint_images, resolve_data

    if meta is None:
        return (
            _synthetic_calibration(n_calibration, image_size),
            _synthetic_fidelity(image_size, "random weights"),
        )
    folder, origin = resolve_data(data)
    if folder is None:
        log("no dataset (--data or NEU_DATA): the variants are timed but not judged")
        return (
            _synthetic_calibration(n_calibration, image_size),
            _synthetic_fidelity(image_size, "no dataset: pass --data or set NEU_DATA"),
        )
    log(f"judging on the checkpoint's own test images ({origin} {folder})")
    return checkpoint_images(meta, folder, origin, n_calibration)


def _test_figures(checkpoint: Path) -> dict:
    """The test accuracy `bench run` recorded beside a best.pt (metrics.json), if any."""
    import json

    done = checkpoint.parent / "metrics.json"
    row = json.loads(done.read_text()).get("row", {}) if done.is_file() else {}
    return {"test_accuracy": row.get("test_accuracy"), "test_images": row.get("test_images")}


def speed_command(opts, reporter):
    """`bench speed`: measure without training. Returns (results, out folder).

    opts: bench.config.SpeedCommandOptions. Its image_size None: the checkpoint's, else
    200 px; data: the checkpoint's dataset (else $NEU_DATA), checked against the hashes it
    records."""
    import time

    t_start = time.perf_counter()
    ckpt = load_checkpoint(opts.checkpoint) if opts.checkpoint else None
    image_size = opts.image_size
    if image_size is None:
        image_size = ckpt[1]["image_size"] if ckpt else 200
    if opts.threads:
        torch.set_num_threads(opts.threads)
    device = pick_device(opts.device)
    names = resolve_models(opts.models)
    explicit = _named_providers(opts.ort_providers)
    settings = SpeedSettings.from_options(
        opts, device, gpu_rows=device.type == "cuda" or bool(explicit),
        providers=tuple(explicit) or None,
    )  # fmt: skip
    out = Path(opts.out or Path("runs") / f"speed-{image_size}px")
    results = _new_results(device, image_size)
    for name in names:
        subject = _subject(name, ckpt, opts, image_size, reporter)
        if subject is None:
            continue  # the checkpoint is another model's
        _measure_one(name, subject, results, out, opts, settings, explicit, image_size, reporter)
        report.write_outputs(out, results)
    if opts.checkpoint and not results["models"]:
        raise ValueError(f"--checkpoint {opts.checkpoint} is for another model than --models")
    # Computed once, from every model's rows.
    results.update(speed_section(results["speed"], results["deployment"], out))
    results["seconds_actual"] = round(time.perf_counter() - t_start, 1)
    report.write_outputs(out, results, final=True)
    return results, out


def _named_providers(flag: str | None) -> list[str]:
    """--ort-providers as a list (empty when not given); an unknown name is an error."""
    from exports.runtime import PROVIDERS

    explicit = [p.strip() for p in (flag or "").split(",") if p.strip()]
    unknown = [p for p in explicit if p not in PROVIDERS]
    if unknown:
        raise ValueError(f"--ort-providers {unknown}: choose from {', '.join(PROVIDERS)}")
    return explicit


def _new_results(device, image_size: int) -> dict:
    return {
        "schema_version": RESULTS_SCHEMA_VERSION,
        "kind": "speed",
        "created": _now(),
        "environment": {**speed.environment(), "device": str(device)},
        "image_size": image_size,
        "models": {},
        "rows": [],
        "speed": [],
        "deployment": [],
        "exports": [],
    }


def _subject(name: str, ckpt, opts, image_size: int, reporter):
    """(model, weights source, calibration, fidelity, export metadata) of one model: the
    checkpoint's (None when it is another model's) or random weights."""
    if not ckpt:
        return _random_weights(name, opts.num_classes, image_size, opts.calibration_images)
    model, meta = ckpt
    if meta["model"] != name:
        return None
    if meta["image_size"] != image_size:
        raise ValueError(
            f"--checkpoint {opts.checkpoint} was trained at {meta['image_size']} px: pass "
            f"--image-size {meta['image_size']} (the export must preprocess like it)"
        )
    source = str(opts.checkpoint)
    calibration, fidelity = _images(
        meta, opts.data, image_size, opts.calibration_images, reporter.log
    )
    # The export preprocesses exactly as the checkpoint was trained (its classes,
    # channels, mean/std) and carries its provenance (accuracy, dataset and split).
    metadata = export_metadata(
        meta, image_size=image_size, weights=source, **_test_figures(Path(opts.checkpoint))
    )
    return model, source, calibration, fidelity, metadata


def _random_weights(name: str, num_classes: int, image_size: int, n_calibration: int):
    from exports.export import build_metadata

    torch.manual_seed(0)
    model = build_model(name, num_classes=num_classes).eval()
    source = "random init"
    calibration, fidelity = _images(None, None, image_size, n_calibration, None)
    # Random weights classify nothing: neutral preprocessing, no provenance.
    metadata = build_metadata(
        model_name=name,
        image_size=image_size,
        weights=source,
        classes=[f"class_{i}" for i in range(num_classes)],
        channels=3,
        mean=[0.5] * 3,
        std=[0.25] * 3,
        val_accuracy=None,
        dataset_hash="none",
        split_hash="none",
        split={},
    )
    return model, source, calibration, fidelity, metadata


def _measure_one(name, subject, results, out, opts, settings, explicit, image_size, reporter):
    """Export one model to ONNX and measure it; its rows are added to `results`."""
    from exports.export import export_onnx
    from exports.runtime import create_session

    model, source, calibration, fidelity, metadata = subject
    info = results["models"][name] = {
        "weights": source,
        "params_m": speed.count_params(model) / 1e6,
        "gflops": speed.count_gflops(model, image_size),
    }
    onnx_path = out / "exports" / f"{name}.onnx"
    reporter.log(f"[{name}] exporting to ONNX for the onnxruntime rows")
    export_onnx(model, onnx_path, image_size=image_size, metadata=metadata)
    info["onnx_size_mb"] = speed.file_size_mb(onnx_path)
    for provider in explicit:
        # Asked for by name: a silent fallback to CPU would mislabel every number.
        create_session(onnx_path, provider=provider, threads=opts.threads, strict=True,
                       disable_cpu_fallback=opts.strict_providers)  # fmt: skip
    speed_rows, dep_rows, notes = measure_model(
        model,
        name=name,
        onnx_path=onnx_path,
        out=out,
        image_size=image_size,
        settings=settings,
        calibration=calibration,
        fidelity=fidelity,
        log=reporter.log,
    )
    results["speed"] += speed_rows
    results["deployment"] += dep_rows
    info["notes"] = notes
