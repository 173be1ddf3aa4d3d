"""After training: speed of every model, export of the winners, and the parity proof.

Also `bench speed`, the same measurements without training (random init or a checkpoint).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from bench import report, speed
from bench.device import pick_device
from bench.device import utc_now as _now
from bench.registry import build_model, load_checkpoint, resolve_models

BATCH_SIZES = (1, 32)


def best_rows(results: dict) -> dict[str, dict]:
    """Per model, the ok row (seed, fold) whose checkpoint we ship: picked on validation
    accuracy then loss, like the epoch, so the test figures stay out of the choice."""
    best: dict[str, dict] = {}
    for row in results["rows"]:
        if row["status"] != "ok":
            continue
        cur = best.get(row["model"])
        if cur is None or (row["val_accuracy"], -row["val_loss"]) > (
            cur["val_accuracy"],
            -cur["val_loss"],
        ):
            best[row["model"]] = row
    return best


def _timing(opts) -> speed.Timing:
    return speed.Timing(min_seconds=opts.speed_min_seconds, min_iters=opts.speed_min_iters)


def measure_speed(results: dict, out: Path, ctx, opts, reporter) -> list[dict]:
    """Training row + every inference row of each model's best seed.

    The checkpoint is exported to a temporary ONNX file so that torch and ONNX Runtime are
    measured in the same interleaved rounds (bench.speed.driver), minutes apart no more.
    """
    import tempfile

    from exports.export import export_onnx

    rows = []
    results["deployment"] = []
    providers = ("cpu", "cuda", "tensorrt") if ctx.device.type == "cuda" else ("cpu",)
    with tempfile.TemporaryDirectory(prefix="neu-bench-speed-") as tmp:
        for name, row in best_rows(results).items():
            rows.append(training_row(row, ctx))
            ckpt = out / row["checkpoint"]
            results["models"][name]["checkpoint_size_mb"] = speed.file_size_mb(ckpt)
            model, meta = load_checkpoint(ckpt)
            try:
                onnx_path = Path(tmp) / f"{name}.onnx"
                reporter.log(f"[{name}] exporting a temporary ONNX file for the speed rounds")
                export_onnx(
                    model,
                    onnx_path,
                    metadata=_metadata(name, meta, row),
                    image_size=meta["image_size"],
                )
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
                    device=ctx.device,
                    providers=providers,
                    gpu_rows=ctx.device.type == "cuda",
                    opts=opts,
                    calibration=_train_calibration(ctx, opts),
                    fidelity=_fidelity_images(ctx),
                    log=reporter.log,
                )
                for note in notes:  # GPU provider not really usable: say so, never mislabel
                    reporter.log(note)
                rows += speed_rows
                results["deployment"] += dep_rows
            except Exception as e:  # a speed failure is recorded, never fatal to the results
                rows.append(
                    {"model": name, "runtime": "torch", "error": f"{type(e).__name__}: {e}"}
                )
            del model
    results["speed_ratios"] = speed.speedup(rows)
    _recommend(results, out)
    return rows


def measure_model(
    model,
    *,
    name,
    onnx_path,
    out,
    image_size,
    device,
    providers,
    gpu_rows,
    opts,
    calibration,
    fidelity,
    log,
) -> tuple[list[dict], list[dict], list[str]]:
    """(speed rows, deployment rows, notes) of one model.

    gpu_rows: also the issue-12 rows (torch AMP, every ONNX Runtime GPU provider, largest
    batch) on CUDA or for explicitly named providers; the deployment variants (torch eager and
    ORT FP32 among them, all in one window) always. On a plain CPU run the variants' own
    timed cases are the speed rows, so nothing is measured twice.
    """
    notes: list[str] = []
    rows: list[dict] = []
    if gpu_rows:
        log(f"[{name}] measuring torch and onnxruntime providers on {device}")
        rows += speed.speed_rows_for_model(
            model,
            name=name,
            image_size=image_size,
            onnx_path=onnx_path,
            device=device,
            batch_sizes=BATCH_SIZES,
            providers=providers,
            threads=opts.threads,
            rounds=opts.speed_rounds,
            timing=_timing(opts),
            notes=notes,
            strict_providers=opts.strict_providers,
        )
    dep_rows, dep_speed = measure_variants(
        model,
        name=name,
        fp32_onnx=onnx_path,
        work_dir=out / "variants" / name,
        image_size=image_size,
        device=device,
        opts=opts,
        calibration=calibration,
        fidelity=fidelity,
        log=log,
    )
    return (rows if gpu_rows else dep_speed), dep_rows, notes


def measure_variants(
    model, *, name, fp32_onnx, work_dir, image_size, device, opts, calibration, fidelity, log
) -> tuple[list[dict], list[dict]]:
    """bench.deployment.measure_deployment with the run's flags and this CPU's ISA."""
    from bench.cpu import has_bf16_hardware, has_vnni
    from bench.deployment import measure_deployment
    from bench.speed.variants import parse_variants
    from exports.fidelity import FidelityThresholds

    return measure_deployment(
        model,
        name=name,
        fp32_onnx=fp32_onnx,
        work_dir=work_dir,
        image_size=image_size,
        device=torch.device(device),
        threads=opts.threads or torch.get_num_threads(),
        groups=parse_variants(opts.variants),
        calibration=calibration,
        fidelity=fidelity,
        thresholds=FidelityThresholds(
            min_agreement=opts.fidelity_min_agreement,
            max_accuracy_drop_pp=opts.fidelity_max_drop_pp,
        ),
        rounds=opts.speed_rounds,
        timing=_timing(opts),
        vnni=has_vnni(),
        bf16_hardware=has_bf16_hardware(),
        log=log,
    )


def _train_calibration(ctx, opts):
    """INT8 calibration images: a seeded, class-stratified sample of the TRAINING split."""
    from bench.deployment import CalibrationData
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
    from bench.deployment import FidelityData

    idx, source = ctx.test_idx, "test split"
    if len(idx) == 0:
        idx, source = ctx.val_idx, "validation split (the split has no test images)"
    x = ctx.eval_inputs(idx).float().cpu().contiguous().numpy()
    return FidelityData(inputs=x, labels=ctx.labels[idx].cpu().numpy(), source=source)


# Without a dataset (`bench speed`) variants are calibrated and compared on seeded N(0, 1)
# inputs, the distribution of normalised images: fidelity then covers agreement and logits,
# not accuracy, and the rows say so.
SYNTHETIC_FIDELITY_IMAGES = 64


def _synthetic_calibration(n: int, image_size: int):
    from bench.deployment import CalibrationData

    x = np.random.default_rng(0).standard_normal((n, 3, image_size, image_size), np.float32)
    return CalibrationData(inputs=x, seed=0, source="synthetic N(0,1) inputs (no dataset)")


def _synthetic_fidelity(image_size: int):
    from bench.deployment import FidelityData

    n = SYNTHETIC_FIDELITY_IMAGES
    x = np.random.default_rng(1).standard_normal((n, 3, image_size, image_size), np.float32)
    return FidelityData(
        inputs=x, labels=None, source=f"synthetic: {n} seeded N(0,1) inputs, no labels"
    )


def _recommend(results: dict, out: Path) -> None:
    from bench.deployment import plot_pareto, recommend

    rows = results.get("deployment") or []
    if not rows:
        return
    results["recommendation"] = recommend(rows)
    if plot_pareto(rows, out / "deployment_pareto.png"):
        results["deployment_plot"] = "deployment_pareto.png"


def _metadata(name: str, meta: dict, row: dict) -> dict:
    """The neu_bench.* metadata of an export of `name`'s checkpoint (meta) and its row."""
    from exports.export import build_metadata

    return build_metadata(
        model_name=name,
        classes=meta["classes"],
        image_size=meta["image_size"],
        channels=meta["channels"],
        mean=meta["mean"],
        std=meta["std"],
        val_accuracy=row["val_accuracy"],
        test_accuracy=row.get("test_accuracy"),
        test_images=row.get("test_images"),
        dataset_hash=meta["dataset_hash"],
        split_hash=meta["split_hash"],
        split=meta["split"],
        weights=meta["weights"],
    )


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


