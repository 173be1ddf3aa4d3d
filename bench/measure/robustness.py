"""The corruption benchmark: every model and deployment file on the same corrupted test images.

One engine for `bench run` (after speed, before export) and `bench robustness`:
  1. the held-out test images at original resolution (neu.heldout, from the run's manifest),
  2. per condition (neu.corrupt: SNR levels, corruptions x severities) every image is
     corrupted ONCE and resized per model input size, then fed to every predictor that has
     not answered it yet: ONNX Runtime on the exported file where its fidelity passed (the
     fastest faithful engine on a CPU), torch eager otherwise,
  3. each predictor's answers are saved atomically after every condition
     (<out>/robustness/<model>__<variant>.json), so a killed run re-evaluates only what is
     missing,
  4. rows, summaries and McNemar comparisons are computed from those answers.

Torch is imported only by `torch_predictor`: an ONNX file is evaluated without it.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench import metrics as M
from neu import corrupt as C
from neu._io import atomic_write_json
from neu.image import normalize

ALPHA = 0.05
STATE_DIR = "robustness"
EVAL_BATCH = 64


@dataclass
class Predictor:
    model: str
    variant: str  # "fp32" (the model), or the deployment variant's name ("ort_int8", ...)
    engine: str  # what actually computed the answers, for the record
    image_size: int
    channels: int
    mean: tuple
    std: tuple
    classes: list[str]
    fingerprint: str  # sha256 of the file evaluated: a changed file starts over
    logits: Callable[[np.ndarray], np.ndarray]
    snr_only: bool = False  # deployment variants: the SNR levels only (and clean)

    @property
    def key(self) -> str:
        return f"{self.model}__{self.variant}"


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def onnx_predictor(
    path: Path,
    *,
    variant: str,
    engine: str,
    provider="cpu",
    threads=None,
    snr_only=False,
    fingerprint: str | None = None,
) -> Predictor:
    """fingerprint: what the answers depend on (default: the file's sha256; a run passes its
    checkpoint's, since a resumed run re-exports the same weights with a new export date)."""
    from exports.runtime import Classifier

    clf = Classifier(path, provider=provider, threads=threads)
    info = clf.info
    return Predictor(
        model=info.model,
        variant=variant,
        engine=f"{engine} (onnxruntime {clf.provider}, {Path(path).name})",
        image_size=info.image_size,
        channels=info.channels,
        mean=tuple(info.mean),
        std=tuple(info.std),
        classes=list(info.classes),
        fingerprint=fingerprint or file_sha256(Path(path)),
        logits=clf.logits,
        snr_only=snr_only,
    )


def torch_predictor(checkpoint: Path, *, threads=None) -> Predictor:
    """torch eager FP32 on the CPU: the fallback where no faithful ONNX file exists."""
    import torch

    from bench.registry import load_checkpoint

    if threads:
        torch.set_num_threads(threads)
    model, meta = load_checkpoint(checkpoint)
    model.eval()

    def logits(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return model(torch.from_numpy(x)).float().numpy()

    return Predictor(
        model=meta["model"],
        variant="fp32",
        engine=f"torch eager fp32 ({Path(checkpoint).name})",
        image_size=int(meta["image_size"]),
        channels=int(meta["channels"]),
        mean=tuple(meta["mean"]),
        std=tuple(meta["std"]),
        classes=list(meta["classes"]),
        fingerprint=file_sha256(Path(checkpoint)),
        logits=logits,
    )


def test_set_hash(heldout) -> str:
    blob = json.dumps(sorted(zip(heldout.files, heldout.hashes, strict=True)))
    return hashlib.sha256(blob.encode()).hexdigest()


def _state_path(state_dir: Path, p: Predictor) -> Path:
    return state_dir / f"{p.key}.json"


def _load_state(state_dir: Path, p: Predictor, seed: int, test_hash: str) -> dict:
    path = _state_path(state_dir, p)
    fresh = {"fingerprint": p.fingerprint, "seed": seed, "test_set": test_hash, "answers": {}}
    if not path.exists():
        return fresh
    try:
        old = json.loads(path.read_text())
    except ValueError:
        return fresh
    same = (old.get("fingerprint"), old.get("seed"), old.get("test_set")) == (
        p.fingerprint, seed, test_hash,
    )  # fmt: skip
    return old if same else fresh


def wanted(p: Predictor, plan: list[C.Condition]) -> list[C.Condition]:
    return [c for c in plan if not p.snr_only or c.corruption in ("snr", "clean")]


def evaluate(plan, heldout, predictors, state_dir: Path, *, seed: int, log=print) -> dict:
    """Answers (top-1 class indices) of every predictor on every condition it wants:
    {predictor key: {condition key: np.ndarray}}. Resumes from state_dir."""
    state_dir.mkdir(parents=True, exist_ok=True)
    test_hash = test_set_hash(heldout)
    states = {p.key: _load_state(state_dir, p, seed, test_hash) for p in predictors}
    n = len(heldout)
    for cond in plan:
        todo = [p for p in predictors if cond in wanted(p, plan)]
        todo = [p for p in todo if cond.key not in states[p.key]["answers"]]
        if not todo:
            continue
        t0 = time.perf_counter()
        corrupted = corrupt_all(heldout, cond, seed)
        t_corrupt = time.perf_counter() - t0
        timings = []
        for p in todo:
            t1 = time.perf_counter()
            pred = predict(p, corrupted)
            dt = time.perf_counter() - t1
            states[p.key]["answers"][cond.key] = pred.tolist()
            atomic_write_json(_state_path(state_dir, p), states[p.key])
            acc = float((pred == heldout.labels).mean())
            timings.append(f"{p.model}/{p.variant} {100 * acc:.1f}% in {dt:.1f} s")
        log(
            f"[robustness] {cond.label}: {n} images corrupted in {t_corrupt:.1f} s; "
            + "; ".join(timings)
        )
    return {
        k: {c: np.asarray(v, dtype=np.int64) for c, v in s["answers"].items()}
        for k, s in states.items()
    }


def corrupt_all(heldout, cond: C.Condition, seed: int) -> list[np.ndarray]:
    return [
        C.corrupt(px, cond, content_hash=h, seed=seed)
        for px, h in zip(heldout.pixels, heldout.hashes, strict=True)
    ]


def predict(p: Predictor, corrupted: list[np.ndarray]) -> np.ndarray:
    """Top-1 of `p` on the corrupted original-resolution images, resized as at deployment."""
    out = []
    for i in range(0, len(corrupted), EVAL_BATCH):
        px = np.stack([C.resize(x, p.image_size) for x in corrupted[i : i + EVAL_BATCH]])
        out.append(np.asarray(p.logits(normalize(px, p.mean, p.std))).argmax(1))
    return np.concatenate(out).astype(np.int64)


# --- rows, summaries, comparisons ------------------------------------------------------------


def build_rows(plan, heldout, predictors, answers) -> list[dict]:
    rows = []
    labels = heldout.labels
    for p in predictors:
        mine = answers[p.key]
        clean = mine.get(C.CLEAN.key)
        for cond in wanted(p, plan):
            pred = mine.get(cond.key)
            if pred is None:
                continue
            correct = int((pred == labels).sum())
            lo, hi = M.clopper_pearson(correct, len(labels))
            rows.append(
                {
                    "model": p.model,
                    "variant": p.variant,
                    "engine": p.engine,
                    **cond.record(),
                    "condition": cond.key,
                    "test_images": len(labels),
                    "correct": correct,
                    "accuracy": correct / len(labels),
                    "accuracy_ci95_low": lo,
                    "accuracy_ci95_high": hi,
                    "agreement_with_clean": None
                    if clean is None
                    else float((pred == clean).mean()),
                }
            )
    return rows


def summarize(rows: list[dict]) -> list[dict]:
    """Per (model, variant): clean accuracy, mean over the corruptions (not SNR), the worst
    condition, accuracy at each SNR level."""
    out = []
    for key in dict.fromkeys((r["model"], r["variant"]) for r in rows):
        mine = [r for r in rows if (r["model"], r["variant"]) == key]
        clean = next((r for r in mine if r["corruption"] == "clean"), None)
        corr = [r for r in mine if r["corruption"] not in ("clean", "snr")]
        degraded = [r for r in mine if r["corruption"] != "clean"]
        worst = min(degraded, key=lambda r: r["accuracy"]) if degraded else None
        out.append(
            {
                "model": key[0],
                "variant": key[1],
                "clean_accuracy": clean["accuracy"] if clean else None,
                "mean_corruption_accuracy": float(np.mean([r["accuracy"] for r in corr]))
                if corr
                else None,
                "corruption_conditions": len(corr),
                "mean_degraded_accuracy": float(np.mean([r["accuracy"] for r in degraded]))
                if degraded
                else None,
                "worst_condition": worst["condition"] if worst else None,
                "worst_accuracy": worst["accuracy"] if worst else None,
                "accuracy_at_snr_db": {
                    str(r["snr_db"]): r["accuracy"] for r in mine if r["corruption"] == "snr"
                },
            }
        )
    return out


def compare(plan, heldout, predictors, answers) -> tuple[list[dict], dict | None]:
    """McNemar between the models (their fp32 predictors) on each condition's images, and the
    verdict: the model with the highest mean accuracy over every corrupted condition, and
    those indistinguishable from it (McNemar over all corrupted images pooled, p >= 0.05)."""
    models = [p for p in predictors if p.variant == "fp32"]
    labels = heldout.labels
    rows = []
    degraded = [c for c in plan if c.corruption != "clean"]
    for cond in degraded:
        for i, a in enumerate(models):
            for b in models[i + 1 :]:
                ra = answers[a.key].get(cond.key)
                rb = answers[b.key].get(cond.key)
                if ra is None or rb is None:
                    continue
                rows.append({**cond.record(), "condition": cond.key,
                             **_mcnemar(a.model, b.model, ra == labels, rb == labels)})  # fmt: skip
    if len(models) < 2 or not degraded:
        return rows, None
    pooled = {
        m.model: np.concatenate([answers[m.key][c.key] == labels for c in degraded])
        for m in models
        if all(c.key in answers[m.key] for c in degraded)
    }
    if len(pooled) < 2:
        return rows, None
    best = max(pooled, key=lambda m: pooled[m].mean())
    verdict = {
        "most_robust": best,
        "mean_degraded_accuracy": {m: float(v.mean()) for m, v in pooled.items()},
        "conditions": [c.key for c in degraded],
        "images_per_model": int(len(pooled[best])),
        "vs_most_robust": [_mcnemar(best, m, pooled[best], pooled[m]) for m in pooled if m != best],
    }
    verdict["indistinguishable"] = [best] + [
        c["model_b"] for c in verdict["vs_most_robust"] if c["p_value"] >= ALPHA
    ]
    return rows, verdict


def _mcnemar(a: str, b: str, ok_a: np.ndarray, ok_b: np.ndarray) -> dict:
    a_only = int((ok_a & ~ok_b).sum())
    b_only = int((ok_b & ~ok_a).sum())
    return {
        "model_a": a,
        "model_b": b,
        "images": int(len(ok_a)),
        "a_only_correct": a_only,
        "b_only_correct": b_only,
        "p_value": M.mcnemar_exact(a_only, b_only),
    }


def benchmark(plan, heldout, predictors, out: Path, *, seed: int, log=print) -> dict:
    """The whole record (results.json `robustness`): evaluate (resumably), then the views'
    data. Wall time in `seconds`."""
    t0 = time.perf_counter()
    for p in predictors:
        if list(p.classes) != list(heldout.classes):
            from neu.heldout import check_classes

            check_classes(heldout.classes, p.classes, str(heldout.root))
    answers = evaluate(plan, heldout, predictors, out / STATE_DIR, seed=seed, log=log)
    rows = build_rows(plan, heldout, predictors, answers)
    comparisons, verdict = compare(plan, heldout, predictors, answers)
    return {
        "plan": [c.key for c in plan],
        "seed": seed,
        "images": heldout.split,
        "test_images": len(heldout),
        "manifest": str(heldout.manifest),
        "engines": {p.key: p.engine for p in predictors},
        "rows": rows,
        "summary": summarize(rows),
        "comparisons": comparisons,
        "verdict": verdict,
        "seconds": time.perf_counter() - t0,
    }
