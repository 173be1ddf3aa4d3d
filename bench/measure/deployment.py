"""The fastest faithful deployment: every variant timed in the same rounds and judged on images.

For one model: make the INT8 (calibrated on training images only) and FP16 copies of its
FP32 export (exports.quantize), plan the variants that can run here (bench.measure.variants;
the others carry the reason), run every fidelity image through each variant and compare with
torch eager FP32 (exports.fidelity), then time all of them in the same interleaved rounds
(bench.measure.driver) so `speedup_vs_torch_fp32` is a ratio from the same windows.

INT8 is several candidate files (activation u8/s8, bench.measure.int8choice), each a variant row;
the fastest that passed fidelity becomes `ort_int8`. `recommend` then picks, per model, the
fastest variant that passed fidelity, and the
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

from bench.measure import Case, Timing, file_size_mb, run_interleaved
from bench.measure.variants import VariantSpec, plan_variants
from exports.contract import default_providers
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
    # Why these inputs cannot judge a variant (random weights: a random network's logits are
    # nearly tied, so agreement on them says little; no dataset): rows then say
    # "not judged (<why>)", `passed` None, and the recommendation is "speed only".
    not_judged: str | None = None


@dataclass
class CalibrationData:
    inputs: np.ndarray  # preprocessed float32 training images
    seed: int
    source: str  # "train split" / "synthetic ..."


@dataclass(frozen=True)
class SpeedSettings:
    """How every model of one command is timed and judged: the speed flags
    (bench.config.SpeedOptions) resolved on this machine. Built once (`from_options`) by
    `bench run`'s speed step or `bench speed` and passed down unchanged."""

    device: torch.device
    threads: int  # torch's and ONNX Runtime's: --threads, else torch's default
    groups: tuple[str, ...]  # --variants
    thresholds: FidelityThresholds
    rounds: int
    timing: Timing
    vnni: bool = False  # which INT8 candidates are made (bench.measure.int8choice)
    bf16_hardware: bool = False
    # Also the GPU rows (torch AMP, every ONNX Runtime GPU provider, largest batch): on CUDA
    # or for providers named on the command line. Without them the variants' own timed cases
    # are the speed rows, so nothing is measured twice.
    gpu_rows: bool = False
    providers: tuple[str, ...] = ("cpu",)  # ONNX Runtime providers of the GPU rows
    strict_providers: bool = False

    @classmethod
    def from_options(cls, opts, device, *, gpu_rows=None, providers=None) -> SpeedSettings:
        """From a bench.config.SpeedOptions (RunOptions, SpeedCommandOptions) and the device;
        gpu_rows and providers default to what the device has."""
        from bench.cpu import has_bf16_hardware, has_vnni
        from bench.measure.variants import parse_variants

        device = torch.device(device)
        cuda = device.type == "cuda"
        return cls(
            device=device,
            threads=opts.threads or torch.get_num_threads(),
            groups=parse_variants(opts.variants),
            thresholds=FidelityThresholds(
                min_agreement=opts.fidelity_min_agreement,
                max_accuracy_drop_pp=opts.fidelity_max_drop_pp,
            ),
            rounds=opts.speed_rounds,
            timing=Timing(
                min_seconds=opts.speed_min_seconds,
                min_iters=opts.speed_min_iters,
                max_seconds=opts.speed_max_seconds,
            ),
            vnni=has_vnni(),
            bf16_hardware=has_bf16_hardware(),
            gpu_rows=cuda if gpu_rows is None else gpu_rows,
            providers=providers or default_providers(cuda),
            strict_providers=opts.strict_providers,
        )


@dataclass
class _Job:
    """One model's measurement: what every step of measure_deployment reads."""

    model: torch.nn.Module
    name: str
    fp32_onnx: Path
    work_dir: Path
    image_size: int
    calibration: CalibrationData
    fidelity: FidelityData
    settings: SpeedSettings
    log: Callable[[str], None]

    def plan(self, **files) -> list[VariantSpec]:
        """plan_variants on this machine for these files."""
        s = self.settings
        return plan_variants(self.model, fp32_onnx=self.fp32_onnx, device=s.device,
                             threads=s.threads, image_size=self.image_size,
                             bf16_hardware=s.bf16_hardware, **files)  # fmt: skip


