"""The fastest faithful deployment: every variant timed in the same rounds and judged on images.

For one model: make the INT8 (calibrated on training images only) and FP16 copies of its
FP32 export (exports.quantize), plan the variants that can run here (bench.speed.variants;
the others carry the reason), run every fidelity image through each variant and compare with
torch eager FP32 (exports.fidelity), then time all of them in the same interleaved rounds
(bench.speed.driver) so `speedup_vs_torch_fp32` is a ratio from the same windows.

`recommend` then picks, per model, the fastest variant that passed fidelity, and the
accuracy-latency Pareto front across all models x variants. A variant that failed
fidelity keeps its row (with its figures) but is never recommended.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from bench.speed import Case, Timing, file_size_mb, run_interleaved
from bench.speed.variants import VariantSpec, plan_variants
from exports.fidelity import FidelityThresholds, compare_logits

LATENCY_BATCH, THROUGHPUT_BATCH = 1, 32
# The artifact a deployment of each variant ships, as a file suffix next to <model>.onnx.
ARTIFACT_SUFFIX = {"onnx:fp32": ".onnx", "onnx:int8": ".int8.onnx", "onnx:fp16": ".fp16.onnx"}


@dataclass
class FidelityData:
    """The images every variant is judged on (preprocessed float32) and where they came from."""

    inputs: np.ndarray
    labels: np.ndarray | None
    source: str  # "test split", "validation split (no test split)", "synthetic ..."


@dataclass
class CalibrationData:
    inputs: np.ndarray  # preprocessed float32 training images
    seed: int
    source: str  # "train split" / "synthetic ..."


def measure_deployment(
    model: torch.nn.Module,
    *,
    name: str,
    fp32_onnx: Path,
    work_dir: Path,
    image_size: int,
    device: torch.device,
    threads: int,
    groups: tuple[str, ...],
    calibration: CalibrationData,
    fidelity: FidelityData,
    thresholds: FidelityThresholds,
    rounds: int,
    timing: Timing,
    vnni: bool,
    bf16_hardware: bool,
    log: Callable[[str], None] = lambda _: None,
) -> tuple[list[dict], list[dict]]:
    """(deployment rows, speed rows) of one model; see the module docstring."""
    from exports.quantize import QuantizationError, convert_fp16, int8_settings, quantize_int8

    work_dir.mkdir(parents=True, exist_ok=True)
    int8_path = fp16_path = None
    unavailable = None
    if {"int8", "openvino"} & set(groups):
        int8_path = work_dir / f"{name}.int8.onnx"
        settings = int8_settings(vnni=vnni)
        log(
            f"[{name}] INT8 static QDQ: calibrating on {len(calibration.inputs)} images of the "
            f"{calibration.source} (reduce_range={settings.reduce_range}: "
            f"{settings.reason})"
        )
        try:
            quantize_int8(
                fp32_onnx,
                int8_path,
                calibration.inputs,
                settings,
                calibration={"seed": calibration.seed, "source": calibration.source},
            )
        except QuantizationError as e:
            int8_path, unavailable = None, f"INT8 quantization failed: {e}"
    if "fp16" in groups:
        fp16_path = work_dir / f"{name}.fp16.onnx"
        try:
            convert_fp16(fp32_onnx, fp16_path)
        except QuantizationError as e:
            fp16_path, unavailable = None, f"FP16 conversion failed: {e}"
    files = {"onnx:fp32": fp32_onnx, "onnx:int8": int8_path, "onnx:fp16": fp16_path}

    specs = plan_variants(
        model,
        groups=groups,
        fp32_onnx=fp32_onnx,
        int8_onnx=int8_path,
        fp16_onnx=fp16_path,
        device=device,
        threads=threads,
        image_size=image_size,
        bf16_hardware=bf16_hardware,
        int8_unavailable=unavailable,
    )
    backends: dict[str, object] = {}
    judged: dict[str, dict] = {}
    providers: dict[str, str | None] = {}
    reference = None
    for spec in specs:
        if spec.make is None:
            continue
        log(f"[{name}] {spec.name}: building, then fidelity on {fidelity.source}")
        try:
            backend = spec.make()
            logits = _logits(backend, fidelity.inputs)
            if fidelity.labels is not None:  # bench.calibrate scores the variant on these
                _save_logits(work_dir / f"{spec.name}.fidelity_logits.npy", logits)
            if reference is None:  # torch_fp32 comes first: the reference of every comparison
                reference = logits
            precision = backend.provenance()["precision"]
            providers[spec.name] = backend.provenance().get("provider")
            judged[spec.name] = compare_logits(
                reference, logits, fidelity.labels, precision=precision, thresholds=thresholds
            ).to_dict()
        except Exception as e:  # one variant failing to build or run must not stop the rest
            spec.skipped = f"failed: {type(e).__name__}: {str(e)[:300]}"
            continue
        backends[spec.name] = backend
    stamp_files(files, specs, judged, providers, fidelity.source, log)

    named = [
        (v, Case(b, bs)) for v, b in backends.items() for bs in (LATENCY_BATCH, THROUGHPUT_BATCH)
    ]
    log(f"[{name}] timing {len(backends)} variants x 2 batch sizes, {rounds} interleaved rounds")
    t0 = time.perf_counter()

    def progress(r: int, case: Case) -> None:  # one line per round: large models take minutes
        if case is named[0][1]:
            log(f"[{name}] round {r + 1}/{rounds} ({time.perf_counter() - t0:.0f} s so far)")

    measured = run_interleaved(
        [c for _, c in named],
        model=name,
        image_size=image_size,
        rounds=rounds,
        timing=timing,
        on_case=progress,
    )
    speed_rows = []
    by_case: dict[tuple[str, int], dict] = {}
    for (variant, case), row in zip(named, measured, strict=True):
        d = {**row.to_dict(), "variant": variant}
        speed_rows.append(d)
        by_case[(variant, case.batch_size)] = d
    rows = [
        _row(
            spec,
            name,
            by_case.get((spec.name, LATENCY_BATCH)),
            by_case.get((spec.name, THROUGHPUT_BATCH)),
            by_case.get(("torch_fp32", LATENCY_BATCH)),
            judged.get(spec.name),
            files,
            fidelity,
            model,
        )
        for spec in specs
    ]
    return rows, speed_rows


# The variant whose run on the fidelity images is each ONNX file's own record: ONNX Runtime,
# the runtime `python -m exports predict` and `verify` use.
_FILE_JUDGE = {"onnx:fp32": "ort_fp32", "onnx:int8": "ort_int8", "onnx:fp16": "ort_fp16"}


def stamp_files(files, specs, judged, providers, source, log) -> None:
    """Write into every ONNX file made here what it achieved itself (exports.figures): its own
    accuracy, agreement and pass/fail, `rejected` with the reason when it failed, or that it
    was not judged. Without this an INT8 copy would state its parent's accuracy."""
    from exports.figures import own_figures, stamp_figures

    by_name = {s.name: s for s in specs}
    for artifact, path in files.items():
        spec = by_name.get(_FILE_JUDGE[artifact])
        if path is None or not Path(path).is_file():
            continue
        fid = judged.get(spec.name) if spec else None
        skipped = (spec.skipped if spec else None) or "not in --variants"
        values = own_figures(
            fid,
            precision=artifact.split(":")[1],
            runtime="onnxruntime",
            provider=providers.get(spec.name) if spec else None,
            source=source,
            skipped=skipped,
        )
        stamp_figures(path, values)
        if values["rejected"]:
            log(f"{Path(path).name}: marked rejected ({values['rejected']})")


