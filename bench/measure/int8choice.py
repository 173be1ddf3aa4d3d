"""INT8 chosen by measurement: quantize candidates, keep the fastest one that passed fidelity.

Which INT8 file is fastest depends on the CPU: on an AVX-512 VNNI CPU ONNX Runtime runs a
U8S8 QDQ ResNet-50 about 3x faster than its FP32, while the S8S8 file (ORT's accuracy-first
default) is barely faster than FP32, because MLAS's x86 kernels multiply u8 x s8 and S8S8
costs a conversion; on an AVX2-only CPU U8S8 needs reduce_range. So every candidate of
exports.quantize.int8_candidates is made, judged on the fidelity images and timed beside
the other variants (bench.measure.deployment); `choose_int8` keeps the fastest PASSING one as
`ort_int8` and records the settings and why in the file and in results.json. A candidate
that failed fidelity is never chosen; when MinMax fails, a Percentile-calibrated version of
the same settings is tried (`fallback_settings`).

The cost is bounded: candidates are timed at batch 1 with everything else; only the fastest
two (`batch32_candidates`) are timed again at batch 32.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

FALLBACK_CALIBRATION = "percentile"
BATCH32_CANDIDATES = 2


@dataclass
class Int8Candidate:
    """One quantization of the FP32 export: its settings, its file, or why it failed."""

    slug: str
    settings: object  # exports.quantize.Int8Settings
    path: Path | None
    info: dict | None = None
    error: str | None = None

    @property
    def variant(self) -> str:
        return f"ort_int8_{self.slug}"


def make_candidates(
    fp32_onnx: Path,
    work_dir: Path,
    name: str,
    calibration,
    settings_list: Sequence,
    log: Callable[[str], None],
) -> list[Int8Candidate]:
    """Quantize `fp32_onnx` once per settings into work_dir/<name>.int8.<slug>.onnx."""
    from exports.quantize import QuantizationError, quantize_int8, settings_slug

    out = []
    for settings in settings_list:
        slug = settings_slug(settings)
        path = work_dir / f"{name}.int8.{slug}.onnx"
        log(
            f"[{name}] INT8 candidate {slug}: calibrating on {len(calibration.inputs)} images "
            f"of the {calibration.source} (reduce_range={settings.reduce_range}: "
            f"{settings.reason})"
        )
        try:
            info = quantize_int8(
                fp32_onnx,
                path,
                calibration.inputs,
                settings,
                calibration={"seed": calibration.seed, "source": calibration.source},
            )
            out.append(Int8Candidate(slug, settings, path, info))
        except QuantizationError as e:
            out.append(Int8Candidate(slug, settings, None, error=str(e)))
    return out


def fallback_settings(candidates: Sequence[Int8Candidate], judged: dict[str, dict]) -> list:
    """Percentile-calibrated versions of the MinMax candidates that failed fidelity."""
    from exports.quantize import with_calibration

    return [
        with_calibration(c.settings, FALLBACK_CALIBRATION)
        for c in candidates
        if c.settings.calibration_method == "minmax"
        and c.variant in judged
        and judged[c.variant].get("passed") is False
    ]


def _measured(rows: Sequence[dict]) -> list[dict]:
    return [
        r for r in rows
        if r.get("latency_ms_p50") is not None and not r.get("error") and not r.get("skipped")
    ]  # fmt: skip


def choose_int8(rows: Sequence[dict]) -> tuple[dict | None, str]:
    """(the chosen candidate row or None, why), from the candidates' batch-1 rows.

    Judged rows (`passed` True/False): the fastest passing one (batch-1 p50); a failing one
    never, even when it is the fastest. Rows not judged (`passed` None: random weights, no
    dataset) can only be ranked on speed: the fastest is chosen, and `why` says so.
    """
    measured = _measured(rows)
    if not measured:
        return None, "no INT8 candidate could be measured"
    judged = [r for r in measured if r.get("passed") is not None]
    if not judged:
        best = min(measured, key=lambda r: r["latency_ms_p50"])
        return best, (
            f"{best['candidate']}: the fastest of {len(measured)} candidates at batch 1 "
            f"({_p50s(measured)}); fidelity not judged, so chosen on speed only"
        )
    passing = [r for r in judged if r["passed"]]
    failing = [r["candidate"] for r in judged if not r["passed"]]
    if not passing:
        return None, f"no INT8 candidate passed fidelity ({', '.join(failing)} failed)"
    best = min(passing, key=lambda r: r["latency_ms_p50"])
    why = (
        f"{best['candidate']}: the fastest candidate that passed fidelity at batch 1 "
        f"({_p50s(measured)})"
    )
    if failing:
        why += f"; failed fidelity, never chosen: {', '.join(failing)}"
    return best, why


def _p50s(rows: Sequence[dict]) -> str:
    ordered = sorted(rows, key=lambda r: r["latency_ms_p50"])
    return ", ".join(f"{r['candidate']} {r['latency_ms_p50']:.2f} ms" for r in ordered)


def batch32_candidates(rows: Sequence[dict], k: int = BATCH32_CANDIDATES) -> list[str]:
    """The variants of the `k` candidates timed again at batch 32: the fastest at batch 1,
    those that passed fidelity (or were not judged) first, failing ones only to fill up."""
    ranked = sorted(_measured(rows), key=lambda r: (r.get("passed") is False, r["latency_ms_p50"]))
    return [r["variant"] for r in ranked[:k]]


def apply_choice(
    rows: list[dict],
    candidates: Sequence[Int8Candidate],
    *,
    name: str,
    work_dir: Path,
    isa_class: str,
    step_seconds: dict,
) -> dict:
    """Rename the chosen candidate's row to `ort_int8`, write its file as <name>.int8.onnx
    with `neu_bench.int8_choice` (settings, why, every candidate's figures); the other
    candidates keep their rows (`chosen` False). Returns the choice (results.json
    `int8_choice`)."""
    cand_rows = [r for r in rows if r.get("candidate") and r["variant"].startswith("ort_int8_")]
    chosen, why = choose_int8(cand_rows)
    by_slug = {c.slug: c for c in candidates}
    choice = {
        "model": name,
        "chosen": chosen["candidate"] if chosen else None,
        "settings": asdict(by_slug[chosen["candidate"]].settings) if chosen else None,
        "why": why,
        "cpu_isa_class": isa_class,
        "fidelity_source": cand_rows[0]["fidelity_source"] if cand_rows else None,
        "candidates": [_summary(r) for r in cand_rows]
        + [{"candidate": c.slug, "error": c.error} for c in candidates if c.error],
        "step_seconds": step_seconds,
    }
    for r in cand_rows:
        r["chosen"] = r is chosen
    if chosen is None:
        return choice
    src = by_slug[chosen["candidate"]].path
    dst = work_dir / f"{name}.int8.onnx"
    _write_chosen(src, dst, choice)
    chosen.update(variant="ort_int8", artifact="onnx:int8", int8_choice=choice)
    return choice


def _summary(r: dict) -> dict:
    keys = ("candidate", "latency_ms_p50", "speedup_vs_torch_fp32",
            "throughput_img_s", "agreement", "accuracy_delta_pp", "passed", "fidelity",
            "size_mb", "error")  # fmt: skip
    return {k: r.get(k) for k in keys}


def _write_chosen(src: Path, dst: Path, choice: dict) -> None:
    from exports.quantize import update_metadata
    from neu._io import atomic_path

    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)
    # Without the per-candidate variant names: the file stands alone.
    stamp = {k: v for k, v in choice.items() if k != "step_seconds"}
    update_metadata(dst, {"int8_choice": json.dumps(stamp, sort_keys=True)})
