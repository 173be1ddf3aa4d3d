"""Reduced-precision copies of an exported FP32 model: INT8 static QDQ and FP16. No torch here.

Both keep the deployment contract of the FP32 file: input "input" float32 (batch, 3, S, S),
output "logits" float32, weights inline, and the same "neu_bench.*" metadata plus
`neu_bench.precision` and how the copy was made (`neu_bench.quantization`). So
`python -m exports predict` runs them in plain onnxruntime exactly like the FP32 file.

INT8 follows ONNX Runtime's quantization guide (onnxruntime.ai, "Quantize ONNX models"):

- `quant_pre_process` first (symbolic shape inference + graph optimisation: QDQ placement needs
  shapes, and BatchNorm folded into Conv quantizes as one op);
- `quantize_static` in QDQ format with per-channel weights, calibrated on TRAINING images only
  (a seeded, class-stratified sample: `calibration_indices`), never on validation/test images,
  whose accuracy the variant is then judged on;
- S8S8 (int8 activations, int8 weights), "the default setting [that] balances performance and
  accuracy. It should be the first choice";
- `reduce_range` (7-bit weights) on x86-64 without VNNI: there ORT's U8S8 kernels use
  VPMADDUBSW, whose 16-bit intermediate sums can saturate; the guide names reduce_range as the
  remedy and says VNNI CPUs (and ARM) do not have the issue. `int8_settings` makes this choice
  from flags the caller reads from the CPU (bench passes bench.cpu.has_vnni(): exports never
  imports bench).

FP16 is for GPU providers (ONNX Runtime's CPU provider gains nothing from it): weights and
compute in float16, input and output kept float32 (`keep_io_types`), via the converter that
ships with onnxruntime (onnxruntime.transformers.float16), so no new dependency.
"""

from __future__ import annotations

import json
import platform
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from exports.contract import (
    INPUT_NAME,
    METADATA_PREFIX,
    Signature,
    parse_metadata,
    proto_ports,
    signature_problems,
)
from neu._io import atomic_path

DEFAULT_CALIBRATION_IMAGES = 256
CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
QUANT_TYPES = ("int8", "uint8")
_X86 = {"x86_64", "amd64", "i386", "i686", "x86"}


class QuantizationError(RuntimeError):
    """ONNX Runtime's quantizer or the FP16 converter failed on this model."""


@dataclass(frozen=True)
class Int8Settings:
    """How `quantize_int8` quantizes; recorded verbatim in the model and in results.json."""

    reduce_range: bool
    """7-bit weights: ORT's remedy for U8S8 saturation on x86-64 CPUs without VNNI."""
    activation_type: str = "int8"
    """"int8" (S8S8, ORT's first choice with QDQ) or "uint8" (U8S8 / U8U8)."""
    weight_type: str = "int8"
    """"int8" or "uint8" (U8U8: no saturation, the guide's other remedy)."""
    per_channel: bool = True
    """One scale per output channel of each Conv/Gemm weight instead of one per tensor."""
    calibration_method: str = "minmax"
    """How activation ranges come from the calibration images: minmax, entropy, percentile."""
    reason: str = ""
    """Why reduce_range has the value it has (which CPU flags decided it)."""

    def __post_init__(self):
        for name in ("activation_type", "weight_type"):
            if getattr(self, name) not in QUANT_TYPES:
                raise ValueError(
                    f"{name} must be one of {QUANT_TYPES}, got {getattr(self, name)!r}"
                )
        if self.calibration_method not in CALIBRATION_METHODS:
            raise ValueError(
                f"calibration_method must be one of {CALIBRATION_METHODS}, "
                f"got {self.calibration_method!r}"
            )


def int8_settings(*, vnni: bool, machine: str | None = None, **overrides) -> Int8Settings:
    """The settings ORT's quantization guide prescribes for this CPU (see the module docstring).

    `vnni`: the CPU has int8 dot-product instructions (AVX512-VNNI, AVX-VNNI or AMX-INT8);
    `machine`: platform.machine() of the CPU that will run the model (default: this one).
    """
    machine = (machine or platform.machine()).lower()
    if machine not in _X86:
        reduce_range, reason = False, f"{machine}: no U8S8 saturation issue outside x86-64"
    elif vnni:
        reduce_range, reason = False, "x86-64 with VNNI: int8 dot products do not saturate"
    else:
        reduce_range, reason = (
            True,
            "x86-64 without VNNI: U8S8 kernels (VPMADDUBSW) can saturate; 7-bit weights avoid it",
        )
    return Int8Settings(reduce_range=reduce_range, reason=reason, **overrides)


