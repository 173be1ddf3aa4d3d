"""A trained PyTorch classifier -> ONE self-contained .onnx file that describes itself.

The file holds the weights inline (no .onnx.data beside it: one file to copy to the line
PC) and the "neu_bench.*" metadata a deployment needs to preprocess an image exactly as in
training (exports/runtime.py reads it). Input "input" float32 (batch, 3, S, S) with a
dynamic batch axis, output "logits" (batch, num_classes).

Two exporters, same contract:
- "dynamo" (default): torch.onnx.export(dynamo=True), torch.export-based, torch's default
  since 2.9 and the one that keeps being maintained. A few seconds per model.
- "torchscript": the legacy tracer (deprecated upstream), ~5x faster; kept as a fallback
  for an architecture the dynamo exporter cannot capture.
"""

from __future__ import annotations

import contextlib
import copy
import datetime as _dt
import io
import json
import warnings
from pathlib import Path

import torch

from exports.contract import (
    FORMAT_VERSION,
    INPUT_LAYOUT,
    INPUT_NAME,
    INPUT_RANGE,
    METADATA_PREFIX,
    OUTPUT_NAME,
    Signature,
    parse_metadata,
    proto_ports,
    signature_problems,
)
from neu._io import atomic_path
from neu.image import RESIZE_METHOD

EXPORTERS = ("dynamo", "torchscript")
DEFAULT_EXPORTER = "dynamo"

# A protobuf message cannot exceed 2 GiB, so a self-contained .onnx cannot either; keep
# headroom for the graph itself (names, attributes, metadata).
MAX_INLINE_BYTES = 2**31 - 64 * 2**20


class ExportError(RuntimeError):
    """torch.onnx.export failed or produced a graph that breaks the neu-bench contract."""


def build_metadata(
    *,
    model_name: str,
    classes,
    image_size: int,
    channels: int,
    mean,
    std,
    val_accuracy: float | None,
    dataset_hash: str,
    split_hash: str,
    split: dict,
    weights: str,
    test_accuracy: float | None = None,
    test_images: int | None = None,
) -> dict[str, str]:
    """The "neu_bench.*" metadata_props of an exported model (all values are strings).

    test_accuracy is the headline: measured once, with this checkpoint, on the test images of
    split `split_hash` (which `verify` re-derives from `split`); val_accuracy picked the epoch.

    Structured values are JSON. Adds the torch/torchvision versions and the export time
    (ISO 8601 UTC). Validated with the same parser the runtime uses, so a file exported with
    this metadata is always readable by exports.runtime.Classifier.
    """
    try:
        import torchvision

        torchvision_version = torchvision.__version__
    except ImportError:  # exporting a non-torchvision model without torchvision installed
        torchvision_version = "not installed"
    classes = [str(c) for c in classes]
    values = {
        "format_version": FORMAT_VERSION,
        "model": str(model_name),
        "classes": json.dumps(classes),
        "num_classes": str(len(classes)),
        "image_size": str(int(image_size)),
        "channels": str(int(channels)),
        "mean": json.dumps([float(v) for v in mean]),
        "std": json.dumps([float(v) for v in std]),
        "input_layout": INPUT_LAYOUT,
        "input_range": INPUT_RANGE,
        "resize": RESIZE_METHOD,
        "val_accuracy": json.dumps(None if val_accuracy is None else float(val_accuracy)),
        "test_accuracy": json.dumps(None if test_accuracy is None else float(test_accuracy)),
        "test_images": json.dumps(None if test_images is None else int(test_images)),
        "dataset_hash": str(dataset_hash),
        "split_hash": str(split_hash),
        "split": json.dumps(dict(split), sort_keys=True),
        "weights": str(weights),
        "precision": "fp32",
        "torch_version": torch.__version__,
        "torchvision_version": torchvision_version,
        "export_date": _dt.datetime.now(_dt.UTC).replace(microsecond=0).isoformat(),
    }
    metadata = {METADATA_PREFIX + k: v for k, v in values.items()}
    parse_metadata(metadata, source=f"metadata for {model_name}")  # raises ModelFormatError
    return metadata


