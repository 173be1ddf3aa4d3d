"""Corrupted copies of held-out test images: what a strip camera sees on a bad day.

Torch-free on purpose (numpy + Pillow): `bench robustness MODEL.onnx` runs where only
onnxruntime, numpy and Pillow are installed, and every model and deployment file must see
the very same corrupted pixels, so there is one implementation.

A corruption is applied to the decoded image at its ORIGINAL resolution, before the usual
resize (neu.image) and normalisation, as a camera would degrade it. Every random draw comes
from a generator seeded by sha256(test-time tag, image content hash, corruption, severity,
seed): the pixels depend on nothing else (not the model, the order, the process), so two
runs produce byte-identical inputs. Training-time augmentation (`augment_draw`) uses another
tag and random severities, so it never reproduces a test-time draw.

Conditions:
  snr at 50/40/30/20 dB   Song & Yan (2013): additive white Gaussian noise whose power is
                          the image's own mean squared pixel value / 10^(dB/10).
  ImageNet-C style, severity 1-5 (Hendrycks & Dietterich 2019, their constants):
  gaussian_noise, motion_blur (along the strip), defocus_blur, brightness, contrast,
  uneven_illumination (ours: a smooth gradient + vignette), jpeg (quality 25..7).
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass

import numpy as np
from PIL import Image

SNR_LEVELS_DB = (50, 40, 30, 20)
SEVERITIES = (1, 2, 3, 4, 5)

# ImageNet-C's constants (imagenet_c/corruptions.py), severity 1..5, pixel range 0..1.
_GAUSSIAN_STD = (0.08, 0.12, 0.18, 0.26, 0.38)
_MOTION = ((10, 3), (15, 5), (15, 8), (15, 12), (20, 15))  # (radius, sigma) in pixels
_DEFOCUS = ((3, 0.1), (4, 0.5), (6, 0.5), (8, 0.5), (10, 0.5))  # (disk radius, alias sigma)
_BRIGHTNESS = (0.1, 0.2, 0.3, 0.4, 0.5)  # added to the value channel
_CONTRAST = (0.4, 0.3, 0.2, 0.1, 0.05)  # deviation from the mean kept
_JPEG_QUALITY = (25, 18, 15, 10, 7)
# Not in ImageNet-C: peak-to-centre gain swing of the illumination field.
_ILLUMINATION = (0.15, 0.3, 0.45, 0.6, 0.75)

CORRUPTIONS = (
    "gaussian_noise",
    "motion_blur",
    "defocus_blur",
    "brightness",
    "contrast",
    "uneven_illumination",
    "jpeg",
)

# Song & Yan, Applied Surface Science 285 (2013), AECLBP + SVM on NEU-CLS (150 train /
# 150 test images per class, 100 random partitions): the published reference line.
SONG_YAN_AECLBP = {"clean": 98.93, 50: 98.87, 40: 98.53, 30: 88.29, 20: 37.09}


@dataclass(frozen=True, order=True)
class Condition:
    """One test-time condition: corruption "snr" with level = dB, else severity 1-5;
    corruption "clean" (level 0) is the uncorrupted reference."""

    corruption: str
    level: int

    @property
    def key(self) -> str:
        if self.corruption == "clean":
            return "clean"
        unit = "db" if self.corruption == "snr" else "s"
        return f"{self.corruption}:{unit}{self.level}"

    @property
    def label(self) -> str:
        if self.corruption == "clean":
            return "clean"
        if self.corruption == "snr":
            return f"SNR {self.level} dB"
        return f"{self.corruption} s{self.level}"

    def record(self) -> dict:
        """The condition's columns in a robustness row."""
        return {
            "corruption": self.corruption,
            "severity": self.level if self.corruption not in ("snr", "clean") else None,
            "snr_db": self.level if self.corruption == "snr" else None,
        }


CLEAN = Condition("clean", 0)


class CorruptionSpecError(ValueError):
    """A bad --robustness value; the message names the flag and the valid choices."""