# ORT's histogram calibrators (Entropy, Percentile) keep every intermediate tensor of every
# calibration batch in memory before building histograms (onnxruntime.quantization.calibrate,
# HistogramCalibrater.collect_data): ResNet-50 at 200 px holds ~60 MB of activations per image.
# They calibrate on this many of the same stratified training images; MinMax keeps only
# per-batch min/max and uses them all.
HISTOGRAM_CALIBRATION_IMAGES = 32


def settings_slug(settings: Int8Settings) -> str:
    """A short name of the settings for rows and file names: 'u8s8_minmax', 's8s8_rr_minmax'."""
    short = {"int8": "s8", "uint8": "u8"}
    parts = [short[settings.activation_type] + short[settings.weight_type]]
    if settings.reduce_range:
        parts.append("rr")
    if not settings.per_channel:
        parts.append("pertensor")
    parts.append(settings.calibration_method)
    return "_".join(parts)


def int8_candidates(*, vnni: bool, machine: str | None = None) -> list[Int8Settings]:
    """The MinMax candidates worth timing on this CPU, per ONNX Runtime's quantization guide.

    Both activation types, per-channel int8 weights: U8S8 is what MLAS's x86 int8 kernels
    multiply natively (VPMADDUBSW / VPDPBUSD take u8 x s8), S8S8 is the guide's accuracy-first
    default and costs x86 a conversion. Which is faster, and whether either keeps the model's
    answers, is measured, not assumed. reduce_range comes from `int8_settings` (needed only on
    x86-64 without VNNI). Entropy/Percentile versions are made only when MinMax fails
    fidelity (`with_calibration`).
    """
    return [
        int8_settings(vnni=vnni, machine=machine, activation_type=act) for act in ("uint8", "int8")
    ]


def with_calibration(settings: Int8Settings, method: str) -> Int8Settings:
    """The same settings calibrated by `method` (a fallback when MinMax fails fidelity)."""
    from dataclasses import replace

    return replace(settings, calibration_method=method)


def calibration_indices(
    labels: Sequence[int],
    candidates: Sequence[int],
    n: int = DEFAULT_CALIBRATION_IMAGES,
    *,
    seed: int = 0,
) -> np.ndarray:
    """A seeded, class-stratified sample of `n` of the `candidates` (the training indices).

    Each class gets a share proportional to its count among the candidates (largest
    remainders round the shares to exactly n), drawn without replacement with its own
    seeded permutation, so the same (labels, candidates, n, seed) always picks the same
    images. n >= len(candidates) takes them all. Returns sorted indices into `labels`.
    """
    if n < 1:
        raise ValueError(f"calibration images must be >= 1, got {n}")
    candidates = np.asarray(candidates, dtype=np.int64).reshape(-1)
    if len(candidates) == 0:
        raise ValueError("no training images to calibrate on")
    labels = np.asarray(labels, dtype=np.int64)
    if n >= len(candidates):
        return np.sort(candidates)
    classes, counts = np.unique(labels[candidates], return_counts=True)
    exact = counts * (n / len(candidates))
    take = np.floor(exact).astype(np.int64)
    # Largest remainder; ties go to the smaller class index (np.argsort is stable).
    for i in np.argsort(-(exact - take), kind="stable")[: n - int(take.sum())]:
        take[i] += 1
    rng = np.random.default_rng(seed)
    chosen = []
    for cls, k in zip(classes, take, strict=True):
        members = np.sort(candidates[labels[candidates] == cls])
        chosen.append(members[rng.permutation(len(members))[:k]])
    return np.sort(np.concatenate(chosen))


