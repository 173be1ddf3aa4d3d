"""Run an exported neu-bench classifier with ONNX Runtime: no torch anywhere.

This is the deployment side. It needs onnxruntime, numpy and pillow only, and must keep
working where torch is not installed (tests/test_runtime.py runs it with `import torch`
made to fail). Everything a deployment needs to preprocess an image - size, channels,
mean/std, resize method, class names - is read from the "neu_bench.*" metadata stored in
the .onnx file itself, so the file is the whole contract (exports.contract spells it out).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np

from exports.calibration import decide
from exports.contract import (  # noqa: F401  (re-exported: importers use exports.runtime)
    DECISION_KEYS,
    FIX,
    FORMAT_VERSION,
    INPUT_KINDS,
    INPUT_LAYOUT,
    INPUT_NAME,
    INPUT_RANGE,
    METADATA_PREFIX,
    OUTPUT_NAME,
    OWN_FIGURE_KEYS,
    PRECISIONS,
    PROVENANCE_KEYS,
    PROVIDERS,
    RAW_INPUT_LAYOUTS,
    RAW_INPUT_NAME,
    RAW_INPUT_RANGE,
    REQUIRED_KEYS,
    ModelFormatError,
    ModelInfo,
    Signature,
    parse_metadata,
    provider_short_name,
    session_ports,
    signature_problems,
)
from neu.image import IMAGE_EXTENSIONS, decode_image, normalize

_CPU = PROVIDERS["cpu"][0]


class ProviderUnavailableError(RuntimeError):
    """A GPU execution provider was asked for but ONNX Runtime cannot use it here."""


# ---------------------------------------------------------------------------------------------
# sessions


def create_session(
    path: str | Path,
    *,
    provider: str = "cpu",
    threads: int | None = None,
    strict: bool = True,
    provider_options: dict | None = None,
    disable_cpu_fallback: bool = False,
    enable_profiling: str | None = None,
):
    """Open `path` in ONNX Runtime on `provider` ("cpu" | "cuda" | "tensorrt").

    Returns (session, actual) where `actual` is the short name of the provider ORT really put
    first. ORT silently falls back to CPU when a GPU provider cannot start (no GPU, missing
    CUDA/cuDNN/TensorRT libraries), which would make a "GPU" benchmark measure the CPU: with
    strict=True that raises ProviderUnavailableError, with strict=False it returns "cpu".
    `threads` sets intra-op threads (None = ORT's default, one per physical core).
    `provider_options` go to the first (requested) provider, e.g. {"use_tf32": "0"} for CUDA.
    disable_cpu_fallback (`--strict-providers`): for a GPU provider, set ORT's
    `session.disable_cpu_ep_fallback` and leave CPUExecutionProvider out of the list (ORT
    rejects both together), so a graph the GPU provider cannot run entirely fails to load
    (ProviderUnavailableError) instead of quietly running some nodes on the CPU.
    enable_profiling: a file prefix; the session writes an ORT profile (bench.measure.placement).
    A missing, truncated or non-ONNX file raises ModelFormatError.
    """
    import onnxruntime as ort

    if provider not in PROVIDERS:
        raise ValueError(f"unknown provider {provider!r}: choose one of {', '.join(PROVIDERS)}")
    path = Path(path)
    if not path.is_file():
        raise ModelFormatError(f"{path} does not exist or is not a file: {FIX}")
    available = ort.get_available_providers()
    wanted = _wanted_providers(provider, available, strict=strict)
    # Only a GPU session can keep nodes off the CPU: a CPU session (asked for, or the fallback
    # of strict=False) keeps its one provider.
    strict_placement = disable_cpu_fallback and wanted[0] != _CPU and wanted[0] in available
    providers: list = [p for p in wanted if p in available and not (strict_placement and p == _CPU)]
    if provider_options:
        providers[0] = (providers[0], dict(provider_options))
    options = _session_options(threads, strict_placement, enable_profiling)
    session = _open_session(path, options, providers, strict_placement, wanted[0])
    actual = provider_short_name(session.get_providers()[0])
    if actual != provider and provider != "cpu" and strict:
        _raise_fallback(session, provider)
    return session, actual


def _wanted_providers(provider: str, available: list[str], *, strict: bool) -> tuple[str, ...]:
    """The ORT providers to ask for; a GPU provider missing from this build raises (strict)
    or falls back to the CPU."""
    import onnxruntime as ort

    wanted = PROVIDERS[provider]
    if wanted[0] in available:
        return wanted
    if strict:
        raise ProviderUnavailableError(
            f"provider {provider!r} ({wanted[0]}) is not in this onnxruntime build "
            f"(onnxruntime {ort.__version__} offers {', '.join(available)}): install "
            f"onnxruntime-gpu on a machine with an NVIDIA GPU, or use --provider cpu"
        )
    return PROVIDERS["cpu"]


def _session_options(threads: int | None, strict_placement: bool, enable_profiling: str | None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = int(threads)
        options.inter_op_num_threads = 1
    # ORT logs its own fallback warnings to stderr; create_session reports the outcome itself.
    options.log_severity_level = 3
    if strict_placement:
        options.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
    if enable_profiling:
        options.enable_profiling = True
        options.profile_file_prefix = str(enable_profiling)
    return options


def _open_session(path: Path, options, providers: list, strict_placement: bool, first: str):
    """ORT's InferenceSession; a file it cannot load is a ModelFormatError, unless the GPU
    provider refused nodes that --strict-providers forbade it to hand to the CPU."""
    import onnxruntime as ort

    try:
        return ort.InferenceSession(str(path), sess_options=options, providers=providers)
    except Exception as e:  # ORT raises its own pybind classes (InvalidProtobuf, Fail, ...)
        if strict_placement and path.stat().st_size > 0:
            raise ProviderUnavailableError(
                f"{path}: not every node can run on {first} and --strict-providers forbids "
                f"CPU fallback ({type(e).__name__}: {str(e).strip()[:300]}); drop "
                "--strict-providers to measure the mixed placement (its rows then show "
                "nodes_by_provider)"
            ) from e
        detail = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelFormatError(
            f"{path} is not a readable ONNX model ({type(e).__name__}: {detail}): {FIX}"
        ) from e


def _raise_fallback(session, provider: str):
    import onnxruntime as ort

    raise ProviderUnavailableError(
        f"asked for provider {provider!r} but ONNX Runtime fell back to "
        f"{session.get_providers()[0]} (session providers: {', '.join(session.get_providers())}): "
        f"no usable GPU, or the CUDA/cuDNN/TensorRT libraries onnxruntime-gpu "
        f"{ort.__version__} needs are missing; fix that or use --provider cpu"
    )


# ---------------------------------------------------------------------------------------------
# metadata and graph


def deployment_warning(info: ModelInfo, source: str | Path = "model") -> str | None:
    """Why this file should not be deployed as it is, or None: a file whose own fidelity check
    failed (`rejected`), or a reduced-precision copy nobody judged on images."""
    if info.rejected:
        figures = info.fidelity or {}
        acc = figures.get("test_accuracy")
        agr = figures.get("agreement")
        return (
            f"{source} was REJECTED by its fidelity check ({info.rejected}); its own figures: "
            f"test accuracy {'n/a' if acc is None else f'{acc:.4f}'}, agreement with FP32 "
            f"{'n/a' if agr is None else f'{100 * agr:.2f}%'}. Deploy the FP32 file or the "
            "recommended variant instead"
        )
    if info.precision != "fp32" and (info.fidelity or {}).get("judged") is False:
        return (
            f"{source} ({info.precision}) was never judged on images "
            f"({info.fidelity.get('reason', 'no reason recorded')}): its accuracy is unknown"
        )
    return None


def check_graph(session, info: ModelInfo, *, source: str | Path = "model") -> None:
    """The graph's input/output names, dtypes and shapes agree with the metadata, as a file
    ONNX Runtime can run (exports.contract.Signature, not strict: a fixed batch is accepted)."""
    problems = signature_problems(*session_ports(session), Signature.of(info, strict=False))
    if problems:
        raise ModelFormatError(
            f"{source}: the graph does not match the metadata (input_kind {info.input_kind!r}): "
            f"{'; '.join(problems)}: {FIX}"
        )


# ---------------------------------------------------------------------------------------------
# images


def collect_images(paths: Iterable[str | Path]) -> tuple[list[Path], list[Path]]:
    """Expand the command line's files and folders into (images, skipped).

    Folders are walked recursively in sorted order and keep files whose extension is in
    neu.image.IMAGE_EXTENSIONS; other files found there (annotations, Thumbs.db, ...) are
    returned as `skipped` so the caller can say so. Files named explicitly are always kept,
    whatever their extension, missing ones included: the classifier then reports a per-file
    error for each one it cannot read, instead of dropping it silently.
    """
    images: list[Path] = []
    skipped: list[Path] = []
    for p in map(Path, paths):
        if not p.is_dir():
            images.append(p)
            continue
        found = sorted(
            (q for q in p.rglob("*") if q.is_file()),
            key=lambda q: q.relative_to(p).as_posix(),
        )
        for q in found:
            if any(part.startswith(".") for part in q.relative_to(p).parts):
                continue  # hidden files / folders (.DS_Store, .git): not the user's data
            (images if q.suffix.lower() in IMAGE_EXTENSIONS else skipped).append(q)
    return images, skipped


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax, stable for large logits (subtract the row max before exp)."""
    z = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# the classifier


class Classifier:
    """An exported neu-bench model, ready to classify image files or uint8 pixel arrays.

    >>> clf = Classifier("runs/x/resnet50/model.onnx")
    >>> clf.predict_files(["a.bmp"])[0]["class"]
    'scratches'
    """

    def __init__(
        self,
        path: str | Path,
        *,
        provider: str = "cpu",
        threads: int | None = None,
        strict: bool = True,
        threshold: float | None = None,
    ):
        """threshold: the review threshold to decide with instead of the file's own
        (`predict --threshold`); None keeps the file's."""
        self.path = Path(path)
        self.session, self.provider = create_session(
            self.path, provider=provider, threads=threads, strict=strict
        )
        props = self.session.get_modelmeta().custom_metadata_map
        self.info = parse_metadata(props, source=self.path)
        check_graph(self.session, self.info, source=self.path)
        if threshold is not None and not 0 <= threshold <= 1:
            raise ValueError(f"threshold must be in [0, 1], got {threshold}")
        self.threshold_override = threshold

    @property
    def temperature(self) -> float:
        """The calibration temperature the probabilities use (1 for an uncalibrated file)."""
        return self.info.temperature or 1.0

    @property
    def threshold(self) -> float | None:
        """Calibrated confidence at or above which an image is decided automatically; None
        when the file has none (no threshold reached its target on validation) and
        --threshold gave none: every image then goes to review."""
        if self.threshold_override is not None:
            return self.threshold_override
        return (self.info.review or {}).get("threshold")

    @property
    def threshold_source(self) -> str:
        if self.threshold_override is not None:
            return "--threshold"
        review = self.info.review
        if review is None:
            return "none: the file was exported without one"
        if review.get("threshold") is None:
            return "none: " + str(review.get("reason") or "no threshold reached the target")
        return f"file (target accuracy {review.get('target_accuracy')} on validation)"

    @property
    def classes(self) -> list[str]:
        return list(self.info.classes)

    @property
    def image_size(self) -> int:
        return self.info.image_size

    @property
    def channels(self) -> int:
        return self.info.channels

    def logits(self, inputs: np.ndarray) -> np.ndarray:
        """The graph's own input -> float32 (N, num_classes) logits.

        A plain file takes the float32 (N, 3, S, S) preprocessed batch; a raw-pixel file
        (info.raw_pixels) takes uint8 (N, S, S) grey or (N, S, S, 3) RGB pixels (raw_feed).
        """
        if not self.info.raw_pixels:
            x = np.ascontiguousarray(inputs, dtype=np.float32)
            return self.session.run([OUTPUT_NAME], {INPUT_NAME: x})[0]
        check_raw_input(inputs, self.info, source=self.path)
        return self.session.run([OUTPUT_NAME], {RAW_INPUT_NAME: np.ascontiguousarray(inputs)})[0]

    def _model_input(self, pixels: np.ndarray) -> np.ndarray:
        if self.info.raw_pixels:
            return raw_feed(pixels)
        return normalize(pixels, self.info.mean, self.info.std)

    def predict_arrays(self, pixels: np.ndarray, *, batch_size: int = 32) -> np.ndarray:
        """uint8 (N, C, S, S) pixels as neu.image.load_image returns them -> probabilities.

        C must be the model's channels and S its image_size (resize beforehand with
        load_image(size=clf.image_size, channels=clf.channels)). Returns float32
        (N, num_classes), rows summing to 1, columns in `self.classes` order; calibrated
        (logits / the file's temperature) when the file carries one.
        """
        pixels = np.asarray(pixels)
        want = (self.channels, self.image_size, self.image_size)
        if pixels.dtype != np.uint8 or pixels.ndim != 4 or pixels.shape[1:] != want:
            got = (
                f"images of {pixels.shape[-1]} x {pixels.shape[-2]} px but the model takes "
                f"{self.image_size} x {self.image_size}"
                if pixels.ndim == 4 and pixels.shape[-2:] != want[1:]
                else f"{pixels.dtype} {tuple(pixels.shape)}"
            )
            raise ValueError(
                f"expected uint8 pixels of shape (N, {', '.join(map(str, want))}), got "
                f"{got}: decode images with "
                f"neu.image.load_image(path, size={self.image_size}, channels={self.channels})"
            )
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        t = self.temperature
        out = [
            softmax(self.logits(self._model_input(pixels[i : i + batch_size])) / np.float32(t))
            for i in range(0, len(pixels), batch_size)
        ]
        if not out:
            return np.zeros((0, self.info.num_classes), dtype=np.float32)
        return np.concatenate(out)

    def iter_predict_files(
        self, paths: Sequence[str | Path], *, batch_size: int = 32
    ) -> Iterator[dict]:
        """Yield one result per path, in order, decoding and running `batch_size` at a time.

        A result is {"file", "class", "index", "confidence", "probabilities": {name: p},
        "warnings": [...], "decision": "auto" | "review"}, or {"file", "error"} for a file that
        cannot be read as an image: one bad file never stops the others. Images are decoded
        exactly as in training (neu.image.decode_image: by bit depth, Pillow bilinear to
        image_size x image_size, "L" or "RGB"); `warnings` names what changed the input's
        meaning on the way (aspect ratio squashed, frames or alpha dropped, a constant image),
        empty when nothing did; `decision` applies the review threshold to the confidence.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        paths = list(paths)
        for start in range(0, len(paths), batch_size):
            chunk = paths[start : start + batch_size]
            results: list[dict] = []
            loaded: list[np.ndarray] = []
            slots: list[int] = []
            for p in chunk:
                try:
                    if Path(p).is_dir():
                        raise IsADirectoryError(f"{p} is a folder")
                    d = decode_image(p, size=self.image_size, channels=self.channels)
                    loaded.append(d.pixels)
                    slots.append(len(results))
                    results.append({"file": str(p), "warnings": list(d.warnings)})
                except Exception as e:  # PIL raises OSError, ValueError, DecompressionBombError...
                    results.append({"file": str(p), "error": _describe(e, p)})
            if loaded:
                probs = self.predict_arrays(np.stack(loaded), batch_size=len(loaded))
                for slot, row in zip(slots, probs, strict=True):
                    k = int(row.argmax())
                    notes = results[slot].pop("warnings")
                    results[slot].update(
                        {
                            "class": self.info.classes[k],
                            "index": k,
                            "confidence": float(row[k]),
                            "probabilities": {
                                c: float(v) for c, v in zip(self.info.classes, row, strict=True)
                            },
                            "warnings": notes,
                            "decision": decide(float(row[k]), self.threshold),
                        }
                    )
            yield from results

    def predict_files(self, paths: Sequence[str | Path], *, batch_size: int = 32) -> list[dict]:
        """List version of iter_predict_files (same per-file dicts, same order)."""
        return list(self.iter_predict_files(paths, batch_size=batch_size))

    def __repr__(self) -> str:
        return (
            f"Classifier({str(self.path)!r}, model={self.info.model!r}, "
            f"classes={len(self.classes)}, image_size={self.image_size}, "
            f"provider={self.provider!r})"
        )


def raw_feed(pixels: np.ndarray) -> np.ndarray:
    """uint8 (N, C, S, S) as neu.image.load_image stacks them -> a raw-pixel file's input:
    (N, S, S) for grey, (N, S, S, 3) for RGB (the layout an image library gives)."""
    if pixels.shape[1] == 1:
        return np.ascontiguousarray(pixels[:, 0])
    return np.ascontiguousarray(pixels.transpose(0, 2, 3, 1))


def check_raw_input(pixels, info: ModelInfo, *, source: str | Path = "model") -> None:
    """A raw-pixel model's input must be uint8 at the model's size, resized beforehand."""
    x = np.asarray(pixels)
    want = info.input_shape[1:]
    layout = "(N, H, W)" if info.channels == 1 else "(N, H, W, 3)"
    if x.dtype != np.uint8:
        raise ValueError(
            f"{source} is a raw-pixel model: its input {RAW_INPUT_NAME!r} takes uint8 pixels "
            f"{layout}, got {x.dtype}: pass the pixels as decoded, without scaling or "
            "normalising (the graph does both)"
        )
    if x.ndim != len(want) + 1 or list(x.shape[1:]) != want:
        size = (
            f"images of {x.shape[2]} x {x.shape[1]} px but the model takes "
            f"{info.image_size} x {info.image_size} px; resize with {info.resize} first "
            "(resize is not part of the graph)"
            if x.ndim >= 3
            else f"shape {tuple(x.shape)}"
        )
        raise ValueError(f"{source}: expected uint8 {layout} = {['N', *want]}, got {size}")


def _describe(e: BaseException, path) -> str:
    """'Type: message' without repeating the file name the result already carries."""
    text = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
    text = text.replace(repr(str(path)), "").replace(str(path), "").strip(" :")
    return f"{type(e).__name__}: {text}" if text else type(e).__name__