def _batch1_latency(rows: list[dict], name: str, runtime: str = "torch") -> float | None:
    for r in rows:
        if (
            r.get("model") == name
            and r.get("runtime") == runtime
            and r.get("batch_size") == 1
            and r.get("precision") == "fp32"
            and not r.get("max_batch")
            and "latency_ms_p50" in r
        ):
            return r["latency_ms_p50"]
    return None


def select_exports(results: dict, how: str) -> tuple[list[str], str]:
    """Models to export, and why. how: best | pareto | all | none | comma list."""
    summary = report.summarize_models(results["rows"])
    ok = [s["model"] for s in summary if s["accuracy_mean"] is not None]
    if how == "none" or not ok:
        return [], "none"
    if how == "all":
        return ok, "all"
    if how not in ("best", "pareto"):
        names = [n.strip() for n in how.split(",") if n.strip()]
        missing = [n for n in names if n not in ok]
        if missing:
            raise ValueError(f"--export {how}: {missing} did not train successfully in this run")
        return names, "requested"
    acc = {s["model"]: s["accuracy_mean"] for s in summary if s["model"] in ok}
    lat = {n: _batch1_latency(results["speed"], n) for n in ok}
    best = max(ok, key=lambda n: (acc[n], -(lat[n] or 0)))
    if how == "best" or any(v is None for v in lat.values()):
        return [best], "best"
    front = speed.pareto_front([(lat[n], acc[n]) for n in ok])
    chosen = [best] + [ok[i] for i in front if ok[i] != best]
    return chosen, "pareto"


