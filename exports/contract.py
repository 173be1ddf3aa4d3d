"""The contract of a neu-bench .onnx file, in one place: graph I/O, metadata, providers.

A plain file takes float32 "input" (batch, 3, S, S) = (pixel/255 - mean)/std and returns
float32 "logits" (batch, num_classes); a raw-pixel file (exports.rawpixel) takes the uint8
pixels as decoded, "pixels" (batch, S, S) or (batch, S, S, 3). The "neu_bench.*" metadata
says which kind a file is, and everything else needed to preprocess and label an image.

The exporter, the runtime, the quantizer and the parity check all judge a graph with the
same `signature_problems`; each turns the problems into its own error. No torch, no onnx,
no onnxruntime here: graphs come in through `proto_ports` / `session_ports`, which only read
attributes of the objects they are given.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from neu.image import RESIZE_METHOD

# ---------------------------------------------------------------------------------------------
# graph I/O

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
INPUT_DTYPE = "float32"
OUTPUT_DTYPE = "float32"
INPUT_LAYOUT = "NCHW"
INPUT_RANGE = "float32 (pixel/255 - mean)/std"
# Raw-pixel files: the camera's uint8 pixels at the model's size go in, scaling,
# grey-to-3-channel repeat and mean/std run inside the graph; resize stays outside.
# "neu_bench.input_kind" says which kind a file is (absent in plain files: "normalized").
INPUT_KINDS = ("normalized", "raw")
RAW_INPUT_NAME = "pixels"
RAW_INPUT_DTYPE = "uint8"
RAW_INPUT_LAYOUTS = {1: "NHW", 3: "NHWC"}
RAW_INPUT_RANGE = "uint8 0..255 pixels as decoded (L or RGB), already resized to S x S"

# ---------------------------------------------------------------------------------------------
# metadata

METADATA_PREFIX = "neu_bench."
# The metadata schema version: a reader refuses files written for another one.
FORMAT_VERSION = "1"
# Keys without which an image cannot be preprocessed and labelled: a file lacking any of them
# was not exported by neu-bench (or was stripped) and is refused.
REQUIRED_KEYS = (
    "format_version",
    "model",
    "classes",
    "num_classes",
    "image_size",
    "channels",
    "mean",
    "std",
    "input_layout",
    "resize",
)
# Provenance keys: written by every export, needed by `verify`, not by `predict`.
PROVENANCE_KEYS = (
    "input_range",
    "val_accuracy",
    "test_accuracy",
    "test_images",
    "dataset_hash",
    "split_hash",
    "split",
    "weights",
    "torch_version",
    "torchvision_version",
    "export_date",
    "precision",
)
# What the file itself achieved, stamped by `bench run` after judging it (absent in files
# exported by hand): "fidelity" (JSON: its own test accuracy, agreement, passed, rule...) and
# "rejected" (why it failed, empty when it passed).
OWN_FIGURE_KEYS = ("fidelity", "rejected")
# Decision keys (optional; files exported before them classify as before): the temperature
# that calibrates the probabilities and the review threshold, both fitted on validation.
DECISION_KEYS = ("temperature", "review_threshold", "model_card")
# What a file computes in: "fp32" (the export), or a reduced-precision copy made by
# exports.quantize. Files from before precision was recorded are fp32.
PRECISIONS = ("fp32", "fp16", "int8")

# The layout version of a run's results.json, which `bench` writes and exports.repository
# reads back (the run's exports and speed rows).
RESULTS_SCHEMA_VERSION = 1

# ---------------------------------------------------------------------------------------------
# ONNX Runtime providers

# Short provider names used across neu-bench -> ONNX Runtime execution providers, in the
# order handed to ORT (TensorRT falls back op-by-op to CUDA, then CPU, inside one session).
PROVIDERS = {
    "cpu": ("CPUExecutionProvider",),
    "cuda": ("CUDAExecutionProvider", "CPUExecutionProvider"),
    "tensorrt": ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"),
}
_SHORT_NAME = {long[0]: short for short, long in PROVIDERS.items()}


def provider_short_name(name: str) -> str:
    """Short provider name: CPUExecutionProvider -> cpu (unknown names stay as they are)."""
    return _SHORT_NAME.get(name, name)


def default_providers(cuda: bool) -> tuple[str, ...]:
    """The providers a benchmark measures when none are named: every one with a CUDA device
    (those that cannot start are skipped there), the CPU alone without."""
    return tuple(PROVIDERS) if cuda else ("cpu",)


# ---------------------------------------------------------------------------------------------
# parsed metadata

FIX = "pass the .onnx written by `bench run`"


class ModelFormatError(ValueError):
    """The file is not an ONNX classifier exported by neu-bench (message says why + the fix)."""


@dataclass(frozen=True)
class ModelInfo:
    """The parsed "neu_bench.*" metadata of an exported model."""

    model: str
    classes: list[str]
    image_size: int
    channels: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    resize: str
    val_accuracy: float | None = None  # on the images that picked the checkpoint: optimistic
    test_accuracy: float | None = None  # on held-out test images of split_hash (older files: None)
    test_images: int | None = None
    dataset_hash: str | None = None
    split_hash: str | None = None
    split: dict | None = None
    weights: str | None = None
    precision: str = "fp32"
    fidelity: dict | None = None  # the file's own figures (see OWN_FIGURE_KEYS)
    rejected: str | None = None  # why this file failed its fidelity check; None: not rejected
    temperature: float | None = None  # logits / T before softmax; None: uncalibrated (T = 1)
    review: dict | None = None  # neu_bench.review_threshold: threshold (or null), target, val
    raw: dict[str, str] = field(default_factory=dict)  # every metadata_props entry, unparsed
    input_kind: str = "normalized"  # or "raw": uint8 pixels in, preprocessing in the graph

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def raw_pixels(self) -> bool:
        return self.input_kind == "raw"

    @property
    def input_name(self) -> str:
        return RAW_INPUT_NAME if self.raw_pixels else INPUT_NAME

    @property
    def input_shape(self) -> list:
        """The graph input's shape, "batch" for the dynamic axis."""
        s = self.image_size
        if not self.raw_pixels:
            return ["batch", 3, s, s]
        return ["batch", s, s] if self.channels == 1 else ["batch", s, s, 3]