def quantize_int8(
    fp32_path: str | Path,
    out_path: str | Path,
    calibration_inputs: np.ndarray,
    settings: Int8Settings,
    *,
    calibration: dict | None = None,
    batch_size: int = 8,
) -> dict:
    """Write the INT8 static QDQ version of the exported FP32 model `fp32_path` to `out_path`.

    `calibration_inputs`: float32 (N, 3, S, S), preprocessed exactly like the model's inputs
    (neu.image.normalize), taken from the training images only (`calibration_indices`).
    `calibration`: provenance to record beside the settings (e.g. {"images": 256, "seed": 0,
    "source": "train split"}). With "minmax" the calibrator keeps only each tensor's per-batch
    min and max (ReduceMin/ReduceMax outputs), so memory does not grow with the image count.
    Returns the info dict that is also stored as `neu_bench.quantization`.
    """
    import onnxruntime as ort

    x = np.ascontiguousarray(calibration_inputs, dtype=np.float32)
    if x.ndim != 4 or x.shape[1] != 3 or len(x) == 0:
        raise ValueError(
            f"calibration_inputs must be a non-empty (N, 3, S, S) float array, got {x.shape}"
        )
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    fp32_path, out_path = Path(fp32_path), Path(out_path)
    meta = _neu_metadata(fp32_path)
    offered = len(x)
    x = _calibration_subset(x, settings)
    extra = _calibration_options(settings)
    info = {
        "method": "onnxruntime static QDQ",
        "format": "QDQ",
        **{k: v for k, v in asdict(settings).items()},
        "calibration_images": len(x),
        "calibration_images_offered": offered,
        "calibration_extra_options": extra,
        **{f"calibration_{k}": v for k, v in (calibration or {}).items() if k != "images"},
        "onnxruntime_version": ort.__version__,
    }
    with tempfile.TemporaryDirectory(prefix="neu-int8-") as tmp:
        quant = Path(tmp) / "int8.onnx"
        _run_quantizer(fp32_path, Path(tmp) / "pre.onnx", quant, x, settings, extra, batch_size)
        _finish(quant, out_path, meta, precision="int8", info=info, source=fp32_path)
    return info


def _calibration_subset(x: np.ndarray, settings: Int8Settings) -> np.ndarray:
    """All the images for MinMax; HISTOGRAM_CALIBRATION_IMAGES of them for the histogram
    calibrators, evenly strided through the (index-sorted, class-stratified) sample so every
    class keeps its share."""
    if settings.calibration_method == "minmax" or len(x) <= HISTOGRAM_CALIBRATION_IMAGES:
        return x
    keep = np.linspace(0, len(x) - 1, HISTOGRAM_CALIBRATION_IMAGES).round().astype(int)
    return x[keep]


def _calibration_options(settings: Int8Settings) -> dict:
    if settings.calibration_method != "percentile":
        return {}
    # uint8 activations follow ReLUs (>= 0): a symmetric range would waste half the codes.
    return {
        "CalibPercentile": 99.999,
        "CalibTensorRangeSymmetric": settings.activation_type == "int8",
    }


