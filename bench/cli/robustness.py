"""`python -m bench robustness RUN_DIR|MODEL.onnx --data PATH`: the corruption benchmark for
an existing run or one exported file.

For an .onnx file it needs only onnxruntime, numpy, Pillow (and matplotlib for the plots):
the test images come from the run's split manifest (split.json beside exports/, or
--manifest), never from torch. Without a manifest the split is re-derived from the file's
metadata as `exports verify` does, which loads the dataset through torch.
"""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path

from bench.measure import robustness as R
from bench.report import robustness as V
from neu import corrupt as C
from neu._io import atomic_write_json, atomic_write_text


def add_arguments(p) -> None:
    p.add_argument("target", help="a run folder (with results.json) or an exported .onnx file")
    p.add_argument("--data", help="dataset folder (default: $NEU_DATA, then data/NEU-CLS)")
    p.add_argument("--robustness", default="snr,s3",
                   help="conditions, as for `bench run --robustness` (default snr,s3)")  # fmt: skip
    p.add_argument("--robustness-seed", type=int, default=0, help="seed of the corruption draws")
    p.add_argument("--manifest", help="the run's split.json (default: found beside the file)")
    p.add_argument("--out", help="output folder for an .onnx target (default: "
                   "runs/robustness-<file name>); a run folder is updated in place")  # fmt: skip
    p.add_argument("--threads", type=int, help="ONNX Runtime / torch CPU threads")
    p.add_argument("--provider", default="cpu", help="ONNX Runtime provider: cpu | cuda")
    p.add_argument("--layout", default="auto", help="dataset layout, as for bench run")


def robustness_command(args, log=print) -> tuple[dict, Path]:
    """Returns (results, out). Bad flags and bad data raise ValueError before any work."""
    import os

    plan = C.parse_plan(args.robustness)  # CorruptionSpecError names --robustness
    data = Path(args.data or os.environ.get("NEU_DATA") or "data/NEU-CLS")
    target = Path(args.target)
    if target.is_dir():
        return _run_dir(target, args, data, log), target
    if target.suffix != ".onnx" or not target.is_file():
        raise ValueError(f"{target}: not a run folder (with results.json) nor an .onnx file")
    if not plan:
        raise ValueError("--robustness none: nothing to evaluate")
    return _onnx_file(target, args, plan, data, log)


def _run_dir(run: Path, args, data: Path, log) -> dict:
    from bench.release.robustness import robustness_section
    from bench.release.section import assign
    from bench.report.core import write_outputs

    path = run / "results.json"
    if not path.is_file():
        raise ValueError(f"{run} has no results.json: pass the folder `bench run --out` wrote")
    results = json.loads(path.read_text())
    t = time.perf_counter()
    section = robustness_section(results, run, data=data, spec=args.robustness,
                                 seed=args.robustness_seed, threads=args.threads, log=log,
                                 layout=args.layout)  # fmt: skip
    if not section:
        raise ValueError(f"{run}: no trained model to evaluate (or --robustness none)")
    section["robustness"]["command_seconds"] = time.perf_counter() - t
    assign(results, section)
    write_outputs(run, results)
    return results


def _manifest(target: Path, args, info, data: Path, out: Path) -> Path:
    if args.manifest:
        return Path(args.manifest)
    for cand in (target.parent / "split.json", target.parent.parent / "split.json",
                 target.parent.parent.parent / "split.json"):  # fmt: skip
        if cand.is_file():
            return cand
    log_note = "re-derived from the file's metadata (needs torch; pass --manifest to avoid it)"
    from neu.dataset import load_dataset
    from neu.split import make_split, save_manifest

    if not info.split:
        raise ValueError(f"{target} records no split and no split.json is beside it: "
                         "pass --manifest (the run's split.json)")  # fmt: skip
    ds = load_dataset(data, image_size=info.image_size, channels=info.channels,
                      layout=args.layout)  # fmt: skip
    keys = ("seed", "val_fraction", "test_fraction", "limit_per_class", "folds", "fold")
    split = make_split(ds, **{k: v for k, v in info.split.items() if k in keys})
    out.mkdir(parents=True, exist_ok=True)
    print(f"split manifest {log_note}")
    return save_manifest(split, ds, out / "split.json")


def _onnx_file(target: Path, args, plan, data: Path, log) -> tuple[dict, Path]:
    from exports.runtime import Classifier
    from neu.heldout import load_heldout

    clf = Classifier(target, provider=args.provider, threads=args.threads)
    info = clf.info
    out = Path(args.out or Path("runs") / f"robustness-{target.stem.replace('.', '-')}")
    manifest = _manifest(target, args, info, data, out)
    heldout = load_heldout(manifest, data, channels=info.channels, classes=list(info.classes),
                           layout=args.layout)  # fmt: skip
    if info.split_hash and heldout.split_hash and info.split_hash != heldout.split_hash:
        raise ValueError(
            f"{manifest} (split {heldout.split_hash[:12]}) is not the split {target.name} was "
            f"tested on ({info.split_hash[:12]}): its test images may be training images; "
            "pass that run's split.json with --manifest"
        )
    variant = "fp32" if info.precision == "fp32" else f"ort_{info.precision}"
    pred = R.onnx_predictor(target, variant=variant, engine=f"{target.name}",
                            provider=args.provider, threads=args.threads)  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    log(f"[robustness] {target} on {len(heldout)} {heldout.split} images of {heldout.root}")
    rec = R.benchmark(plan, heldout, [pred], out, seed=args.robustness_seed, log=log)
    rec["spec"] = [args.robustness]
    V.write_plots(out, rec, heldout)
    V.write_csv(out, rec)
    results = {
        "kind": "robustness",
        "name": target.name,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "onnx": str(target),
        "environment": _environment(args.threads),
        "robustness": rec,
    }
    atomic_write_json(out / "results.json", results)
    _write_report(out, results)
    return results, out


def _environment(threads) -> dict:
    """Machine and versions, torch-free (bench.measure.environment imports torch)."""
    from importlib import metadata

    from bench.cpu import ISA_FLAGS, cpu_flags, isa_label

    flags = cpu_flags()
    isa = {"machine": platform.machine(), **{f: f in flags for f in ISA_FLAGS}}
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f
                        if ln.lower().startswith("model name")), cpu)  # fmt: skip
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cpu_isa": isa,
        "cpu_isa_label": isa_label(isa),
        "onnxruntime": metadata.version("onnxruntime-gpu")
        if _installed("onnxruntime-gpu") else metadata.version("onnxruntime"),
        "threads": threads,
    }  # fmt: skip


def _installed(dist: str) -> bool:
    from importlib import metadata

    try:
        metadata.version(dist)
        return True
    except metadata.PackageNotFoundError:
        return False


def _write_report(out: Path, results: dict) -> None:
    from bench.report.html import markdown_to_html

    env = results["environment"]
    md = "\n\n".join(
        [
            f"# neu-bench robustness: {results['name']}",
            f"Created {results['created']} on {env['cpu']} ({env['cpu_isa_label']}), "
            f"onnxruntime {env['onnxruntime']}. Command: `python -m bench robustness "
            f"{results['onnx']}`.",
            *V.markdown(results),
        ]
    )
    atomic_write_text(out / "report.md", md + "\n")
    atomic_write_text(out / "report.html", markdown_to_html(md, base=out))