def _choices() -> str:
    return (
        "none, full, snr, s1..s5 (every corruption at that severity), a corruption name "
        f"(all severities) or NAME:SEVERITY, snr:DB (DB in {', '.join(map(str, SNR_LEVELS_DB))}"
        f"); corruptions: {', '.join(CORRUPTIONS)}"
    )


def parse_plan(spec: str, flag: str = "--robustness") -> list[Condition]:
    """'snr,s3' -> the conditions to evaluate (clean first, when any). Fails on an unknown
    token, naming `flag` and the choices."""
    conditions: list[Condition] = []
    tokens = [t.strip() for t in str(spec).split(",") if t.strip()]
    if not tokens:
        raise CorruptionSpecError(f"{flag} is empty: choose {_choices()}")
    for tok in tokens:
        conditions += _parse_token(tok.lower(), flag)
    if conditions and any(t.lower() == "none" for t in tokens):
        raise CorruptionSpecError(f"{flag} {spec!r}: 'none' cannot be combined with conditions")
    unique = list(dict.fromkeys(conditions))
    return [CLEAN, *unique] if unique else []


def _parse_token(tok: str, flag: str) -> list[Condition]:
    bad = f"{flag}: unknown condition {tok!r}; choose {_choices()}"
    if tok == "none":
        return []
    if tok == "full":
        return _snr() + [Condition(c, s) for c in CORRUPTIONS for s in SEVERITIES]
    if tok == "snr":
        return _snr()
    if tok.startswith("s") and tok[1:].isdigit():
        return [Condition(c, _severity(tok[1:], flag, tok)) for c in CORRUPTIONS]
    name, _, level = tok.partition(":")
    if name == "snr" and level:
        if not level.isdigit() or int(level) not in SNR_LEVELS_DB:
            raise CorruptionSpecError(
                f"{flag}: SNR level {level!r} in {tok!r} is not one of "
                f"{', '.join(map(str, SNR_LEVELS_DB))} dB"
            )
        return [Condition("snr", int(level))]
    if name not in CORRUPTIONS:
        raise CorruptionSpecError(bad)
    if not level:
        return [Condition(name, s) for s in SEVERITIES]
    return [Condition(name, _severity(level.removeprefix("s"), flag, tok))]


def _snr() -> list[Condition]:
    return [Condition("snr", db) for db in SNR_LEVELS_DB]


def _severity(text: str, flag: str, tok: str) -> int:
    if not text.isdigit() or int(text) not in SEVERITIES:
        raise CorruptionSpecError(
            f"{flag}: severity {text!r} in {tok!r} is not one of 1, 2, 3, 4, 5"
        )
    return int(text)


# --- randomness ------------------------------------------------------------------------------


def _rng(tag: str, content_hash: str, cond: Condition, seed: int) -> np.random.Generator:
    blob = f"neu-bench:{tag}:{content_hash}:{cond.corruption}:{cond.level}:{seed}".encode()
    return np.random.default_rng(int.from_bytes(hashlib.sha256(blob).digest()[:16], "little"))


def corrupt(pixels: np.ndarray, cond: Condition, *, content_hash: str, seed: int = 0) -> np.ndarray:
    """uint8 (C, H, W) at original resolution -> uint8 (C, H, W), corrupted by `cond`.

    The test-time draw: depends only on (content_hash, cond, seed)."""
    return apply(pixels, cond, _rng("test", content_hash, cond, seed))


def augment_draw(
    pixels: np.ndarray, rng: np.random.Generator, corruptions=CORRUPTIONS
) -> np.ndarray:
    """A training-time corruption: a random family from `corruptions` (or SNR) at a random
    severity, drawn from the caller's training generator (never the test-time one)."""
    families = [*corruptions, "snr"]
    name = families[int(rng.integers(len(families)))]
    if name == "snr":
        cond = Condition("snr", int(rng.choice(SNR_LEVELS_DB)))
    else:
        cond = Condition(name, int(rng.integers(1, 6)))
    return apply(pixels, cond, rng)


