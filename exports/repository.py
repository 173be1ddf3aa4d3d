"""A Triton / OpenVINO Model Server model repository from exported files: no server to write.

    DIR/<model>/config.pbtxt        Triton's ModelConfig in protobuf text format
    DIR/<model>/labels.txt          class names, one a line, in output order
    DIR/<model>/1/model.onnx        the raw-pixel file (uint8 in; see exports.rawpixel)
    DIR/<model>_int8/...            one folder per exported variant

OpenVINO Model Server reads the same layout (the numbered version folders; it ignores
config.pbtxt). A version folder is never rewritten: a different file becomes version 2, 3, ...
(the server serves the newest); the same bytes again reuse the latest version. A path that
exists with content that is not such a model folder is refused, nothing is written.

config.pbtxt is rendered from a nested structure by a small protobuf text-format writer;
tests parse it with tritonclient's `model_config_pb2.ModelConfig` and, where tritonclient is
installed, every write does too (`validate_config`). Names, types and dims come from the ONNX
graph read back with onnx. No torch.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from exports.contract import (
    INPUT_NAME,
    METADATA_PREFIX,
    PROVIDERS,
    RAW_INPUT_NAME,
    parse_metadata,
)
from neu._io import atomic_write_text

CONFIG = "config.pbtxt"
LABELS = "labels.txt"
MODEL_FILE = "model.onnx"
DEFAULT_MAX_BATCH = 64
# The dynamic batcher may hold a request this long for companions: half of one batch-1
# inference, so an idle server adds at most 50% latency, within these bounds (microseconds).
QUEUE_DELAY_SHARE = 0.5
QUEUE_DELAY_MIN_US, QUEUE_DELAY_MAX_US = 100, 100_000
# max_batch_size: the smallest measured batch reaching this share of the best throughput.
THROUGHPUT_SHARE = 0.95

_ONNX_TO_TRITON = {
    1: "TYPE_FP32",
    2: "TYPE_UINT8",
    3: "TYPE_INT8",
    5: "TYPE_INT16",
    6: "TYPE_INT32",
    7: "TYPE_INT64",
    9: "TYPE_BOOL",
    10: "TYPE_FP16",
    11: "TYPE_FP64",
    16: "TYPE_BF16",
}


class RepositoryError(ValueError):
    """The repository path holds something else, or a file cannot be served (says which)."""


class Enum(str):
    """A protobuf enum value: written bare (KIND_CPU), not quoted."""


@dataclass(frozen=True)
class Serving:
    """How the server should batch and place one model, and where each figure came from."""

    max_batch_size: int = DEFAULT_MAX_BATCH
    max_batch_basis: str = "default (no throughput curve measured)"
    queue_delay_us: int = 1000
    queue_delay_basis: str = "default (no batch-1 latency measured)"
    instance_kind: str = "KIND_CPU"
    extra: dict[str, str] = field(default_factory=dict)  # more `parameters`, e.g. fidelity


def queue_delay_from_latency(latency_ms: float) -> int:
    us = round(latency_ms * 1000 * QUEUE_DELAY_SHARE)
    return int(min(max(us, QUEUE_DELAY_MIN_US), QUEUE_DELAY_MAX_US))


def max_batch_from_curve(curve: dict[int, float]) -> int | None:
    """{batch: img/s} -> the smallest batch within THROUGHPUT_SHARE of the best, or None."""
    if len(curve) < 2:
        return None
    best = max(curve.values())
    return min(b for b, v in curve.items() if v >= THROUGHPUT_SHARE * best)


def serving_from_rows(rows: list[dict], *, model: str, precision: str, gpu: bool) -> Serving | None:
    """Serving figures from a run's speed rows of the ONNX Runtime `precision` file; None
    when the run measured none (--no-speed): add_model then times batch 1 itself."""
    mine = [
        r
        for r in rows
        if r.get("model") == model
        and r.get("runtime") == "onnxruntime"
        and r.get("precision") == precision
        and r.get("latency_ms_p50") is not None
        and (r.get("provider") in ("cuda", "tensorrt")) == gpu
    ]
    if not mine:
        return None
    provider = mine[0]["provider"]
    kind = "KIND_GPU" if gpu else "KIND_CPU"
    curve = {int(r["batch_size"]): float(r["throughput_img_s"]) for r in mine}
    b1 = [r for r in mine if r.get("batch_size") == 1 and not r.get("max_batch")]
    args: dict = {"instance_kind": kind}
    best = max_batch_from_curve(curve)
    if best is not None:
        shown = ", ".join(f"{b}: {v:.0f} img/s" for b, v in sorted(curve.items()))
        args.update(
            max_batch_size=best,
            max_batch_basis=f"smallest measured batch within {THROUGHPUT_SHARE:.0%} of the "
            f"best ONNX Runtime {provider} {precision} throughput ({shown})",
        )
    if b1:
        ms = float(b1[0]["latency_ms_p50"])
        args.update(
            queue_delay_us=queue_delay_from_latency(ms),
            queue_delay_basis=f"{QUEUE_DELAY_SHARE:g} x the measured batch-1 p50 of ONNX Runtime "
            f"{provider} {precision} ({ms:.3g} ms), within [{QUEUE_DELAY_MIN_US}, "
            f"{QUEUE_DELAY_MAX_US}] us",
        )
    return Serving(**args)


def measure_serving(path: Path, info, *, gpu: bool, iters: int = 20) -> Serving:
    """No run figures at hand (a bare MODEL.onnx): time batch 1 here, on the CPU."""
    import time

    import numpy as np
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(str(path), opts, providers=list(PROVIDERS["cpu"]))
    shape = [1, *info.input_shape[1:]]
    x = np.zeros(shape, np.uint8 if info.raw_pixels else np.float32)
    feed = {RAW_INPUT_NAME if info.raw_pixels else INPUT_NAME: x}
    sess.run(None, feed)  # warm-up
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        sess.run(None, feed)
        times.append((time.perf_counter() - t) * 1000)
    ms = float(np.median(times))
    return Serving(
        instance_kind="KIND_GPU" if gpu else "KIND_CPU",
        queue_delay_us=queue_delay_from_latency(ms),
        queue_delay_basis=f"{QUEUE_DELAY_SHARE:g} x batch-1 p50 measured while writing the "
        f"repository (ONNX Runtime CPU, {iters} runs: {ms:.3g} ms), within "
        f"[{QUEUE_DELAY_MIN_US}, {QUEUE_DELAY_MAX_US}] us",
    )


# ---------------------------------------------------------------------------------------------
# config.pbtxt


def folder_name(info) -> str:
    """<model> for the FP32 file, <model>_int8 / <model>_fp16 for the variants."""
    return info.model if info.precision == "fp32" else f"{info.model}_{info.precision}"


def graph_io(proto) -> tuple[list[dict], list[dict]]:
    """(inputs, outputs) of an ONNX graph: name, Triton type, dims without the batch axis."""
    initializers = {t.name for t in proto.graph.initializer}

    def describe(v) -> dict:
        t = v.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim]
        if not dims or dims[0] != -1:
            raise RepositoryError(f"{v.name}: shape {dims} has no dynamic batch axis first")
        if t.elem_type not in _ONNX_TO_TRITON:
            raise RepositoryError(f"{v.name}: ONNX element type {t.elem_type} has no Triton type")
        return {"name": v.name, "data_type": Enum(_ONNX_TO_TRITON[t.elem_type]), "dims": dims[1:]}

    inputs = [describe(i) for i in proto.graph.input if i.name not in initializers]
    return inputs, [describe(o) for o in proto.graph.output]


def build_config(name: str, proto, info, serving: Serving) -> dict:
    """The ModelConfig fields for one model, as a nested structure (render with to_pbtxt)."""
    inputs, outputs = graph_io(proto)
    outputs[0]["label_filename"] = LABELS  # Triton's classification extension names classes
    props = {p.key: p.value for p in proto.metadata_props}
    card = {
        k: props[METADATA_PREFIX + k]
        for k in (
            "model",
            "classes",
            "image_size",
            "channels",
            "input_kind",
            "input_layout",
            "resize",
            "preprocessing",
            "precision",
            "test_accuracy",
            "test_images",
            "val_accuracy",
            "dataset_hash",
            "split_hash",
            "weights",
            "export_date",
            "deployment_variant",
            "fidelity",
            "raw_parity",
        )  # fmt: skip
        if METADATA_PREFIX + k in props
    }
    card.update(
        max_batch_size_basis=serving.max_batch_basis,
        max_queue_delay_basis=serving.queue_delay_basis,
        **serving.extra,
    )
    return {
        "name": name,
        "platform": "onnxruntime_onnx",
        "max_batch_size": serving.max_batch_size,
        "input": inputs,
        "output": outputs,
        "dynamic_batching": {"max_queue_delay_microseconds": serving.queue_delay_us},
        "instance_group": [{"count": 1, "kind": Enum(serving.instance_kind)}],
        "parameters": [
            {"key": METADATA_PREFIX + k, "value": {"string_value": str(v)}}
            for k, v in sorted(card.items())
        ],
    }


def to_pbtxt(fields: dict, indent: int = 0) -> str:
    """Protobuf text format: dict = message, list = repeated field (one block per item)."""
    pad = "  " * indent
    lines = []
    for key, value in fields.items():
        items = (
            value if isinstance(value, list) and value and isinstance(value[0], dict) else [value]
        )
        for item in items:
            if isinstance(item, dict):
                lines += [f"{pad}{key} {{", to_pbtxt(item, indent + 1), f"{pad}}}"]
            elif isinstance(item, list):
                lines.append(f"{pad}{key}: [ {', '.join(_scalar(v) for v in item)} ]")
            else:
                lines.append(f"{pad}{key}: {_scalar(item)}")
    return "\n".join(line for line in lines if line)


def _scalar(v) -> str:
    if isinstance(v, Enum):
        return str(v)
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    escaped = str(v).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


def validate_config(text: str, *, source: str = CONFIG) -> bool:
    """Parse with Triton's own ModelConfig where tritonclient is installed (True), else False.
    An unknown field or a wrong type raises RepositoryError."""
    try:
        from google.protobuf import text_format
        from tritonclient.grpc import model_config_pb2
    except ImportError:
        return False
    try:
        text_format.Parse(text, model_config_pb2.ModelConfig())
    except text_format.ParseError as e:
        raise RepositoryError(f"{source} does not parse as Triton's ModelConfig: {e}") from e
    return True


# ---------------------------------------------------------------------------------------------
# the folder


def check_repository(out: Path) -> None:
    """Refuse a path that is not (yet) a model repository; other models' folders may stay."""
    if out.exists() and not out.is_dir():
        raise RepositoryError(f"{out} exists and is not a folder: pick another --out")
    if not out.is_dir():
        return
    other = [
        p.name
        for p in out.iterdir()
        if not p.name.startswith(".") and not (p.is_dir() and (p / CONFIG).is_file())
    ]
    if other:
        raise RepositoryError(
            f"{out} exists and holds {', '.join(sorted(other)[:5])}, which are not model folders "
            "(<name>/config.pbtxt): refusing to write a model repository there (nothing was "
            "overwritten); pick an empty or new --out"
        )