def _logits(backend, x: np.ndarray, batch: int = THROUGHPUT_BATCH) -> np.ndarray:
    """All of x through the backend in full batches (the last one zero-padded): a compiled
    graph then sees only the batch size it was compiled for, and eval-mode CNNs treat each
    image independently, so padding changes no real image's logits."""
    n = len(x)
    pad = (-n) % batch if n > batch else 0
    xp = np.concatenate([x, np.zeros((pad, *x.shape[1:]), x.dtype)]) if pad else x
    return backend.logits(np.ascontiguousarray(xp, dtype=np.float32), batch_size=batch)[:n]


def _save_logits(path: Path, logits: np.ndarray) -> None:
    from neu._io import atomic_path

    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, np.asarray(logits, np.float32))


def _row(spec: VariantSpec, name, lat, thr, ref, fid, files, fidelity, model) -> dict:
    artifact = files.get(spec.artifact) if spec.artifact.startswith("onnx") else None
    if artifact is not None:
        size = file_size_mb(artifact)
    else:  # torch variants ship the fp32 weights (the checkpoint's state_dict)
        size = sum(t.numel() * t.element_size() for t in model.state_dict().values()) / 1e6
    row = {
        "model": name,
        "variant": spec.name,
        "group": spec.group,
        "runtime": spec.runtime,
        "provider": None,
        "precision": spec.precision,
        "batch_size": LATENCY_BATCH,
        "latency_ms_p50": None,
        "latency_ms_p90": None,
        "latency_ms_p99": None,
        "p50_spread_pct": None,
        "rounds": None,
        "throughput_batch_size": THROUGHPUT_BATCH,
        "throughput_img_s": None,
        "size_mb": round(size, 3),
        "artifact": spec.artifact,
        "fidelity_images": len(fidelity.inputs),
        "fidelity_source": fidelity.source,
        "agreement": None,
        "test_accuracy": None,
        "accuracy_delta_pp": None,
        "max_abs_logit_diff": None,
        "passed": False,
        "fidelity_rule": None,
        "fidelity_failures": [],
        "speedup_vs_torch_fp32": None,
        "skipped": spec.skipped,
        "error": None,
    }
    if fid is not None:
        row.update(
            agreement=fid["agreement"],
            test_accuracy=fid["test_accuracy"],
            accuracy_delta_pp=fid["accuracy_delta_pp"],
            max_abs_logit_diff=fid["max_abs_logit_diff"],
            passed=fid["passed"],
            fidelity_rule=fid["rule"],
            fidelity_failures=fid["failures"],
            precision=fid["precision"],
        )
    if lat is not None:
        row["provider"] = lat.get("provider")
        row["threads"] = lat.get("threads")
        if lat.get("compile_seconds_by_batch"):
            row["compile_seconds_by_batch"] = lat["compile_seconds_by_batch"]
        if lat.get("inference_precision"):
            row["inference_precision"] = lat["inference_precision"]
        if lat.get("error"):
            row["error"], row["passed"] = lat["error"], False
        else:
            for k in ("latency_ms_p50", "latency_ms_p90", "latency_ms_p99", "p50_spread_pct",
                      "rounds"):  # fmt: skip
                row[k] = lat.get(k)
            row["speedup_vs_torch_fp32"] = _ratio(ref, lat)
    if thr is not None and not thr.get("error"):
        row["throughput_img_s"] = thr.get("throughput_img_s")
    return row