def export_onnx(
    model: torch.nn.Module,
    path: str | Path,
    *,
    metadata: dict[str, str],
    image_size: int,
    exporter: str = DEFAULT_EXPORTER,
    opset: int | None = None,
) -> Path:
    """Export `model` (CPU, float32, eval mode) to the single self-contained ONNX file `path`.

    The file is written atomically (temp file + rename): a failed or interrupted export never
    leaves a truncated .onnx behind, and an older file at `path` stays intact. The model is
    not modified: it is copied first if it lives on a GPU or in another dtype, and its
    train/eval mode is restored afterwards. `opset` None = the exporter's default.
    Raises ExportError (export failed, graph checks failed, or > 2 GB of weights).
    """
    import onnx

    if exporter not in EXPORTERS:
        raise ValueError(f"unknown exporter {exporter!r}: choose one of {', '.join(EXPORTERS)}")
    path = Path(path)
    info = parse_metadata(metadata, source=f"metadata for {path}")
    if info.image_size != image_size:
        raise ValueError(
            f"image_size={image_size} but the metadata says {info.image_size}: pass the same size"
        )
    tensors = list(model.parameters()) + list(model.buffers())
    _check_inline_size(tensors, info.model)
    on_cpu_fp32 = all(t.device.type == "cpu" and t.dtype == torch.float32 for t in tensors)
    net = model if on_cpu_fp32 else copy.deepcopy(model).to("cpu", torch.float32)
    was_training = net.training
    net.eval()
    # Batch 2, not 1: torch.export specialises size-1 dims, and the dynamic axis must stay symbolic.
    example = torch.randn(2, 3, image_size, image_size, generator=torch.Generator().manual_seed(0))
    try:
        proto = _export_proto(net, example, exporter=exporter, opset=opset, name=info.model)
    finally:
        net.train(was_training)
    _finish_proto(proto, info, metadata, exporter=exporter, path=path)
    with atomic_path(path) as tmp:
        onnx.save_model(proto, str(tmp), format="protobuf")
    return path


def _check_inline_size(tensors, name: str) -> None:
    """One self-contained file or none: protobuf caps a message at 2 GiB."""
    weight_bytes = sum(t.numel() * 4 for t in tensors if t.is_floating_point())
    if weight_bytes > MAX_INLINE_BYTES:
        raise ExportError(
            f"{name} has {weight_bytes / 2**30:.2f} GiB of float32 weights: a single "
            f"self-contained .onnx is limited to 2 GiB by protobuf, so this model would need "
            f"its weights in a separate external-data file, which neu-bench does not produce "
            f"(one file is the deployment contract). Export a smaller model."
        )


def _finish_proto(proto, info, metadata: dict[str, str], *, exporter: str, path: Path) -> None:
    """Check the exported graph against the contract, then stamp our metadata on it."""
    import onnx
    from onnx.external_data_helper import uses_external_data

    source = f"{info.model} ({exporter} exporter)"
    problems = signature_problems(*proto_ports(proto), Signature.of(info, strict=True))
    if problems:
        raise ExportError(f"{source}: " + "; ".join(problems))
    if any(uses_external_data(t) for t in proto.graph.initializer):
        raise ExportError(f"the {exporter} exporter produced external-data weights for {path}")
    # Keep any metadata the exporter wrote, replace ours.
    kept = {p.key: p.value for p in proto.metadata_props if not p.key.startswith(METADATA_PREFIX)}
    onnx.helper.set_model_props(proto, {**kept, **metadata})
    proto.doc_string = f"neu-bench {info.model} classifier ({len(info.classes)} classes)"
    try:
        onnx.checker.check_model(proto, full_check=True)
    except Exception as e:
        raise ExportError(
            f"onnx.checker rejected the {exporter} export of {info.model}: {e}"
        ) from e


def _export_proto(model, example: torch.Tensor, *, exporter: str, opset: int | None, name: str):
    """Run one of torch's ONNX exporters in memory and return the onnx.ModelProto."""
    import onnx

    captured = io.StringIO()
    try:
        # The exporters print progress lines, deprecation warnings and (torchscript, on
        # failure) a dump of the whole graph; a benchmark run exports several models, so keep
        # its console to our own messages. The tail goes into the error when export fails.
        with (
            contextlib.redirect_stdout(captured),
            contextlib.redirect_stderr(captured),
            warnings.catch_warnings(),
        ):
            warnings.simplefilter("ignore")
            with torch.no_grad():
                if exporter == "dynamo":
                    batch = torch.export.Dim("batch", min=1, max=65536)
                    program = torch.onnx.export(
                        model,
                        (example,),
                        dynamo=True,
                        input_names=[INPUT_NAME],
                        output_names=[OUTPUT_NAME],
                        dynamic_shapes=({0: batch},),
                        opset_version=opset,
                        external_data=False,
                        optimize=True,
                        verbose=False,
                    )
                    return program.model_proto
                buffer = io.BytesIO()
                kwargs = {} if opset is None else {"opset_version": opset}
                torch.onnx.export(
                    model,
                    (example,),
                    buffer,
                    dynamo=False,
                    input_names=[INPUT_NAME],
                    output_names=[OUTPUT_NAME],
                    dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                    do_constant_folding=True,
                    verbose=False,
                    **kwargs,
                )
                return onnx.load_from_string(buffer.getvalue())
    except Exception as e:
        tail = captured.getvalue().strip()[-2000:]
        other = "torchscript" if exporter == "dynamo" else "dynamo"
        raise ExportError(
            f"the {exporter} ONNX exporter failed on {name}: {type(e).__name__}: {str(e)[:2000]}"
            + (f"\nexporter output:\n{tail}" if tail else "")
            + f"\ntry exporter={other!r}"
        ) from e