def export_and_verify(results: dict, out: Path, ctx, opts, reporter, contexts=None) -> None:
    """contexts: fold -> Context (cross-validation); each export is checked on its own
    fold's images."""
    from exports.export import export_onnx
    from exports.parity import check_parity

    names, why = select_exports(results, opts.export)
    results["export_selection"] = {"how": why, "models": names}
    if not names:
        return
    best = best_rows(results)
    results["exports"] = []
    for name in names:
        row = best[name]
        rctx = (contexts or {}).get(row.get("fold"), ctx)
        # Parity runs on every test image (data that chose nothing; val when there is no test
        # split), exactly as evaluation fed them (fp32, CPU).
        split = row.get("accuracy_split", "val")
        idx = rctx.test_idx if split == "test" else rctx.val_idx
        inputs = rctx.eval_inputs(idx).float().cpu().contiguous()
        labels = rctx.labels[idx].cpu().numpy()
        path = out / "exports" / f"{name}.onnx"
        entry = {
            "model": name,
            "seed": row["seed"],
            "fold": row.get("fold"),
            "images": split,
            "path": str(path.relative_to(out)),
        }
        try:
            model, meta = load_checkpoint(out / row["checkpoint"])
            metadata = _metadata(name, meta, row)
            reporter.log(f"[{name}] exporting to {path}")
            export_onnx(model, path, metadata=metadata, image_size=meta["image_size"])
            entry["size_mb"] = speed.file_size_mb(path)
            results["models"][name]["onnx_size_mb"] = entry["size_mb"]
            reporter.log(f"[{name}] parity on {len(labels)} {split} images")
            parity = check_parity(
                model,
                path,
                inputs,
                labels,
                batch_sizes=(1, 32),
                provider="cpu",
                threads=opts.threads,
            )
            entry.update(parity.to_dict())
            entry["path"] = str(path.relative_to(out))
            entry["parity_passed"] = bool(parity.passed)
            if not parity.passed:
                reporter.warn(f"[{name}] PARITY FAILED: {'; '.join(parity.failures)}")
            rec = (results.get("recommendation") or {}).get("by_model", {}).get(name)
            if rec and rec.get("variant"):
                entry["recommended"] = export_recommended(rec, name, out, path, results)
                reporter.log(
                    f"[{name}] recommended deployment: {rec['variant']} -> "
                    f"{entry['recommended']['path']}"
                )
        except Exception as e:
            entry.update(parity_passed=False, error=f"{type(e).__name__}: {e}")
            reporter.warn(f"[{name}] export failed: {entry['error']}")
        results["exports"].append(entry)
    if opts.speed:
        _plot(results, out)