class _Fields:
    """The "neu_bench.*" entries of one file, read so that every error names the key."""

    def __init__(self, props: dict[str, str], source):
        n = len(METADATA_PREFIX)
        self.meta = {k[n:]: v for k, v in props.items() if k.startswith(METADATA_PREFIX)}
        self.source = source

    def bad(self, key: str, why: str) -> ModelFormatError:
        return ModelFormatError(
            f"{self.source}: metadata {METADATA_PREFIX}{key}={self.meta.get(key)!r} {why}: {FIX}"
        )

    def json(self, key: str):
        try:
            return json.loads(self.meta[key])
        except ValueError:
            raise self.bad(key, "is not valid JSON") from None

    def optional_json(self, key: str):
        return self.json(key) if self.meta.get(key) else None

    def int(self, key: str) -> int:
        try:
            return int(self.meta[key])
        except ValueError:
            raise self.bad(key, "is not an integer") from None

    def number(self, key: str, kind=float):
        """Absent in files exported before the key existed; "null" when not measured."""
        if self.meta.get(key) in (None, "", "null", "None"):
            return None
        try:
            return kind(self.meta[key])
        except ValueError:
            raise self.bad(key, "is not a number") from None


def parse_metadata(props: dict[str, str], *, source: str | Path = "model") -> ModelInfo:
    """Validate the ONNX custom metadata map and parse it; ModelFormatError says what is wrong."""
    f = _Fields(props, source)
    _check_required(f)
    classes = f.json("classes")
    if not (isinstance(classes, list) and classes and all(isinstance(c, str) for c in classes)):
        raise f.bad("classes", "is not a non-empty JSON list of names")
    if f.int("num_classes") != len(classes):
        raise f.bad("num_classes", f"does not match the {len(classes)} class names")
    image_size, channels = _geometry(f)
    mean, std = _normalisation(f)
    input_kind = _input_kind(f, channels)
    return ModelInfo(
        model=f.meta["model"],
        classes=list(classes),
        image_size=image_size,
        channels=channels,
        mean=mean,
        std=std,
        resize=f.meta["resize"],
        raw=dict(props),
        input_kind=input_kind,
        **_provenance(f),
        **_figures_and_decision(f),
    )