def _ratio(base: dict | None, row: dict) -> float | None:
    """torch eager FP32 p50 / this p50, as the median of per-round ratios (same windows)."""
    if not base or base.get("error"):
        return None
    a, b = base.get("latency_ms_p50_by_round") or [], row.get("latency_ms_p50_by_round") or []
    if a and len(a) == len(b):
        return round(statistics.median(x / y for x, y in zip(a, b, strict=True)), 3)
    if base.get("latency_ms_p50") and row.get("latency_ms_p50"):
        return round(base["latency_ms_p50"] / row["latency_ms_p50"], 3)
    return None


def candidates(rows: Sequence[dict]) -> list[dict]:
    """Rows that may be recommended: measured, no error, and passed fidelity."""
    return [
        r
        for r in rows
        if r.get("passed") and not r.get("skipped") and not r.get("error")
        and r.get("latency_ms_p50") is not None
    ]  # fmt: skip


def recommend(rows: Sequence[dict]) -> dict:
    """Fastest passing variant per model (batch-1 p50) and the accuracy-latency Pareto front.

    A row that failed fidelity, was skipped or errored is never a candidate. Pareto points
    are (latency_ms_p50, test_accuracy) of the candidates across all models x variants;
    without labels (no test accuracy) there is no front.
    """
    from bench.speed import pareto_front

    ok = candidates(rows)
    fastest: dict[str, dict] = {}
    for r in ok:
        cur = fastest.get(r["model"])
        if cur is None or r["latency_ms_p50"] < cur["latency_ms_p50"]:
            fastest[r["model"]] = r
    keys = ("variant", "runtime", "provider", "precision", "latency_ms_p50",
            "speedup_vs_torch_fp32", "test_accuracy", "accuracy_delta_pp", "agreement",
            "artifact", "size_mb")  # fmt: skip
    by_model = {m: {k: r.get(k) for k in keys} for m, r in fastest.items()}
    for m in {r["model"] for r in rows} - set(by_model):
        by_model[m] = {"variant": None, "why": "no variant passed fidelity"}
    with_acc = [r for r in ok if r.get("test_accuracy") is not None]
    front = pareto_front([(r["latency_ms_p50"], r["test_accuracy"]) for r in with_acc])
    pareto = [
        {k: with_acc[i][k] for k in ("model", "variant", "latency_ms_p50", "test_accuracy")}
        for i in front
    ]
    return {"by_model": dict(sorted(by_model.items())), "pareto": pareto}


def plot_pareto(rows: Sequence[dict], path: Path) -> Path | None:
    """Test accuracy vs batch-1 latency of every passing variant (all models), front marked."""
    from bench.speed import plot_accuracy_vs_latency

    points = [
        {
            "model": r["model"],
            "runtime": r["variant"],
            "provider": r["provider"],
            "precision": "fp32",  # the variant name already says it
            "latency_ms_p50": r["latency_ms_p50"],
            "val_accuracy": r["test_accuracy"],
        }
        for r in candidates(rows)
        if r.get("test_accuracy") is not None
    ]
    if not points:
        return None
    return plot_accuracy_vs_latency(
        points,
        path,
        title="deployment variants that passed fidelity: accuracy vs latency (batch 1)",
        ylabel="accuracy on the fidelity images (%, higher is better)",
    )
