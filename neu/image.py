"""One image file -> the uint8 pixels a model sees, by the file's declared bit depth.

Torch-free on purpose: `exports/runtime.py` calls this same decoder at deployment, and the
dataset cache (training, `neu inspect`, `exports verify`) calls it too, so training,
evaluation and the deployed ONNX model see byte-identical pixels.

The rule (docs/images.md says why): 8-bit modes are converted by Pillow as they always were;
integer samples of a declared depth of D bits keep their top 8 bits (value >> (D - 8)), so a
16-bit image made from an 8-bit one by either usual widening (x 256 or the full-range x 257)
decodes to exactly the 8-bit pixels, like Pillow already does for 16-bit colour PNGs; float
samples must lie in [0, 1] and become round(value x 255). A mode the decoder does not know is
an error naming the file and the mode, never a silent guess.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

IMAGE_EXTENSIONS = frozenset({".bmp", ".png", ".jpg", ".jpeg", ".tif", ".tiff", ".webp"})

# Recorded in manifests and ONNX metadata so a deployment can check it resizes the same way.
RESIZE_METHOD = "pil-bilinear"

# 8-bit (or 1-bit) modes Pillow converts to "L"/"RGB" itself; the value is the declared depth.
_PIL_MODES = {
    "1": 1, "L": 8, "P": 8, "RGB": 8, "RGBX": 8, "CMYK": 8, "YCbCr": 8, "HSV": 8, "LAB": 8,
    "LA": 8, "PA": 8, "RGBA": 8, "RGBa": 8,
}  # fmt: skip
_ALPHA_MODES = {"LA", "PA", "RGBA", "RGBa"}
_INT16_MODES = {"I;16", "I;16L", "I;16B", "I;16N"}  # unsigned 16-bit grey
KNOWN_MODES = tuple(sorted({*_PIL_MODES, *_INT16_MODES, "I", "F"}))
# Formats where Pillow holds 16-bit grey in mode "I" (PGM/PPM rescale any maxval to 16 bits).
_I_MODE_BITS = {"PNG": 16, "PPM": 16}


class UnsupportedImageError(ValueError):
    """The file decodes, but to a mode or value range the decoder has no honest rule for."""


@dataclass(frozen=True)
class Decoded:
    """The pixels a model sees, and what the decoder had to do to make them."""

    pixels: np.ndarray  # uint8 (channels, size, size), contiguous
    mode: str  # Pillow mode of the file
    bit_depth: int  # declared bits per sample (1, 8, 16, 32)
    size: tuple[int, int]  # (width, height) before resizing
    frames: int = 1
    warnings: list[str] = field(default_factory=list)  # inputs whose meaning changed


def declared_bit_depth(im: Image.Image) -> int:
    """Bits per sample the file declares (TIFF BitsPerSample, the PNG header), else the mode's."""
    tags = getattr(im, "tag_v2", None)
    if tags is not None and 258 in tags:  # TIFF BitsPerSample: one value per sample
        bits = tags[258]
        return int(bits[0] if isinstance(bits, tuple) else bits)
    if im.format == "PNG" and getattr(im, "fp", None) is not None:
        # IHDR bit depth (byte 24): Pillow reduces 16-bit colour PNGs to "RGB" on open.
        pos = im.fp.tell()
        try:
            im.fp.seek(24)
            depth = im.fp.read(1)
        finally:
            im.fp.seek(pos)
        if depth:
            return int(depth[0])
    if im.mode in _INT16_MODES:
        return 16
    if im.mode == "I":
        return _I_MODE_BITS.get(im.format or "", 32)
    if im.mode == "F":
        return 32
    return _PIL_MODES.get(im.mode, 8)


def check_mode(im: Image.Image, path: str | Path) -> None:
    """UnsupportedImageError naming the file and mode when the decoder has no rule for it."""
    if im.mode not in KNOWN_MODES:
        raise UnsupportedImageError(
            f"{path}: Pillow mode {im.mode!r} is not one the decoder knows "
            f"({', '.join(KNOWN_MODES)}): save the image as 8- or 16-bit grey or RGB"
        )


