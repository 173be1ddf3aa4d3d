"""Raw-pixel models: the preprocessing moves inside the ONNX graph, resize stays outside.

A plain export takes float32 (batch, 3, S, S) = (pixel / 255 - mean) / std, so every client
has to re-implement that scaling, the grey-to-3-channel repeat and the training split's
mean/std exactly. A raw-pixel file takes the image as decoded instead: uint8 (batch, S, S)
for grey models, (batch, S, S, 3) for RGB ones, input "pixels". It is composed with
`onnx.compose.merge_models` from a small preprocessing graph (Cast, Transpose for RGB,
Div 255, Sub mean, Div std; broadcasting a 1-channel image against the 3-channel mean IS the
repeat) and the unchanged exported model, so the network's nodes and weights are those of the
plain file, byte for byte.

Resizing is not in the graph (ONNX Resize is not Pillow's antialiased bilinear): the client
resizes to S x S with the method in "neu_bench.resize" before feeding. The metadata says so
("neu_bench.preprocessing").

Every raw-pixel file is checked against the plain file it was made from on the same pixels
(the strict FP32 parity rule of exports.fidelity, zero top-1 flips), and the figures are
stamped into it ("neu_bench.raw_parity"). Needs onnx, onnxruntime and numpy; no torch.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from exports.contract import (
    INPUT_NAME,
    METADATA_PREFIX,
    OUTPUT_NAME,
    PROVIDERS,
    RAW_INPUT_LAYOUTS,
    RAW_INPUT_NAME,
    RAW_INPUT_RANGE,
    ModelFormatError,
    parse_metadata,
)
from exports.fidelity import DEFAULT_ATOL, DEFAULT_RTOL
from exports.runtime import raw_feed
from neu._io import atomic_path
from neu.image import normalize

RAW_SUFFIX = ".raw.onnx"
_PREFIX = "preprocess/"  # names of the preprocessing graph, kept apart from the model's


class RawParityError(AssertionError):
    """The raw-pixel file does not reproduce the plain file on the same pixels."""


def raw_path_for(path: str | Path) -> Path:
    """exports/m.onnx -> exports/m.raw.onnx; exports/m.int8.onnx -> exports/m.int8.raw.onnx."""
    path = Path(path)
    return path.with_name(path.name.removesuffix(".onnx") + RAW_SUFFIX)


def preprocessing_model(*, image_size: int, channels: int, mean, std, opset: int, ir_version: int):
    """uint8 pixels -> the float32 (batch, 3, S, S) the exported model takes, as an ONNX model."""
    from onnx import TensorProto, helper, numpy_helper

    s = image_size
    shape = ["batch", s, s] if channels == 1 else ["batch", s, s, 3]
    m = np.asarray(mean, np.float32).reshape(1, 3, 1, 1)
    sd = np.asarray(std, np.float32).reshape(1, 3, 1, 1)
    inits = [
        numpy_helper.from_array(np.array(255.0, np.float32), "scale"),
        numpy_helper.from_array(m, "mean"),
        numpy_helper.from_array(sd, "std"),
    ]
    if channels == 1:
        inits.append(numpy_helper.from_array(np.array([1], np.int64), "channel_axis"))
        to_nchw = helper.make_node("Unsqueeze", ["as_float", "channel_axis"], ["nchw"])
    else:
        to_nchw = helper.make_node("Transpose", ["as_float"], ["nchw"], perm=[0, 3, 1, 2])
    nodes = [
        helper.make_node("Cast", [RAW_INPUT_NAME], ["as_float"], to=TensorProto.FLOAT),
        to_nchw,
        # Same order of operations as neu.image.normalize: x / 255, then (x - mean) / std.
        # (N, 1, S, S) - (1, 3, 1, 1) broadcasts to (N, 3, S, S): the grey-to-RGB repeat.
        helper.make_node("Div", ["nchw", "scale"], ["unit"]),
        helper.make_node("Sub", ["unit", "mean"], ["centred"]),
        helper.make_node("Div", ["centred", "std"], ["normalized"]),
    ]
    graph = helper.make_graph(
        nodes,
        "neu_bench_preprocess",
        [helper.make_tensor_value_info(RAW_INPUT_NAME, TensorProto.UINT8, shape)],
        [helper.make_tensor_value_info("normalized", TensorProto.FLOAT, ["batch", 3, s, s])],
        initializer=inits,
    )
    return helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=ir_version
    )


def compose(plain) -> object:
    """The plain exported ModelProto -> its raw-pixel ModelProto (metadata updated)."""
    import onnx
    from onnx import compose as onnx_compose

    props = {p.key: p.value for p in plain.metadata_props}
    info = parse_metadata(props, source="the plain model")
    if info.raw_pixels:
        raise ModelFormatError("the model already takes raw pixels (neu_bench.input_kind=raw)")
    opset = next((o.version for o in plain.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset is None or opset < 13:  # Unsqueeze takes its axes as an input from opset 13
        raise ModelFormatError(f"the model uses opset {opset}; raw-pixel composition needs >= 13")
    # merge_models needs the same IR version and opset on both sides.
    pre = preprocessing_model(
        image_size=info.image_size,
        channels=info.channels,
        mean=info.mean,
        std=info.std,
        opset=opset,
        ir_version=plain.ir_version,
    )
    pre = onnx_compose.add_prefix(pre, _PREFIX, rename_inputs=False, rename_outputs=True)
    merged = onnx_compose.merge_models(
        pre,
        plain,
        io_map=[(_PREFIX + "normalized", INPUT_NAME)],
        name=plain.graph.name or "neu_bench",
        doc_string=plain.doc_string,
        producer_name="neu-bench (onnx.compose)",
        producer_version=onnx.__version__,
    )
    merged.doc_string = (plain.doc_string + " " if plain.doc_string else "") + "raw-pixel input"
    del merged.metadata_props[:]
    onnx.helper.set_model_props(merged, {**props, **raw_metadata(info)})
    onnx.checker.check_model(merged, full_check=True)
    return merged


def raw_metadata(info) -> dict[str, str]:
    values = {
        "input_kind": "raw",
        "input_layout": RAW_INPUT_LAYOUTS[info.channels],
        "input_range": RAW_INPUT_RANGE,
        "preprocessing": json.dumps(
            {
                "in_graph": ["x / 255", "grey repeated to 3 channels", "(x - mean) / std"]
                if info.channels == 1
                else ["NHWC -> NCHW", "x / 255", "(x - mean) / std"],
                "outside_graph": [
                    f"decode to {'L (grey)' if info.channels == 1 else 'RGB'}",
                    f"resize to {info.image_size} x {info.image_size} with {info.resize}",
                ],
            }
        ),
    }
    return {METADATA_PREFIX + k: v for k, v in values.items()}


def check_raw_parity(plain_session, raw_session, pixels: np.ndarray, info, *, source="") -> dict:
    """Logits of the raw-pixel session on uint8 (N, C, S, S) `pixels` vs the plain session on
    the same pixels normalised in numpy, at batch 1 and 32: the FP32 parity rule."""
    worst, flips, max_diff = 0.0, np.zeros(len(pixels), bool), 0.0
    failures: list[str] = []
    plain = _run(plain_session, INPUT_NAME, normalize(pixels, info.mean, info.std), 32)
    # Per image: atol plus rtol times its largest |logit|, as in exports.parity.
    allowed = DEFAULT_ATOL + DEFAULT_RTOL * np.abs(plain).max(axis=1, keepdims=True)
    for batch in (1, 32):
        raw = _run(raw_session, RAW_INPUT_NAME, raw_feed(pixels), batch)
        diff = np.abs(raw - plain)
        max_diff = max(max_diff, float(diff.max()))
        worst = max(worst, float((diff / allowed).max()))
        flips |= raw.argmax(1) != plain.argmax(1)
    if not worst <= 1:
        failures.append(
            f"max |delta logit| {max_diff:.3g} exceeds atol {DEFAULT_ATOL:g} + rtol "
            f"{DEFAULT_RTOL:g} x |logit|"
        )
    if flips.any():
        failures.append(f"top-1 class differs on {int(flips.sum())}/{len(pixels)} images")
    return {
        "reference": "the plain file on the same pixels, normalised in numpy",
        "images": int(len(pixels)),
        "batch_sizes": [1, 32],
        "max_abs_logit_diff": max_diff,
        "top1_disagreements": int(flips.sum()),
        "atol": DEFAULT_ATOL,
        "rtol": DEFAULT_RTOL,
        "passed": not failures,
        "failures": failures,
    }


def _run(session, name: str, x: np.ndarray, batch: int) -> np.ndarray:
    out = [session.run([OUTPUT_NAME], {name: x[i : i + batch]})[0] for i in range(0, len(x), batch)]
    return np.concatenate(out).astype(np.float32)


def synthetic_pixels(info, n: int = 32, seed: int = 0) -> np.ndarray:
    """Seeded uint8 noise at the model's size, for parity when no images are at hand."""
    rng = np.random.default_rng(seed)
    shape = (n, info.channels, info.image_size, info.image_size)
    return rng.integers(0, 256, shape, dtype=np.uint8)