def measure_deployment(
    model: torch.nn.Module,
    *,
    name: str,
    fp32_onnx: Path,
    work_dir: Path,
    image_size: int,
    calibration: CalibrationData,
    fidelity: FidelityData,
    settings: SpeedSettings,
    log: Callable[[str], None] = lambda _: None,
) -> tuple[list[dict], list[dict]]:
    """(deployment rows, speed rows) of one model; see the module docstring.

    Every variant (INT8 candidates included) is timed at batch 1 in the same interleaved
    rounds; then, in a second interleaved window, every variant but the INT8 candidates
    beyond the fastest two is timed at batch 32 (bench.measure.int8choice)."""
    job = _Job(model, name, fp32_onnx, work_dir, image_size, calibration, fidelity, settings, log)
    t_step = time.perf_counter()
    cands, fp16_path, unavailable = _make_copies(job)
    made = [c for c in cands if c.path]
    seconds = {"quantize": time.perf_counter() - t_step}
    specs = job.plan(
        groups=settings.groups,
        int8_onnx=made[0].path if made else None,  # OpenVINO runs the ISA's first candidate
        fp16_onnx=fp16_path, int8_unavailable=unavailable,
        int8_candidates=[(c.slug, c.path) for c in made],
    )  # fmt: skip
    backends: dict[str, object] = {}
    judged: dict[str, dict] = {}
    t0 = time.perf_counter()
    ref: dict = {"providers": {}}  # torch eager FP32's logits once judged, each variant's provider
    _judge(job, specs, backends, judged, ref)
    cands += _fallbacks(job, specs, made, judged, backends, ref)
    seconds["fidelity"] = time.perf_counter() - t0
    files = {"onnx:fp32": fp32_onnx, "onnx:fp16": fp16_path,
             "onnx:int8": made[0].path if made else None,  # what openvino_int8 runs
             **{f"onnx:int8:{c.slug}": c.path for c in cands}}  # fmt: skip
    stamp_files(files, specs, judged, ref["providers"], fidelity.source, log)

    speed_rows, by_case = _time_cases(job, backends, specs, judged, seconds)
    base = by_case.get(("torch_fp32", LATENCY_BATCH))
    rows = [
        _row(spec, job, by_case.get((spec.name, LATENCY_BATCH)),
             by_case.get((spec.name, THROUGHPUT_BATCH)), base, judged.get(spec.name), files)
        for spec in specs
    ]  # fmt: skip
    if made and "int8" in settings.groups:
        seconds["step"] = time.perf_counter() - t_step
        _choose(job, rows, speed_rows, cands, seconds)
    return rows, speed_rows


def _make_copies(job: _Job):
    """(INT8 candidates, FP16 file or None, why a copy is unavailable or None)."""
    from bench.measure.int8choice import make_candidates
    from exports.quantize import QuantizationError, convert_fp16, int8_candidates

    fp32_onnx, work_dir, name, groups = job.fp32_onnx, job.work_dir, job.name, job.settings.groups
    work_dir.mkdir(parents=True, exist_ok=True)
    cands, unavailable = [], None
    if {"int8", "openvino"} & set(groups):
        cands = make_candidates(fp32_onnx, work_dir, name, job.calibration,
                                int8_candidates(vnni=job.settings.vnni), job.log)  # fmt: skip
        if not any(c.path for c in cands):
            unavailable = "INT8 quantization failed: " + "; ".join(c.error for c in cands)
    fp16_path = None
    if "fp16" in groups:
        fp16_path = work_dir / f"{name}.fp16.onnx"
        try:
            convert_fp16(fp32_onnx, fp16_path)
        except QuantizationError as e:
            fp16_path, unavailable = None, f"FP16 conversion failed: {e}"
    return cands, fp16_path, unavailable


def _fallbacks(job: _Job, specs, made, judged, backends, ref) -> list:
    """MinMax candidates that failed fidelity get a Percentile-calibrated version of the same
    settings, judged like the rest and placed after the last candidate in `specs`. Only with
    real images: without a judgement there is nothing to fall back from."""
    from bench.measure.int8choice import fallback_settings, make_candidates

    wanted = [] if job.fidelity.not_judged else fallback_settings(made, judged)
    extra = make_candidates(job.fp32_onnx, job.work_dir, job.name, job.calibration, wanted,
                            job.log)  # fmt: skip
    ok = [(c.slug, c.path) for c in extra if c.path]
    if not ok:
        return extra
    more = job.plan(groups=("int8",), int8_onnx=None, fp16_onnx=None, int8_candidates=ok)[2:]
    last = max(i for i, s in enumerate(specs) if s.candidate) + 1
    specs[last:last] = more
    _judge(job, more, backends, judged, ref)
    return extra