def existing_versions(folder: Path) -> list[int]:
    """Version numbers in a model folder; anything but config, labels and versions refuses."""
    if not folder.exists():
        return []
    if not folder.is_dir():
        raise RepositoryError(f"{folder} exists and is not a model folder: nothing was written")
    versions, other = [], []
    for p in folder.iterdir():
        if p.name in (CONFIG, LABELS) and p.is_file():
            continue
        if p.is_dir() and p.name.isdigit() and (p / MODEL_FILE).is_file():
            versions.append(int(p.name))
        elif not p.name.startswith("."):
            other.append(p.name)
    if other or not (folder / CONFIG).is_file():
        raise RepositoryError(
            f"{folder} exists with other content ({', '.join(sorted(other)[:5]) or 'no config.pbtxt'}):"
            " refusing to overwrite it; remove it or pick another --out"
        )
    return sorted(versions)


def add_model(
    out: str | Path,
    src: str | Path,
    *,
    serving: Serving | None = None,
    raw: bool = True,
    pixels=None,
    pixels_source: str = "",
    gpu: bool = False,
) -> dict:
    """Serve the exported file `src` from repository `out`; returns what was written.

    raw: serve the raw-pixel version (composed here unless `src` already is one; parity on
    `pixels`, else synthetic). serving None: batch-1 latency measured here (CPU).
    """
    import onnx

    out, src = Path(out), Path(src)
    check_repository(out)
    info = _read_info(src)
    name = folder_name(info)
    folder = out / name
    versions = existing_versions(folder)
    out.mkdir(parents=True, exist_ok=True)
    _remove_stale_stages(out, name)
    stage = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=out))
    try:
        staged = stage / MODEL_FILE
        parity = _stage_file(src, staged, info, raw=raw, pixels=pixels, source=pixels_source)
        served = onnx.load(str(staged))
        served_info = _read_info(staged)
        if serving is None:
            serving = measure_serving(staged, served_info, gpu=gpu)
        text = to_pbtxt(build_config(name, served, served_info, serving)) + "\n"
        validated = validate_config(text, source=str(folder / CONFIG))
        # Config first, version last: a kill in between leaves a folder that the next run
        # accepts and completes (config.pbtxt without versions), never a version without one.
        folder.mkdir(exist_ok=True)
        atomic_write_text(folder / LABELS, "".join(c + "\n" for c in served_info.classes))
        atomic_write_text(folder / CONFIG, text)
        version, reused = _place_version(folder, versions, staged)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return {
        "folder": name,
        "version": version,
        "reused_version": reused,
        "path": str(folder / str(version) / MODEL_FILE),
        "source": str(src),
        "input_kind": served_info.input_kind,
        "precision": served_info.precision,
        "max_batch_size": serving.max_batch_size,
        "max_queue_delay_microseconds": serving.queue_delay_us,
        "instance_kind": serving.instance_kind,
        "config_validated_with_tritonclient": validated,
        "raw_parity": parity,
    }