def _run_quantizer(fp32_path, pre, quant, x, settings: Int8Settings, extra, batch_size) -> None:
    """ORT's pre-processing pass, then quantize_static calibrated on `x`, into `quant`."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quant_pre_process,
        quantize_static,
    )

    class Reader(CalibrationDataReader):
        def __init__(self):
            self._batches = iter(range(0, len(x), batch_size))

        def get_next(self):
            start = next(self._batches, None)
            return None if start is None else {INPUT_NAME: x[start : start + batch_size]}

    qtype = {"int8": QuantType.QInt8, "uint8": QuantType.QUInt8}
    method = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }
    try:
        quant_pre_process(str(fp32_path), str(pre))
        quantize_static(
            str(pre),
            str(quant),
            Reader(),
            quant_format=QuantFormat.QDQ,
            activation_type=qtype[settings.activation_type],
            weight_type=qtype[settings.weight_type],
            per_channel=settings.per_channel,
            reduce_range=settings.reduce_range,
            calibrate_method=method[settings.calibration_method],
            extra_options=extra,
        )
    except Exception as e:
        raise QuantizationError(
            f"INT8 quantization of {fp32_path} failed ({type(e).__name__}: {e})"
        ) from e


def convert_fp16(fp32_path: str | Path, out_path: str | Path) -> dict:
    """Write the FP16 version of `fp32_path` (float16 weights and compute, float32 I/O)."""
    import onnx
    import onnxruntime as ort
    from onnxruntime.transformers.float16 import convert_float_to_float16
    from onnxruntime.transformers.onnx_model import OnnxModel

    fp32_path, out_path = Path(fp32_path), Path(out_path)
    meta = _neu_metadata(fp32_path)
    try:
        proto = convert_float_to_float16(onnx.load(str(fp32_path)), keep_io_types=True)
        # The converter appends its input/output Casts at the end of the node list; ORT
        # accepts that, onnx.checker (and other runtimes) want topological order.
        OnnxModel(proto).topological_sort()
    except Exception as e:
        raise QuantizationError(
            f"FP16 conversion of {fp32_path} failed ({type(e).__name__}: {e})"
        ) from e
    info = {
        "method": "onnxruntime.transformers.float16.convert_float_to_float16",
        "keep_io_types": True,
        "onnxruntime_version": ort.__version__,
    }
    with tempfile.TemporaryDirectory(prefix="neu-fp16-") as tmp:
        tmp_path = Path(tmp) / "fp16.onnx"
        onnx.save_model(proto, str(tmp_path))
        _finish(tmp_path, out_path, meta, precision="fp16", info=info, source=fp32_path)
    return info


def update_metadata(path: str | Path, values: dict[str, str]) -> Path:
    """Set "neu_bench.<key>" entries of the model at `path` (atomically rewritten in place).

    Used to stamp an exported variant with its fidelity figures once they are measured.
    """
    import onnx

    path = Path(path)
    proto = onnx.load(str(path))
    props = {p.key: p.value for p in proto.metadata_props}
    props.update({METADATA_PREFIX + k: str(v) for k, v in values.items()})
    del proto.metadata_props[:]
    onnx.helper.set_model_props(proto, props)
    with atomic_path(path) as tmp:
        onnx.save_model(proto, str(tmp))
    return path


def _neu_metadata(path: Path) -> dict[str, str]:
    import onnx

    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: export the FP32 model first")
    proto = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in proto.metadata_props if p.key.startswith(METADATA_PREFIX)}


def _finish(built: Path, out_path: Path, meta: dict, *, precision: str, info: dict, source):
    """Check the I/O contract, put the FP32 file's metadata + precision on, save atomically."""
    import onnx

    proto = onnx.load(str(built))
    # The copy must keep the FP32 file's signature: float32 in, float32 out, same shapes
    # (as loadable by exports.runtime, which checks it again).
    expected = Signature.of(parse_metadata(meta, source=source), strict=False)
    problems = signature_problems(*proto_ports(proto), expected)
    if problems:
        raise QuantizationError(
            f"the {precision} copy of {source} breaks the I/O contract: {'; '.join(problems)}"
        )
    del proto.metadata_props[:]
    onnx.helper.set_model_props(proto, _variant_metadata(meta, precision, info, source))
    try:
        onnx.checker.check_model(proto)
    except Exception as e:
        raise QuantizationError(
            f"onnx.checker rejected the {precision} copy of {source}: {e}"
        ) from e
    with atomic_path(out_path) as tmp:
        onnx.save_model(proto, str(tmp))


def _variant_metadata(meta: dict, precision: str, info: dict, source) -> dict[str, str]:
    """The quantizer's own bookkeeping entries (onnx.quant.*) go; the FP32 file's neu_bench.*
    come back (the pre-processing pass drops them) with the precision and how it was made.
    The parent's own figures are not this copy's: until it is judged on images
    (exports.figures) it states no test accuracy, and the parent's is kept apart."""
    own = {METADATA_PREFIX + k for k in ("fidelity", "rejected", "deployment_variant")}
    parent_acc = meta.get(METADATA_PREFIX + "test_accuracy")
    return {
        **{k: v for k, v in meta.items() if k not in own},
        METADATA_PREFIX + "test_accuracy": "null",
        METADATA_PREFIX + "source_test_accuracy": parent_acc if parent_acc else "null",
        METADATA_PREFIX + "precision": precision,
        METADATA_PREFIX + "quantization": json.dumps(info, sort_keys=True),
        METADATA_PREFIX + "source_model": Path(source).name,
    }