def augment_batch(batch: np.ndarray, seed: int, p: float = 0.5) -> np.ndarray:
    """--augment-corruptions: each image of a uint8 (B, C, H, W) training batch is corrupted
    with probability p by `augment_draw`, from a generator of (training tag, seed): no
    content hash, so it cannot replay a test-time draw."""
    rng = np.random.default_rng([int(seed), 0x7EA1])
    out = batch.copy()
    for i in range(len(out)):
        if rng.random() < p:
            out[i] = augment_draw(out[i], rng)
    return out


def apply(pixels: np.ndarray, cond: Condition, rng: np.random.Generator) -> np.ndarray:
    if pixels.dtype != np.uint8 or pixels.ndim != 3:
        raise ValueError(f"expected uint8 (C, H, W) pixels, got {pixels.dtype} {pixels.shape}")
    if cond.corruption == "clean":
        return pixels.copy()
    if cond.corruption == "snr":
        return _to_uint8(add_noise_at_snr(pixels, cond.level, rng))
    fn = _FUNCTIONS.get(cond.corruption)
    if fn is None:
        raise CorruptionSpecError(f"unknown corruption {cond.corruption!r}: {_choices()}")
    return fn(pixels, cond.level - 1, rng)


def _to_uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


# --- the corruptions -------------------------------------------------------------------------


def signal_power(pixels: np.ndarray) -> float:
    """Mean of squared pixel values (0..255): MATLAB awgn(x, snr, 'measured')'s definition,
    which the SNR-noise literature on NEU follows; see docs/robustness.md for why not the
    variance."""
    x = pixels.astype(np.float64)
    return float(np.mean(x * x))


def add_noise_at_snr(pixels: np.ndarray, snr_db: float, rng: np.random.Generator) -> np.ndarray:
    """float64 image + white Gaussian noise of power signal_power / 10^(snr/10), NOT clipped
    (apply() clips and rounds; the realised SNR is measured on this)."""
    sigma = np.sqrt(signal_power(pixels) / 10 ** (snr_db / 10))
    return pixels.astype(np.float64) + rng.normal(0.0, sigma, pixels.shape)


def _gaussian_noise(pixels, i, rng):
    x = pixels.astype(np.float64) / 255.0
    return _to_uint8((x + rng.normal(0.0, _GAUSSIAN_STD[i], x.shape)) * 255.0)


def _shift_sum(x: np.ndarray, weights: np.ndarray, axis: int) -> np.ndarray:
    """sum_k weights[k] * x shifted by k pixels along `axis` (edge pixels replicated): a
    one-sided line kernel, like ImageMagick's motion blur that ImageNet-C uses."""
    n = len(weights)
    pad = [(0, 0)] * x.ndim
    pad[axis] = (n - 1, 0)
    padded = np.pad(x, pad, mode="edge")
    out = np.zeros_like(x)
    size = x.shape[axis]
    for k, w in enumerate(weights):
        start = n - 1 - k
        out += w * np.take(padded, range(start, start + size), axis=axis)
    return out


def _motion_blur(pixels, i, rng):
    # Along the image's vertical axis: the direction the strip travels under a line camera
    # in NEU-CLS-style images (rolled-in scale and scratches run that way).
    radius, sigma = _MOTION[i]
    k = np.arange(2 * radius + 1, dtype=np.float64)
    w = np.exp(-(k**2) / (2 * sigma**2))
    return _to_uint8(_shift_sum(pixels.astype(np.float64), w / w.sum(), axis=1))


def _gaussian_kernel_1d(sigma: float, size: int = 3) -> np.ndarray:
    k = np.arange(size) - size // 2
    g = np.exp(-(k**2) / (2 * sigma**2))
    return g / g.sum()