def _remove_stale_stages(out: Path, name: str) -> None:
    """A writer killed mid-way (SIGKILL, power loss) never reached its `finally`: its staging
    folder, a whole model file, would stay forever. One writer per repository: remove them."""
    for stale in out.glob(f".{name}.*"):
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)


def _stage_file(src: Path, staged: Path, info, *, raw: bool, pixels, source: str) -> dict | None:
    """The file to serve at `staged`: the raw-pixel copy composed here (proven on `pixels`),
    or `src` as it is. Returns its raw-pixel parity figures (None for a plain file)."""
    from exports.rawpixel import embed_preprocessing

    if raw and not info.raw_pixels:
        return embed_preprocessing(src, staged, pixels=pixels, source=source)
    shutil.copyfile(src, staged)  # served as it is; a raw-pixel file carries its own figures
    stamped = info.raw.get(METADATA_PREFIX + "raw_parity")
    return json.loads(stamped) if stamped else None


def _read_info(path: Path):
    import onnx

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # onnx raises DecodeError, OSError, ... for a file that is not ONNX
        raise RepositoryError(
            f"{path} is not a readable ONNX model ({type(e).__name__}: {e})"
        ) from e
    return parse_metadata({p.key: p.value for p in proto.metadata_props}, source=path)


def _same_model(a: Path, b: Path) -> bool:
    """Same bytes, or the same file re-exported: only neu_bench.export_date differs (a resumed
    `bench run` exports its checkpoint again; that is no new version to serve)."""
    if a.read_bytes() == b.read_bytes():
        return True
    import onnx

    def canonical(path: Path) -> bytes:
        proto = onnx.load(str(path))
        props = {p.key: p.value for p in proto.metadata_props}
        props.pop(METADATA_PREFIX + "export_date", None)
        del proto.metadata_props[:]
        onnx.helper.set_model_props(proto, dict(sorted(props.items())))
        return proto.SerializeToString(deterministic=True)

    return canonical(a) == canonical(b)


