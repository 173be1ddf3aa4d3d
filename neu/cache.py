"""Hash every file, decode every image once, and keep the decoded pixels on disk.

The cache is keyed by the files' content hashes (plus image size, channels, resize method),
so renaming or touching a file does not invalidate it and changing one byte does.
Decoding uses neu.image.load_image, the same function the deployed runtime uses.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from neu._io import atomic_path
from neu.image import RESIZE_METHOD, load_image

# Bump when the cached arrays or their metadata change meaning: old cache files then miss.
CACHE_VERSION = 1

# Pillow modes that can only hold gray pixels (P and RGB are checked pixel by pixel).
_GRAY_MODES = {"1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"}


def _workers(n_items: int) -> int:
    # Small BMPs decode in ~0.15 ms, mostly Python overhead under the GIL: on 2 cores, two
    # threads were ~2x SLOWER than one (measured on NEU-CLS). Big JPEG/PNG decodes release
    # the GIL and do gain, so use half the cores (capped), overridable via NEU_DECODE_THREADS.
    env = os.environ.get("NEU_DECODE_THREADS")
    n = int(env) if env else max(1, min(8, (os.cpu_count() or 2) // 2))
    return max(1, min(n, n_items))


def _chunked_map(fn, items: list, workers: int, chunk: int = 64) -> list:
    """fn over items on a thread pool, in order; chunks keep per-task overhead small."""
    chunks = [items[i : i + chunk] for i in range(0, len(items), chunk)]
    if workers <= 1:
        return [fn(x) for x in items]
    with ThreadPoolExecutor(workers) as ex:
        return [r for part in ex.map(lambda c: [fn(x) for x in c], chunks) for r in part]


def _hash_file(path: Path) -> str | Exception:
    try:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        return h.hexdigest()
    except OSError as e:
        return e


def pixel_hash(pixels: np.ndarray) -> str:
    h = hashlib.sha256(repr(tuple(pixels.shape)).encode())
    h.update(np.ascontiguousarray(pixels).tobytes())
    return h.hexdigest()


def _is_gray(path: Path) -> tuple[bool, tuple[int, int], str]:
    """(gray?, (w, h), mode). Header only for gray modes; RGB/P are checked pixel by pixel so
    an RGB file that only holds gray pixels is stored with 1 channel."""
    with Image.open(path) as im:
        size, mode = im.size, im.mode
        if mode in _GRAY_MODES:
            return True, size, mode
        rgb = np.asarray(im.convert("RGB"))
    gray = bool((rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all())
    return gray, size, mode


def _decode(path: Path, image_size: int, channels: int | None):
    """-> (pixels (C,S,S) uint8, (w, h), mode) or an error message."""
    try:
        gray, size, mode = _is_gray(path)
        c = channels or (1 if gray else 3)
        return load_image(path, size=image_size, channels=c), size, mode
    except Exception as e:  # any decoder failure is a per-file problem
        msg = str(e).strip() or type(e).__name__
        return f"cannot be decoded as an image ({type(e).__name__}: {msg})"


def default_cache_dir() -> Path:
    env = os.environ.get("NEU_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "neu-bench"


def _cache_key(file_hashes: list[str], image_size: int, channels: int | None) -> str:
    h = hashlib.sha256(
        f"neu-bench decode cache v{CACHE_VERSION} size={image_size} channels={channels or 'auto'}"
        f" resize={RESIZE_METHOD}\n".encode()
    )
    for fh in file_hashes:
        h.update(fh.encode() + b"\n")
    return h.hexdigest()


def _cache_read(path: Path, n_files: int):
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(bytes(z["meta"]).decode())
            images = z["images"]
        if meta.get("version") != CACHE_VERSION or len(meta["results"]) != n_files:
            return None
        return images, meta
    except Exception as e:  # a broken cache is just a miss
        warnings.warn(f"ignoring unreadable decode cache {path}: {e}", stacklevel=3)
        return None


def _cache_write(path: Path, images: np.ndarray, meta: dict) -> None:
    try:
        blob = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.savez(f, images=images, meta=blob)
    except OSError as e:
        warnings.warn(f"could not write decode cache {path}: {e}", stacklevel=3)


def _decode_all(paths: list[Path], image_size: int, channels: int | None, workers: int):
    """Decode every path once. -> (images (M,C,S,S) for the good ones, per-file meta)."""
    out = _chunked_map(lambda p: _decode(p, image_size, channels), paths, workers)
    good = [r for r in out if not isinstance(r, str)]
    c = channels or (3 if any(r[0].shape[0] == 3 for r in good) else 1)
    images = np.empty((len(good), c, image_size, image_size), dtype=np.uint8)
    results = []
    k = 0
    for r in out:
        if isinstance(r, str):
            results.append({"error": r})
            continue
        px, (w, h), mode = r
        # Gray decoded to 1 channel, repeated: identical to load_image(channels=3) for gray
        # pixels (Pillow's L->RGB copies the value, bilinear resize works per channel).
        images[k] = px if px.shape[0] == c else np.repeat(px, c, axis=0)
        results.append({"size": f"{w}x{h}", "mode": mode, "pixel_hash": pixel_hash(images[k])})
        k += 1
    return images, {"version": CACHE_VERSION, "channels": c, "results": results}