def _check_required(f: _Fields) -> None:
    missing = [k for k in REQUIRED_KEYS if k not in f.meta]
    if missing:
        keys = ", ".join(METADATA_PREFIX + k for k in missing)
        raise ModelFormatError(
            f"{f.source} was not exported by neu-bench: its metadata lacks {keys} (class names, "
            f"input size and normalisation are needed to classify an image): {FIX}"
        )
    if f.meta["format_version"] != FORMAT_VERSION:
        raise f.bad("format_version", f"is not {FORMAT_VERSION!r} (written by another neu-bench)")


def _geometry(f: _Fields) -> tuple[int, int]:
    image_size = f.int("image_size")
    if image_size <= 0:
        raise f.bad("image_size", "is not positive")
    channels = f.int("channels")
    if channels not in (1, 3):
        raise f.bad("channels", "is not 1 or 3")
    return image_size, channels


def _normalisation(f: _Fields) -> tuple[tuple, tuple]:
    mean, std = f.json("mean"), f.json("std")
    for key, value in (("mean", mean), ("std", std)):
        if not (isinstance(value, list) and len(value) == 3):
            raise f.bad(key, "is not a JSON list of 3 numbers")
    if min(std) <= 0:
        raise f.bad("std", "has a value <= 0")
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)


def _input_kind(f: _Fields, channels: int) -> str:
    """Which input the graph takes; the layout and resize must be the ones this code feeds."""
    input_kind = f.meta.get("input_kind") or "normalized"
    if input_kind not in INPUT_KINDS:
        raise f.bad("input_kind", f"is not one of {', '.join(INPUT_KINDS)}")
    layout = RAW_INPUT_LAYOUTS[channels] if input_kind == "raw" else INPUT_LAYOUT
    if f.meta["input_layout"] != layout:
        raise f.bad("input_layout", f"is not {layout!r} (input_kind {input_kind!r})")
    if f.meta["resize"] != RESIZE_METHOD:
        raise f.bad("resize", f"is not {RESIZE_METHOD!r}, the only resize this runtime implements")
    return input_kind


def _provenance(f: _Fields) -> dict:
    """What the file was measured on and how it was made (what `verify` re-checks)."""
    values = {
        "val_accuracy": f.number("val_accuracy"),
        "test_accuracy": f.number("test_accuracy"),
        "test_images": f.number("test_images", int),
        "dataset_hash": f.meta.get("dataset_hash") or None,
        "split_hash": f.meta.get("split_hash") or None,
        "split": f.optional_json("split"),
        "weights": f.meta.get("weights"),
        "precision": f.meta.get("precision") or "fp32",
    }
    if values["precision"] not in PRECISIONS:
        raise f.bad("precision", f"is not one of {', '.join(PRECISIONS)}")
    return values


def _figures_and_decision(f: _Fields) -> dict:
    """The file's own figures and how it decides (calibration temperature, review threshold)."""
    fidelity = f.optional_json("fidelity")
    if fidelity is not None and not isinstance(fidelity, dict):
        raise f.bad("fidelity", "is not a JSON object")
    temperature = f.number("temperature")
    if temperature is not None and not temperature > 0:
        raise f.bad("temperature", "is not > 0")
    review = f.optional_json("review_threshold")
    if review is not None:
        t = review.get("threshold") if isinstance(review, dict) else "?"
        if t is not None and not (isinstance(t, int | float) and 0 <= t <= 1):
            raise f.bad(
                "review_threshold", 'is not a JSON object with "threshold" in [0, 1] or null'
            )
    return {
        "fidelity": fidelity,
        "rejected": f.meta.get("rejected") or None,
        "temperature": temperature,
        "review": review,
    }


# ---------------------------------------------------------------------------------------------
# the graph's signature


@dataclass(frozen=True)
class Port:
    """One graph input or output: its name, dtype ("float32", "uint8", ...) and shape, where a
    dimension is an int when fixed, a str when named (symbolic), None when unknown."""

    name: str
    dtype: str
    shape: tuple


@dataclass(frozen=True)
class Signature:
    """What a graph must declare.

    strict: the batch axis is symbolic on both sides and the class axis is fixed, as the
    exporter writes it. Not strict: what ONNX Runtime can still run as this contract (a file
    being loaded): a fixed batch or a symbolic class axis is accepted.
    num_classes None: the class axis is not checked (parity learns it by running the model).
    """

    input_dims: tuple  # without the batch axis
    input_name: str = INPUT_NAME
    input_dtype: str = INPUT_DTYPE
    num_classes: int | None = None
    strict: bool = True

    @classmethod
    def of(cls, info: ModelInfo, *, strict: bool) -> Signature:
        """The signature the metadata `info` promises."""
        return cls(
            input_dims=tuple(info.input_shape[1:]),
            input_name=info.input_name,
            input_dtype=RAW_INPUT_DTYPE if info.raw_pixels else INPUT_DTYPE,
            num_classes=info.num_classes,
            strict=strict,
        )