def _choose(job: _Job, rows, speed_rows, cands, seconds) -> None:
    """bench.measure.int8choice.apply_choice, then the speed rows follow the chosen row's new name,
    or an `ort_int8` row says that no candidate passed."""
    from bench.cpu import isa_class
    from bench.measure.int8choice import apply_choice

    name, work_dir = job.name, job.work_dir
    choice = apply_choice(
        rows, cands, name=name, work_dir=work_dir, isa_class=isa_class(),
        step_seconds={k: round(v, 1) for k, v in seconds.items()},
    )  # fmt: skip
    job.log(f"[{name}] INT8: {choice['why']} ({seconds['step']:.0f} s for the step)")
    if choice["chosen"]:
        for d in speed_rows:
            if d["variant"] == f"ort_int8_{choice['chosen']}":
                d["variant"] = "ort_int8"
        saved = work_dir / f"ort_int8_{choice['chosen']}.fidelity_logits.npy"
        if saved.is_file():  # bench.release.calibrate finds a row's logits by its variant name
            _save_logits(work_dir / "ort_int8.fidelity_logits.npy", np.load(saved))
        return
    last = max(i for i, r in enumerate(rows) if r.get("candidate"))
    rows.insert(last + 1, _skipped_int8(name, choice, job.fidelity))


def _judge(job: _Job, specs, backends, judged, ref: dict) -> None:
    """Build each runnable spec's backend and compare its logits on the fidelity images with
    torch eager FP32's (the first spec); a variant that fails to build or run is skipped
    with the reason, alone."""
    fidelity, thresholds = job.fidelity, job.settings.thresholds
    for spec in specs:
        if spec.make is None:
            continue
        job.log(f"[{job.name}] {spec.name}: building, then fidelity on {fidelity.source}")
        try:
            backend = spec.make()
            logits = _logits(backend, fidelity.inputs)
            if fidelity.labels is not None:  # bench.release.calibrate scores the variant on these
                _save_logits(job.work_dir / f"{spec.name}.fidelity_logits.npy", logits)
            # torch_fp32 comes first: its logits are the reference of every comparison
            # (kept in `ref`, so the fallbacks judged later compare with the same).
            reference = ref.setdefault("logits", logits)
            precision = backend.provenance()["precision"]
            ref["providers"][spec.name] = backend.provenance().get("provider")
            judged[spec.name] = compare_logits(
                reference, logits, fidelity.labels, precision=precision, thresholds=thresholds
            ).to_dict()
        except Exception as e:  # one variant failing to build or run must not stop the rest
            spec.skipped = f"failed: {type(e).__name__}: {str(e)[:300]}"
            continue
        backends[spec.name] = backend


def _time_cases(job: _Job, backends, specs, judged, seconds):
    """Batch 1 for every variant in interleaved rounds, then batch 32 for all but the INT8
    candidates beyond the fastest two. Returns (speed rows, {(variant, batch): row})."""
    from bench.measure.int8choice import batch32_candidates

    name, log, fidelity = job.name, job.log, job.fidelity
    rounds, timing = job.settings.rounds, job.settings.timing
    speed_rows, by_case = [], {}

    def window(named, batch, label):
        log(f"[{name}] timing {len(named)} variants at batch {batch}, {rounds} interleaved rounds")
        t0 = time.perf_counter()

        def progress(r: int, case: Case) -> None:  # one line per round: large models take minutes
            if case is named[0][1]:
                log(f"[{name}] b{batch} round {r + 1}/{rounds} ({time.perf_counter() - t0:.0f} s)")

        measured = run_interleaved(
            [c for _, c in named], model=name, image_size=job.image_size, rounds=rounds,
            timing=timing, on_case=progress,
        )  # fmt: skip
        for (variant, case), row in zip(named, measured, strict=True):
            d = {**row.to_dict(), "variant": variant}
            speed_rows.append(d)
            by_case[(variant, case.batch_size)] = d
        seconds[label] = time.perf_counter() - t0

    window([(v, Case(b, LATENCY_BATCH)) for v, b in backends.items()], LATENCY_BATCH, "timing_b1")
    cand = {s.name: s.candidate for s in specs if s.candidate and s.name in backends}
    b1 = [
        {**by_case[(v, LATENCY_BATCH)], "candidate": slug, "passed": _passed(judged, v, fidelity)}
        for v, slug in cand.items()
    ]
    keep = set(batch32_candidates(b1))
    named = [(v, Case(b, THROUGHPUT_BATCH)) for v, b in backends.items()
             if v not in cand or v in keep]  # fmt: skip
    window(named, THROUGHPUT_BATCH, "timing_b32")
    return speed_rows, by_case


