"""One image file -> the uint8 pixels a model sees.

Torch-free on purpose: `exports/runtime.py` calls this same function at deployment, so
training, evaluation and the deployed ONNX model see byte-identical pixels.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

IMAGE_EXTENSIONS = frozenset({".bmp", ".png", ".jpg", ".jpeg", ".tif", ".tiff", ".webp"})

# Recorded in manifests and ONNX metadata so a deployment can check it resizes the same way.
RESIZE_METHOD = "pil-bilinear"


def load_image(path: str | Path, *, size: int | None, channels: int) -> np.ndarray:
    """Decode `path` to a contiguous uint8 array of shape (channels, size, size).

    channels=1 converts with Pillow's "L" (ITU-R 601-2 luma), channels=3 with "RGB".
    The image is resized to a size x size square with Pillow's bilinear filter (which
    antialiases when shrinking) unless it already has that size or `size` is None.
    Raises OSError / PIL.UnidentifiedImageError for unreadable files: callers turn them
    into per-file problems.
    """
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    with Image.open(path) as im:
        im = im.convert("L" if channels == 1 else "RGB")
        if size is not None and im.size != (size, size):
            im = im.resize((size, size), Image.Resampling.BILINEAR)
        arr = np.asarray(im, dtype=np.uint8)
    if channels == 1:
        return np.ascontiguousarray(arr[None])
    return np.ascontiguousarray(arr.transpose(2, 0, 1))


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