def embed_preprocessing(
    src: str | Path,
    dst: str | Path | None = None,
    *,
    pixels: np.ndarray | None = None,
    source: str = "",
) -> dict:
    """Write the raw-pixel copy of the plain export `src` to `dst` (default m.raw.onnx).

    `pixels`: uint8 (N, C, S, S) images to prove parity on (every test image in `bench run`);
    None = 32 seeded noise images (then `source` says "synthetic"). The file is written only
    when parity passes (RawParityError otherwise; nothing is written). Returns the parity
    figures, also stamped into the file as "neu_bench.raw_parity".
    """
    import onnx
    import onnxruntime as ort

    src = Path(src)
    dst = raw_path_for(src) if dst is None else Path(dst)
    plain = onnx.load(str(src))
    info = parse_metadata({p.key: p.value for p in plain.metadata_props}, source=src)
    merged = compose(plain)
    if pixels is None:
        pixels, source = synthetic_pixels(info), "synthetic (32 seeded uint8 noise images)"
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    cpu = list(PROVIDERS["cpu"])
    figures = check_raw_parity(
        ort.InferenceSession(str(src), opts, providers=cpu),
        ort.InferenceSession(merged.SerializeToString(), opts, providers=cpu),
        np.asarray(pixels, np.uint8),
        info,
    )
    figures.update(images_source=source or "given", plain_file=src.name, path=str(dst))
    if not figures["passed"]:
        raise RawParityError(f"{dst}: raw-pixel parity vs {src} failed: {figures['failures']}")
    stamp = {k: v for k, v in figures.items() if k != "path"}
    props = {p.key: p.value for p in merged.metadata_props}
    props[METADATA_PREFIX + "raw_parity"] = json.dumps(stamp, sort_keys=True)
    del merged.metadata_props[:]
    onnx.helper.set_model_props(merged, props)
    dst.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(dst) as tmp:
        onnx.save_model(merged, str(tmp))
    return figures
