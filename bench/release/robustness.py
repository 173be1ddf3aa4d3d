"""The robustness step of a run (bench run, and `bench robustness RUN_DIR`): which files to
evaluate, on which images, then bench.measure.robustness and the views."""

from __future__ import annotations

from pathlib import Path

from bench.measure import robustness as R
from bench.release.section import assign
from bench.report import robustness as V
from bench.summary import best_rows
from neu import corrupt as C

# Deployment artifacts that ONNX Runtime runs from their own file (bench.measure.deployment names).
_FILE_SUFFIX = {"onnx:int8": ".int8.onnx", "onnx:fp16": ".fp16.onnx"}


def _fp32_file(results: dict, out: Path, name: str, staged: dict) -> tuple[Path | None, str]:
    """The model's FP32 ONNX file where it was proven faithful, and the proof."""
    dep = {r["variant"]: r for r in results.get("deployment", []) if r["model"] == name}
    exported = next((e for e in results.get("exports", []) if e["model"] == name), None)
    candidates = [staged.get(name), out / "exports" / f"{name}.onnx"]
    path = next((Path(p) for p in candidates if p is not None and Path(p).is_file()), None)
    if path is None:
        return None, ""
    if exported and exported.get("parity_passed"):
        return path, "ort_fp32: parity with torch passed"
    if dep.get("ort_fp32", {}).get("passed"):
        return path, "ort_fp32: strict fidelity with torch passed"
    return None, ""


def run_predictors(results: dict, out: Path, threads=None, staged=None):
    """(predictors, skipped): each model's FP32 (ONNX Runtime where faithful, else torch
    eager) on the full plan; each deployment variant that passed fidelity and ships its own
    ONNX file, on the SNR levels."""
    staged = staged or {}
    predictors, skipped = [], []
    for name, row in best_rows(results).items():
        ckpt = out / row["checkpoint"]
        fingerprint = R.file_sha256(ckpt) if ckpt.is_file() else None
        path, proof = _fp32_file(results, out, name, staged)
        if path is not None:
            predictors.append(R.onnx_predictor(path, variant="fp32", engine=proof,
                                               threads=threads, fingerprint=fingerprint))  # fmt: skip
        else:
            predictors.append(R.torch_predictor(ckpt, threads=threads))
        for r in results.get("deployment", []):
            if r["model"] != name or r["variant"] in ("torch_fp32", "ort_fp32"):
                continue
            why = _variant_skip(r)
            if why:
                skipped.append({"model": name, "variant": r["variant"], "why": why})
                continue
            file = out / "variants" / name / f"{name}{_FILE_SUFFIX[r['artifact']]}"
            predictors.append(R.onnx_predictor(
                file, variant=r["variant"], engine=f"{r['variant']}: fidelity passed",
                provider=r.get("provider") or "cpu", threads=threads, snr_only=True,
                fingerprint=f"{fingerprint}:{r['variant']}" if fingerprint else None,
            ))  # fmt: skip
    return predictors, skipped


def _variant_skip(r: dict) -> str | None:
    if r.get("skipped"):
        return f"not run here: {r['skipped']}"
    if not r.get("passed"):
        return "failed fidelity, never recommended"
    if r.get("chosen") is False:
        return "an INT8 candidate that was not kept: ort_int8 is the one shipped"
    if r["artifact"] not in _FILE_SUFFIX:
        if r.get("precision") == "fp32":
            return "FP32 weights with strict parity to torch: its answers are the fp32 rows'"
        return f"runs in {r['runtime']}, which this step does not drive"
    if r["runtime"] != "onnxruntime":
        return (f"{r['runtime']} on the same file as the onnxruntime variant, which is "
                "evaluated")  # fmt: skip
    return None


def manifest_for(out: Path, row: dict) -> Path:
    fold = row.get("fold")
    return out / ("split.json" if fold is None else f"split_fold{fold}.json")


def robustness_step(results: dict, out: Path, *, data, spec: str, seed: int, threads=None,
                    staged=None, log=print, layout="auto") -> dict | None:  # fmt: skip
    """`bench run --robustness`: the robustness step's section (robustness_section), assigned
    into results; returns its record (results["robustness"]), or None when there was
    nothing to evaluate (results untouched)."""
    section = robustness_section(results, out, data=data, spec=spec, seed=seed,
                                 threads=threads, staged=staged, log=log, layout=layout)  # fmt: skip
    assign(results, section)
    return section.get("robustness")


def robustness_section(results: dict, out: Path, *, data, spec: str, seed: int, threads=None,
                       staged=None, log=print, layout="auto") -> dict:  # fmt: skip
    """Evaluate, then write robustness.csv and the plots; results itself is only read.

    Owns: robustness (the benchmark's record: conditions, per-predictor figures, what was
    skipped and why). Empty when the plan is empty or nothing was trained."""
    from neu.heldout import load_heldout

    plan = C.parse_plan(spec)
    if not plan:
        return {}
    predictors, skipped = run_predictors(results, Path(out), threads=threads, staged=staged)
    if not predictors:
        return {}
    best = best_rows(results)
    first = best[predictors[0].model]
    # With --folds each model's shipped checkpoint may come from another fold: only those of
    # the first one's fold are evaluated (another fold's test images were its training data).
    for p in [p for p in predictors if best[p.model].get("fold") != first.get("fold")]:
        predictors.remove(p)
        skipped.append({"model": p.model, "variant": p.variant,
                        "why": f"its checkpoint is from fold {best[p.model].get('fold')}, the "
                        f"evaluated test images are fold {first.get('fold')}'s"})  # fmt: skip
    heldout = load_heldout(manifest_for(Path(out), first), data,
                           channels=predictors[0].channels, classes=predictors[0].classes,
                           layout=layout)  # fmt: skip
    log(f"[robustness] {len(plan) - 1} conditions + clean x {len(heldout)} {heldout.split} "
        f"images x {len(predictors)} predictors (resumable: {Path(out) / R.STATE_DIR})")  # fmt: skip
    rec = R.benchmark(plan, heldout, predictors, Path(out), seed=seed, log=log)
    rec["spec"] = [spec]
    rec["skipped"] = skipped
    V.write_plots(out, rec, heldout)
    V.write_csv(out, rec)
    return {"robustness": rec}