def _high_depth_to_l(im: Image.Image, path, depth: int, notes: list[str]) -> Image.Image:
    """Mode I / I;16* / F grey -> "L" by the declared depth (see the module docstring)."""
    a = np.asarray(im)
    if im.mode == "F":
        if not np.isfinite(a).all() or a.min() < 0 or a.max() > 1:
            raise UnsupportedImageError(
                f"{path}: float image with values in [{np.nanmin(a):g}, {np.nanmax(a):g}]; "
                "float images must hold [0, 1] (save as 8- or 16-bit integers, or scale it)"
            )
        return Image.fromarray(np.floor(a.astype(np.float64) * 255 + 0.5).astype(np.uint8), "L")
    a = a.astype(np.int64)
    tags = getattr(im, "tag_v2", None) or {}
    sample_format = tags.get(339, 1)
    signed = (sample_format[0] if isinstance(sample_format, tuple) else sample_format) == 2
    if signed:
        if a.min() < 0:
            raise UnsupportedImageError(
                f"{path}: signed {depth}-bit image with negative values (min {a.min()}): "
                "no declared range maps them to intensities; save it as unsigned integers"
            )
        depth -= 1  # the sign bit holds no intensity
    if not 8 <= depth <= 32:
        raise UnsupportedImageError(f"{path}: {depth}-bit integer samples are not supported")
    if a.max() >= 1 << depth:
        raise UnsupportedImageError(
            f"{path}: values up to {a.max()} do not fit the declared {depth} bits per sample"
        )
    if depth >= 12 and a.max() < 1 << (depth - 4):
        notes.append(
            f"dark for its depth: max value {a.max()} uses under 1/16 of the declared {depth}-bit "
            "range (data of a 12-bit camera stored as 16 bits?); scaled by the declared depth"
        )
    return Image.fromarray((a >> (depth - 8)).astype(np.uint8), "L")


def _drop_alpha(im: Image.Image, notes: list[str]) -> Image.Image:
    """Colour without alpha, with a note when alpha hid anything (Pillow drops it silently)."""
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    if im.mode not in _ALPHA_MODES:
        return im
    alpha = np.asarray(im.getchannel(im.mode[-1]))
    hidden = float((alpha < 255).mean())
    if hidden:
        notes.append(
            f"alpha channel dropped: {100 * hidden:.1f}% of the pixels are not opaque; the model "
            "sees the colour stored under them"
        )
    return im


def decode_image(path: str | Path, *, size: int | None, channels: int) -> Decoded:
    """Decode `path` (its first frame) to uint8 (channels, size, size), with notes.

    channels=1 converts with Pillow's "L" (ITU-R 601-2 luma), channels=3 with "RGB"; higher
    bit depths are scaled first (module docstring). The image is resized to a size x size
    square with Pillow's bilinear filter (which antialiases when shrinking) unless it already
    has that size or `size` is None. Raises OSError / PIL.UnidentifiedImageError for
    unreadable files and UnsupportedImageError for unknown modes: callers turn them into
    per-file problems.
    """
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    notes: list[str] = []
    with Image.open(path) as im:
        check_mode(im, path)
        depth, mode, original, frames = declared_bit_depth(im), im.mode, im.size, 1
        frames = int(getattr(im, "n_frames", 1) or 1)
        if frames > 1:
            notes.append(f"multi-frame file ({frames} frames): only frame 1 is classified")
        if mode in _INT16_MODES or mode in ("I", "F"):
            im = _high_depth_to_l(im, path, depth, notes)
        else:
            im = _drop_alpha(im, notes)
        if mode == "LAB" and channels == 1:
            im = im.convert("RGB")  # Pillow has no LAB -> L conversion
        im = im.convert("L" if channels == 1 else "RGB")
        if size is not None and im.size != (size, size):
            if original[0] != original[1]:
                notes.append(
                    f"aspect ratio changed: {original[0]}x{original[1]} was resized to "
                    f"{size}x{size}, squashing the image"
                )
            im = im.resize((size, size), Image.Resampling.BILINEAR)
        arr = np.asarray(im, dtype=np.uint8)
    pixels = np.ascontiguousarray(arr[None] if channels == 1 else arr.transpose(2, 0, 1))
    if pixels.size and pixels.min() == pixels.max():
        notes.append(
            f"constant image: every pixel is {int(pixels.flat[0])}; the prediction says nothing "
            "about the surface"
        )
    return Decoded(pixels, mode, depth, original, frames, notes)


def load_image(path: str | Path, *, size: int | None, channels: int) -> np.ndarray:
    """decode_image(...).pixels: uint8 (channels, size, size)."""
    return decode_image(path, size=size, channels=channels).pixels


def normalize(pixels: np.ndarray, mean, std) -> np.ndarray:
    """uint8 (N, C, H, W) -> float32 (N, 3, H, W) model input: (x / 255 - mean) / std.

    Grayscale (C=1) is repeated to the 3 channels ImageNet architectures expect. The
    arithmetic order matches `neu.augment` so torch and numpy give the same floats.
    """
    x = pixels.astype(np.float32) / np.float32(255.0)
    if x.shape[1] == 1:
        x = np.repeat(x, 3, axis=1)
    m = np.asarray(mean, dtype=np.float32).reshape(1, 3, 1, 1)
    s = np.asarray(std, dtype=np.float32).reshape(1, 3, 1, 1)
    return (x - m) / s