def _passed(judged: dict, variant: str, fidelity: FidelityData) -> bool | None:
    if fidelity.not_judged or variant not in judged:
        return None
    return bool(judged[variant]["passed"])


def _skipped_int8(name: str, choice: dict, fidelity: FidelityData) -> dict:
    """The `ort_int8` row when no candidate passed: it says why; the candidates keep theirs."""
    return {
        "model": name, "variant": "ort_int8", "group": "int8", "runtime": "onnxruntime",
        "provider": None, "precision": "int8", "batch_size": LATENCY_BATCH,
        "latency_ms_p50": None, "artifact": "onnx:int8", "fidelity_source": fidelity.source,
        "fidelity_images": len(fidelity.inputs), "passed": False,
        "skipped": f"{choice['why']}: see the ort_int8_* candidate rows", "error": None,
        "int8_choice": choice,
    }  # fmt: skip


# The variant whose run on the fidelity images is each ONNX file's own record: ONNX Runtime,
# the runtime `python -m exports predict` and `verify` use.
_FILE_JUDGE = {"onnx:fp32": "ort_fp32", "onnx:int8": "ort_int8", "onnx:fp16": "ort_fp16"}


def _file_judge(artifact: str) -> str:
    """The variant that judged `artifact`: ort_int8_<slug> for an INT8 candidate's file."""
    if artifact.startswith("onnx:int8:"):
        return "ort_int8_" + artifact.split(":", 2)[2]
    return _FILE_JUDGE[artifact]


def stamp_files(files, specs, judged, providers, source, log) -> None:
    """Write into every ONNX file made here what it achieved itself (exports.figures): its own
    accuracy, agreement and pass/fail, `rejected` with the reason when it failed, or that it
    was not judged. Without this an INT8 copy would state its parent's accuracy."""
    from exports.figures import own_figures, stamp_figures

    by_name = {s.name: s for s in specs}
    candidates = any(a.startswith("onnx:int8:") for a in files)
    for artifact, path in files.items():
        if artifact == "onnx:int8" and candidates:
            continue  # the first candidate's file, stamped under its own key
        spec = by_name.get(_file_judge(artifact))
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


def _row(spec: VariantSpec, job: _Job, lat, thr, base, fid, files) -> dict:
    """One variant's deployment row: what it is and ships, then its fidelity figures (fid),
    its batch-1 latency (lat, against torch eager FP32's: base) and batch-32 throughput."""
    row = _blank_row(spec, job.name, _size_mb(spec, files, job.model), job.fidelity)
    if fid is not None:
        _add_fidelity(row, fid, job.fidelity)
    if lat is not None:
        _add_latency(row, lat, base)
    if thr is not None and not thr.get("error"):
        row["throughput_img_s"] = thr.get("throughput_img_s")
    return row


def _size_mb(spec: VariantSpec, files: dict, model: torch.nn.Module) -> float:
    artifact = files.get(spec.artifact) if spec.artifact.startswith("onnx") else None
    if artifact is not None:
        return file_size_mb(artifact)
    # torch variants ship the fp32 weights (the checkpoint's state_dict)
    return sum(t.numel() * t.element_size() for t in model.state_dict().values()) / 1e6


def _blank_row(spec: VariantSpec, name: str, size_mb: float, fidelity: FidelityData) -> dict:
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
        "size_mb": round(size_mb, 3),
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
        "fidelity": None,
    }
    if spec.candidate:
        row["candidate"] = spec.candidate
    return row