# onnx.TensorProto element types, by number (onnx itself is not imported here).
_ONNX_DTYPES = {1: "float32", 2: "uint8", 3: "int8", 6: "int32", 7: "int64", 10: "float16",
                11: "float64", 16: "bfloat16"}  # fmt: skip
_ORT_DTYPES = {"tensor(float)": "float32", "tensor(uint8)": "uint8", "tensor(int8)": "int8",
               "tensor(int32)": "int32", "tensor(int64)": "int64", "tensor(float16)": "float16",
               "tensor(double)": "float64", "tensor(bfloat16)": "bfloat16"}  # fmt: skip


def proto_ports(proto) -> tuple[list[Port], list[Port]]:
    """(inputs, outputs) of an onnx.ModelProto; initializers listed as inputs are left out."""
    graph = proto.graph
    initializers = {t.name for t in graph.initializer}

    def port(value) -> Port:
        t = value.type.tensor_type
        dims = tuple(
            d.dim_param if d.dim_param else (d.dim_value if d.HasField("dim_value") else None)
            for d in t.shape.dim
        )
        return Port(value.name, _ONNX_DTYPES.get(t.elem_type, f"onnx type {t.elem_type}"), dims)

    inputs = [port(i) for i in graph.input if i.name not in initializers]
    return inputs, [port(o) for o in graph.output]


def session_ports(session) -> tuple[list[Port], list[Port]]:
    """(inputs, outputs) of an onnxruntime.InferenceSession."""

    def port(arg) -> Port:
        return Port(arg.name, _ORT_DTYPES.get(arg.type, arg.type), tuple(arg.shape))

    return [port(i) for i in session.get_inputs()], [port(o) for o in session.get_outputs()]


def signature_problems(
    inputs: Sequence[Port], outputs: Sequence[Port], expected: Signature
) -> list[str]:
    """Every way the graph's I/O breaks the contract `expected`, names first, then dtypes and
    shapes; [] when it keeps it."""
    problems = []
    if [i.name for i in inputs] != [expected.input_name]:
        problems.append(
            f"graph inputs are {[i.name for i in inputs]}, expected [{expected.input_name!r}]"
        )
    if [o.name for o in outputs] != [OUTPUT_NAME]:
        problems.append(
            f"graph outputs are {[o.name for o in outputs]}, expected [{OUTPUT_NAME!r}]"
        )
    if inputs:
        problems += _input_problems(inputs[0], expected)
    if outputs:
        problems += _output_problems(outputs[0], expected)
    return problems


def _input_problems(port: Port, expected: Signature) -> list[str]:
    problems = []
    if port.dtype != expected.input_dtype:
        problems.append(f"graph input type {port.dtype}, expected {expected.input_dtype}")
    shape, dims = list(port.shape), list(expected.input_dims)
    if len(shape) != len(dims) + 1 or shape[1:] != dims:
        problems.append(f"graph input shape {shape}, expected [batch, {', '.join(map(str, dims))}]")
    elif expected.strict and not isinstance(shape[0], str):
        problems.append(f"graph input batch axis is fixed to {shape[0]}, expected dynamic")
    return problems


def _output_problems(port: Port, expected: Signature) -> list[str]:
    problems = []
    if port.dtype != OUTPUT_DTYPE:
        problems.append(f"graph output type {port.dtype}, expected {OUTPUT_DTYPE}")
    shape, k = list(port.shape), expected.num_classes
    if len(shape) != 2:
        problems.append(f"graph output shape {shape}, expected [batch, num_classes]")
        return problems
    if expected.strict and not isinstance(shape[0], str):
        problems.append(f"graph output batch axis is fixed to {shape[0]}, expected dynamic")
    if k is not None and shape[1] != k and (expected.strict or isinstance(shape[1], int)):
        problems.append(f"the model has {shape[1]} outputs but the metadata lists {k} classes")
    return problems
