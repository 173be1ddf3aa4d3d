"""`python -m bench speed`: the measurements of `bench run` without training, on random
weights or a checkpoint (best.pt), with or without a dataset."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from bench import measure as speed
from bench.device import pick_device
from bench.device import utc_now as _now
from bench.measure.step import measure_model, recommend_into
from bench.registry import build_model, load_checkpoint, resolve_models
from bench.report import core as report
from exports.checkpoint import export_metadata

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


def speed_command(
    opts,
    *,
    image_size: int | None,
    checkpoint: str | None,
    num_classes: int,
    reporter,
    ort_providers: str | None = None,
    data: str | None = None,
):
    """`bench speed`: measure without training. Returns (results, out folder).

    image_size None: the checkpoint's, else 200 px. data: the checkpoint's dataset (else
    $NEU_DATA), checked against the hashes it records."""
    import time

    t_start = time.perf_counter()
    from exports.export import build_metadata, export_onnx
    from exports.runtime import PROVIDERS, create_session

    ckpt = load_checkpoint(checkpoint) if checkpoint else None
    if image_size is None:
        image_size = ckpt[1]["image_size"] if ckpt else 200
    if opts.threads:
        torch.set_num_threads(opts.threads)

    device = pick_device(opts.device)
    names = resolve_models(opts.models)
    explicit = [p.strip() for p in (ort_providers or "").split(",") if p.strip()]
    unknown = [p for p in explicit if p not in PROVIDERS]
    if unknown:
        raise ValueError(f"--ort-providers {unknown}: choose from {', '.join(PROVIDERS)}")
    if explicit:
        providers = tuple(explicit)
    else:
        providers = ("cpu", "cuda", "tensorrt") if device.type == "cuda" else ("cpu",)
    out = Path(opts.out or Path("runs") / f"speed-{image_size}px")
    results = {
        "schema_version": 1,
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
    for name in names:
        if ckpt:
            model, meta = ckpt
            if meta["model"] != name:
                continue
            if meta["image_size"] != image_size:
                raise ValueError(
                    f"--checkpoint {checkpoint} was trained at {meta['image_size']} px: pass "
                    f"--image-size {meta['image_size']} (the export must preprocess like it)"
                )
            source = str(checkpoint)
            calibration, fidelity = _images(
                meta, data, image_size, opts.calibration_images, reporter.log
            )
            # The export preprocesses exactly as the checkpoint was trained (its classes,
            # channels, mean/std) and carries its provenance (accuracy, dataset and split).
            metadata = export_metadata(
                meta, image_size=image_size, weights=source, **_test_figures(Path(checkpoint))
            )
        else:
            torch.manual_seed(0)
            model = build_model(name, num_classes=num_classes).eval()
            source = "random init"
            calibration, fidelity = _images(None, None, image_size, opts.calibration_images, None)
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
        info = results["models"][name] = {
            "weights": source,
            "params_m": speed.count_params(model) / 1e6,
            "gflops": speed.count_gflops(model, image_size),
        }
        onnx_path = out / "exports" / f"{name}.onnx"
        reporter.log(f"[{name}] exporting to ONNX for the onnxruntime rows")
        export_onnx(
            model,
            onnx_path,
            image_size=image_size,
            metadata=metadata,
        )
        info["onnx_size_mb"] = speed.file_size_mb(onnx_path)
        for provider in explicit:
            # Asked for by name: a silent fallback to CPU would mislabel every number.
            create_session(
                onnx_path,
                provider=provider,
                threads=opts.threads,
                strict=True,
                disable_cpu_fallback=opts.strict_providers,
            )
        speed_rows, dep_rows, notes = measure_model(
            model,
            name=name,
            onnx_path=onnx_path,
            out=out,
            image_size=image_size,
            device=device,
            providers=providers,
            gpu_rows=device.type == "cuda" or bool(explicit),
            opts=opts,
            calibration=calibration,
            fidelity=fidelity,
            log=reporter.log,
        )
        results["speed"] += speed_rows
        results["deployment"] += dep_rows
        info["notes"] = notes
        report.write_outputs(out, results)
    if checkpoint and not results["models"]:
        raise ValueError(f"--checkpoint {checkpoint} is for another model than --models")
    results["speed_ratios"] = speed.speedup(results["speed"])
    recommend_into(results, out)
    results["seconds_actual"] = round(time.perf_counter() - t_start, 1)
    report.write_outputs(out, results, final=True)
    return results, out