def _add_fidelity(row: dict, fid: dict, fidelity: FidelityData) -> None:
    row.update(
        agreement=fid["agreement"],
        test_accuracy=fid["test_accuracy"],
        accuracy_delta_pp=fid["accuracy_delta_pp"],
        max_abs_logit_diff=fid["max_abs_logit_diff"],
        passed=fid["passed"],
        fidelity_rule=fid["rule"],
        fidelity_failures=fid["failures"],
        precision=fid["precision"],
        fidelity="passed" if fid["passed"] else "failed",
    )
    if fidelity.not_judged:  # figures kept for the record, never a verdict
        row.update(passed=None, fidelity=f"not judged ({fidelity.not_judged})",
                   fidelity_failures=[])  # fmt: skip


def _add_latency(row: dict, lat: dict, base: dict | None) -> None:
    row["provider"] = lat.get("provider")
    row["threads"] = lat.get("threads")
    if lat.get("compile_seconds_by_batch"):
        row["compile_seconds_by_batch"] = lat["compile_seconds_by_batch"]
    if lat.get("inference_precision"):
        row["inference_precision"] = lat["inference_precision"]
    if lat.get("error"):
        row["error"] = lat["error"]
        row["passed"] = None if row["passed"] is None else False
        return
    for k in ("latency_ms_p50", "latency_ms_p90", "latency_ms_p99", "p50_spread_pct", "rounds"):
        row[k] = lat.get(k)
    row["speedup_vs_torch_fp32"] = _ratio(base, lat)


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
    """Rows that may be recommended: measured, no error, passed fidelity, and not an INT8
    candidate that lost to the chosen `ort_int8` (its file is not shipped)."""
    return [
        r
        for r in rows
        if r.get("passed") is True and not r.get("skipped") and not r.get("error")
        and r.get("latency_ms_p50") is not None and r.get("chosen", True)
    ]  # fmt: skip


def _speed_only(rows: Sequence[dict], model: str) -> dict | None:
    """A model whose rows were not judged (random weights, no dataset): the fastest variant,
    labelled "speed only", never a recommendation to deploy."""
    mine = [r for r in rows if r["model"] == model]
    if not mine or any(r.get("passed") is not None for r in mine if not r.get("skipped")):
        return None
    timed = [r for r in mine if r.get("latency_ms_p50") is not None and not r.get("error")
             and r.get("chosen", True)]  # fmt: skip
    fastest = min(timed, key=lambda r: r["latency_ms_p50"]) if timed else None
    why = next((r["fidelity"] for r in mine if r.get("fidelity")), "fidelity not judged")
    return {
        "variant": None,
        "recommendation": "speed only",
        "fastest_variant": fastest and fastest["variant"],
        "latency_ms_p50": fastest and fastest["latency_ms_p50"],
        "speedup_vs_torch_fp32": fastest and fastest.get("speedup_vs_torch_fp32"),
        "why": f"speed only: fidelity {why.removeprefix('fidelity ')}; fastest "
        + (f"{fastest['variant']}" if fastest else "none"),
    }


def recommend(rows: Sequence[dict]) -> dict:
    """Fastest passing variant per model (batch-1 p50) and the accuracy-latency Pareto front.

    A row that failed fidelity, was skipped or errored is never a candidate. Pareto points
    are (latency_ms_p50, test_accuracy) of the candidates across all models x variants;
    without labels (no test accuracy) there is no front.
    """
    from bench.measure import pareto_front

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
        by_model[m] = _speed_only(rows, m) or {"variant": None, "why": "no variant passed fidelity"}
    with_acc = [r for r in ok if r.get("test_accuracy") is not None]
    front = pareto_front([(r["latency_ms_p50"], r["test_accuracy"]) for r in with_acc])
    pareto = [
        {k: with_acc[i][k] for k in ("model", "variant", "latency_ms_p50", "test_accuracy")}
        for i in front
    ]
    return {"by_model": dict(sorted(by_model.items())), "pareto": pareto}


def plot_pareto(rows: Sequence[dict], path: Path) -> Path | None:
    """Test accuracy vs batch-1 latency of every passing variant (all models), front marked."""
    from bench.measure import plot_accuracy_vs_latency

    points = [
        {
            "model": r["model"],
            "runtime": r["variant"],
            "provider": r["provider"],
            "precision": "fp32",  # the variant name already says it
            "latency_ms_p50": r["latency_ms_p50"],
            # the accuracy on the fidelity images (the test split), as the y label says
            "accuracy": r["test_accuracy"],
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