def _place_version(folder: Path, versions: list[int], staged: Path) -> tuple[int, bool]:
    """Move the staged file into a new version folder, or reuse the latest if identical."""
    if versions:
        latest = folder / str(versions[-1]) / MODEL_FILE
        if _same_model(latest, staged):
            return versions[-1], True
    version = (versions[-1] + 1) if versions else 1
    folder.mkdir(parents=True, exist_ok=True)
    vdir = Path(tempfile.mkdtemp(prefix=f".{version}.", dir=folder))
    os.replace(staged, vdir / MODEL_FILE)
    target = folder / str(version)
    if target.exists():  # another writer got there first: never overwrite a version
        shutil.rmtree(vdir, ignore_errors=True)
        raise RepositoryError(f"{target} appeared while writing: not overwritten, run again")
    os.rename(vdir, target)  # a whole version folder appears at once
    return version, False


# ---------------------------------------------------------------------------------------------
# sources: a run folder or .onnx files


def run_sources(run_dir: Path) -> list[tuple[Path, Serving | None, bool]]:
    """The exported files of a `bench run` folder (FP32 export + recommended variant), each
    with serving figures from that run's measurements and whether it ran on CUDA."""
    results_path = run_dir / "results.json"
    if not results_path.is_file():
        raise RepositoryError(
            f"{run_dir} has no results.json: pass a `bench run` output folder or .onnx files"
        )
    results = json.loads(results_path.read_text())
    env = results.get("environment") or {}
    sources = []
    for entry in results.get("exports") or []:
        if entry.get("error") or not entry.get("parity_passed"):
            continue
        rec = entry.get("recommended") or {}
        gpu = rec.get("provider") in ("cuda", "tensorrt") or bool(env.get("cuda_available"))
        # The raw-pixel copy when the run wrote one (its parity was proven on the test images).
        files = [(run_dir / _served_path(entry), "fp32")]
        if rec.get("kind") == "onnx" and rec["path"] != entry["path"]:
            files.append((run_dir / _served_path(rec), rec.get("precision", "fp32")))
        for path, precision in files:
            serving = serving_from_rows(
                results.get("speed") or [], model=entry["model"], precision=precision, gpu=gpu
            )
            sources.append((path, serving, gpu))
    if not sources:
        raise RepositoryError(f"{results_path} lists no exported model that passed parity")
    return sources