def _convolve_fft(x: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Same-size 2-D convolution of every channel, reflect-101 border (cv2.filter2D's)."""
    r = kernel.shape[0] // 2
    padded = np.pad(x, ((0, 0), (r, r), (r, r)), mode="reflect")
    h, w = padded.shape[1:]
    fk = np.fft.rfft2(kernel, s=(h, w))
    full = np.fft.irfft2(np.fft.rfft2(padded) * fk, s=(h, w))
    return full[:, 2 * r : 2 * r + x.shape[1], 2 * r : 2 * r + x.shape[2]]


def _defocus_blur(pixels, i, rng):
    radius, alias = _DEFOCUS[i]
    r = radius + 1  # the 3x3 alias blur widens the disk by one pixel
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    disk = ((xx**2 + yy**2) <= radius**2).astype(np.float64)
    disk /= disk.sum()
    g = _gaussian_kernel_1d(alias)
    # ImageNet-C anti-aliases the disk with a 3x3 Gaussian (separable, same border rule).
    disk = _convolve_fft(disk[None], np.outer(g, g))[0]
    disk /= disk.sum()
    return _to_uint8(_convolve_fft(pixels.astype(np.float64), disk))


def _brightness(pixels, i, rng):
    # ImageNet-C adds c to HSV value; on gray images (NEU) that is the intensity itself, on
    # RGB we add it to every channel (a brighter lamp, hue kept).
    return _to_uint8(pixels.astype(np.float64) + _BRIGHTNESS[i] * 255.0)


def _contrast(pixels, i, rng):
    x = pixels.astype(np.float64)
    mean = x.mean(axis=(1, 2), keepdims=True)
    return _to_uint8((x - mean) * _CONTRAST[i] + mean)


def _uneven_illumination(pixels, i, rng):
    # A lamp off-axis: a linear gain ramp across the image in a random direction plus a
    # vignette darkening the corners; gain stays >= 0.
    _, h, w = pixels.shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    u, v = (2 * xx / max(w - 1, 1) - 1), (2 * yy / max(h - 1, 1) - 1)
    angle = rng.uniform(0, 2 * np.pi)
    ramp = (np.cos(angle) * u + np.sin(angle) * v) / np.sqrt(2)  # in [-1, 1]
    vignette = (u**2 + v**2) / 2  # 0 at the centre, 1 in the corners
    a = _ILLUMINATION[i]
    gain = np.clip(1 + a * ramp - 0.5 * a * vignette, 0, None)
    return _to_uint8(pixels.astype(np.float64) * gain[None])


def _jpeg(pixels, i, rng):
    # Pillow's libjpeg encoder/decoder at ImageNet-C's qualities (4:2:0 on RGB, as a camera).
    mode = "L" if pixels.shape[0] == 1 else "RGB"
    arr = pixels[0] if mode == "L" else pixels.transpose(1, 2, 0)
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(arr), mode).save(
        buf, format="JPEG", quality=_JPEG_QUALITY[i]
    )
    buf.seek(0)
    with Image.open(buf) as im:
        out = np.asarray(im.convert(mode), dtype=np.uint8)
    return np.ascontiguousarray(out[None] if mode == "L" else out.transpose(2, 0, 1))


_FUNCTIONS = {
    "gaussian_noise": _gaussian_noise,
    "motion_blur": _motion_blur,
    "defocus_blur": _defocus_blur,
    "brightness": _brightness,
    "contrast": _contrast,
    "uneven_illumination": _uneven_illumination,
    "jpeg": _jpeg,
}


def resize(pixels: np.ndarray, size: int) -> np.ndarray:
    """uint8 (C, H, W) -> (C, size, size) exactly as neu.image.load_image resizes a decoded
    file (Pillow bilinear), so a clean image gives the model's usual pixels."""
    c, h, w = pixels.shape
    if (h, w) == (size, size):
        return pixels
    mode = "L" if c == 1 else "RGB"
    arr = pixels[0] if c == 1 else pixels.transpose(1, 2, 0)
    im = Image.fromarray(np.ascontiguousarray(arr), mode).resize(
        (size, size), Image.Resampling.BILINEAR
    )
    out = np.asarray(im, dtype=np.uint8)
    return np.ascontiguousarray(out[None] if c == 1 else out.transpose(2, 0, 1))