def export_recommended(rec: dict, name: str, out: Path, fp32_path: Path, results: dict) -> dict:
    """Put the recommended variant's artifact next to the FP32 export, stamped with its figures.

    INT8/FP16 copies come from the speed step (out/variants/<model>/), made from the same
    checkpoint with the same metadata; the copy here adds the fidelity figures and the
    variant name. Variants that run the FP32 file (ORT FP32, OpenVINO) stamp it instead; torch
    variants ship the checkpoint, named in the entry.
    """
    import json

    from bench.deployment import ARTIFACT_SUFFIX
    from exports.quantize import update_metadata
    from neu._io import atomic_write_bytes

    artifact = rec["artifact"]
    row = next(
        r for r in results["deployment"] if r["model"] == name and r["variant"] == rec["variant"]
    )
    figures = {
        k: row[k]
        for k in (
            "variant",
            "runtime",
            "precision",
            "agreement",
            "test_accuracy",
            "accuracy_delta_pp",
            "max_abs_logit_diff",
            "fidelity_images",
            "fidelity_source",
            "fidelity_rule",
            "latency_ms_p50",
            "speedup_vs_torch_fp32",
        )  # fmt: skip
    }
    figures["cpu_isa"] = results.get("environment", {}).get("cpu_isa_label")
    if artifact not in ARTIFACT_SUFFIX:  # a torch variant: the checkpoint is the artifact
        best = best_rows(results)[name]
        return {"variant": rec["variant"], "path": best["checkpoint"], "kind": "checkpoint"}
    dst = fp32_path.with_name(name + ARTIFACT_SUFFIX[artifact])
    if dst != fp32_path:
        src = out / "variants" / name / dst.name
        atomic_write_bytes(dst, src.read_bytes())
    update_metadata(
        dst, {"fidelity": json.dumps(figures, sort_keys=True), "deployment_variant": rec["variant"]}
    )
    return {
        "variant": rec["variant"],
        "path": str(dst.relative_to(out)),
        "kind": "onnx",
        "precision": row["precision"],
        "size_mb": speed.file_size_mb(dst),
    }


def _plot(results: dict, out: Path) -> None:
    summary = {s["model"]: s for s in report.summarize_models(results["rows"])}
    points = []
    for r in results["speed"]:
        if (
            r.get("batch_size") == 1
            and r.get("precision") == "fp32"
            and "latency_ms_p50" in r
            and summary.get(r["model"], {}).get("accuracy_mean") is not None
        ):
            points.append({**r, "val_accuracy": summary[r["model"]]["accuracy_mean"]})
    if points:
        speed.plot_accuracy_vs_latency(points, out / "accuracy_vs_latency.png")
        results["plot"] = "accuracy_vs_latency.png"


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
):
    """`bench speed`: measure without training. Returns (results, out folder).

    image_size None: the checkpoint's, else 200 px."""
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
            # The export must preprocess exactly as the checkpoint was trained: its classes,
            # channels and mean/std, and its provenance (accuracy, dataset and split).
            preprocessing = {
                k: meta[k] for k in ("classes", "channels", "mean", "std", "dataset_hash")
            }
            preprocessing.update(
                val_accuracy=meta.get("val_accuracy"),
                split_hash=meta["split_hash"],
                split=meta["split"],
                **_test_figures(Path(checkpoint)),
            )
        else:
            torch.manual_seed(0)
            model = build_model(name, num_classes=num_classes).eval()
            source = "random init"
            # Random weights classify nothing: neutral preprocessing, no provenance.
            preprocessing = {
                "classes": [f"class_{i}" for i in range(num_classes)],
                "channels": 3,
                "mean": [0.5] * 3,
                "std": [0.25] * 3,
                "val_accuracy": None,
                "dataset_hash": "none",
                "split_hash": "none",
                "split": {},
            }
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
            metadata=build_metadata(
                model_name=name, image_size=image_size, weights=source, **preprocessing
            ),
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
            calibration=_synthetic_calibration(opts.calibration_images, image_size),
            fidelity=_synthetic_fidelity(image_size),
            log=reporter.log,
        )
        results["speed"] += speed_rows
        results["deployment"] += dep_rows
        info["notes"] = notes
        report.write_outputs(out, results)
    if checkpoint and not results["models"]:
        raise ValueError(f"--checkpoint {checkpoint} is for another model than --models")
    results["speed_ratios"] = speed.speedup(results["speed"])
    _recommend(results, out)
    report.write_outputs(out, results, final=True)
    return results, out