def _served_path(record: dict) -> str:
    raw = record.get("raw_pixel") or {}
    return raw["path"] if raw.get("passed") and raw.get("path") else record["path"]


def write_repository(paths, out, *, raw: bool = True, gpu: bool | None = None) -> list[dict]:
    """`python -m exports repository`: every run folder / .onnx file into repository `out`.
    gpu None: KIND_GPU for files a run measured on CUDA, or FP16 files (GPU-only here)."""
    out = Path(out)
    check_repository(out)
    jobs: list[tuple[Path, Serving | None, bool]] = []
    for p in map(Path, paths):
        if p.is_dir():
            jobs += run_sources(p)
        elif p.is_file():
            jobs.append((p, None, p.name.endswith((".fp16.onnx", ".fp16.raw.onnx"))))
        else:
            raise RepositoryError(f"{p} does not exist: pass run folders or .onnx files")
    written = []
    for path, serving, on_gpu in jobs:
        on_gpu = on_gpu if gpu is None else gpu
        if serving is not None:
            serving = Serving(**{**serving.__dict__, "instance_kind": _kind(on_gpu)})
        written.append(add_model(out, path, serving=serving, raw=raw, gpu=on_gpu))
    return written


def _kind(gpu: bool) -> str:
    return "KIND_GPU" if gpu else "KIND_CPU"
