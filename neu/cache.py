"""Hash every file, decode every image once, and keep the decoded pixels on disk.

The cache is one uint8 .npy array (N, C, S, S) per dataset x image size plus a JSON sidecar
(per-file size, mode, pixel hash, errors), keyed by the files' content hashes (plus image
size, channels, resize method): renaming or touching a file does not invalidate it, changing
one byte does. Decoding writes straight into a memory map of a temporary file, a chunk of
images at a time, then renames it: a dataset larger than RAM is decoded without ever being
held whole in memory. Loading maps the file (copy-on-write, so torch can wrap it) and reads
pages only when a batch touches them. Decoding uses neu.image.load_image, the same function
the deployed runtime uses.

What neu.dataset uses: decode_workers and chunked_map (the thread pool), hash_file,
cache_key, cache_paths and read_cache (look an entry up), decode_all (decode, filling the
entry on a miss), pixel_hash.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from neu._io import atomic_path, atomic_write_json
from neu.image import RESIZE_METHOD, check_mode, declared_bit_depth, load_image

# Bump when the cached arrays or their metadata change meaning: old cache files then miss.
# 3: decoded by declared bit depth (16-bit grey was clipped to white), per-file bit_depth.
CACHE_VERSION = 3  # 2: .npy memory map + JSON sidecar (1: one .npz)

# Pillow modes that can only hold gray pixels (P and RGB are checked pixel by pixel).
_GRAY_MODES = {"1", "L", "LA", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"}


def decode_workers(n_items: int) -> int:
    """Threads to hash/decode `n_items` files with ($NEU_DECODE_THREADS overrides)."""
    # Small BMPs decode in ~0.15 ms, mostly Python overhead under the GIL: on 2 cores, two
    # threads were ~2x SLOWER than one (measured on NEU-CLS). Big JPEG/PNG decodes release
    # the GIL and do gain, so use half the cores (capped), overridable via NEU_DECODE_THREADS.
    env = os.environ.get("NEU_DECODE_THREADS")
    n = int(env) if env else max(1, min(8, (os.cpu_count() or 2) // 2))
    return max(1, min(n, n_items))


def chunked_map(fn, items: list, workers: int, chunk: int = 64) -> list:
    """fn over items on a thread pool, in order; chunks keep per-task overhead small."""
    chunks = [items[i : i + chunk] for i in range(0, len(items), chunk)]
    if workers <= 1:
        return [fn(x) for x in items]
    with ThreadPoolExecutor(workers) as ex:
        return [r for part in ex.map(lambda c: [fn(x) for x in c], chunks) for r in part]


def hash_file(path: Path) -> str | OSError:
    """sha256 hex digest of the file's bytes, or the OSError that stopped reading it."""
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


def _is_gray(path: Path) -> tuple[bool, tuple[int, int], str, int]:
    """(gray?, (w, h), mode, declared bit depth). Header only for gray modes; RGB/P are
    checked pixel by pixel so an RGB file that only holds gray pixels is stored with 1
    channel. A mode the decoder does not know is an error here, before anything is stored."""
    with Image.open(path) as im:
        check_mode(im, path)
        size, mode, depth = im.size, im.mode, declared_bit_depth(im)
        if mode in _GRAY_MODES:
            return True, size, mode, depth
        rgb = np.asarray(im.convert("RGB"))
    gray = bool((rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all())
    return gray, size, mode, depth


def _probe(path: Path):
    """-> (gray?, (w, h), mode, bit depth) or an error message. Header only for gray modes."""
    try:
        return _is_gray(path)
    except Exception as e:  # any decoder failure is a per-file problem
        return _decode_error(e)


def _decode_error(e: Exception) -> str:
    msg = str(e).strip() or type(e).__name__
    return f"cannot be decoded as an image ({type(e).__name__}: {msg})"


def default_cache_dir() -> Path:
    env = os.environ.get("NEU_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "neu-bench"


def cache_key(file_hashes: list[str], image_size: int, channels: int | None) -> str:
    """The cache entry's key: these file contents, in this order, decoded with these options
    by this CACHE_VERSION and resize method."""
    h = hashlib.sha256(
        f"neu-bench decode cache v{CACHE_VERSION} size={image_size} channels={channels or 'auto'}"
        f" resize={RESIZE_METHOD}\n".encode()
    )
    for fh in file_hashes:
        h.update(fh.encode() + b"\n")
    return h.hexdigest()


def cache_paths(cache_dir: Path, key: str) -> tuple[Path, Path]:
    """(pixels .npy, metadata .json) of the cache entry for `key`."""
    stem = Path(cache_dir).expanduser() / f"neu-{key[:40]}"
    return stem.with_suffix(".npy"), stem.with_suffix(".json")


def map_npy(path: Path) -> tuple[np.ndarray, mmap.mmap]:
    """Memory-map a uint8 .npy file copy-on-write: nothing is read until a page is touched,
    writes (there are none) would stay private. Returns the array and its mmap, whose
    madvise lets a reader drop pages it has finished with."""
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        read_header = (
            np.lib.format.read_array_header_1_0
            if version == (1, 0)
            else np.lib.format.read_array_header_2_0
        )
        shape, fortran, dtype = read_header(f)
        offset = f.tell()
        if dtype != np.uint8 or fortran:
            raise ValueError(f"{path} holds {dtype} (fortran={fortran}), not C-ordered uint8")
        n = int(np.prod(shape))
        if os.fstat(f.fileno()).st_size < offset + n:
            raise ValueError(f"{path} is truncated")
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
    return np.frombuffer(mm, dtype=np.uint8, count=n, offset=offset).reshape(shape), mm


def read_cache(npy: Path, meta_path: Path, key: str, n_files: int):
    """(images memory map, meta, mmap) if the entry exists and matches these files, else None."""
    if not (npy.exists() and meta_path.exists()):
        return None
    try:
        meta = json.loads(meta_path.read_text())
        if (
            meta.get("version") != CACHE_VERSION
            or meta.get("key") != key
            or len(meta["results"]) != n_files
        ):
            return None
        images, mm = map_npy(npy)
        if list(images.shape) != meta["shape"]:
            return None
        return images, meta, mm
    except Exception as e:  # a broken cache is just a miss
        warnings.warn(f"ignoring unreadable decode cache {npy}: {e}", stacklevel=4)
        return None


def decode_all(
    paths: list[Path],
    image_size: int,
    channels: int | None,
    workers: int,
    *,
    key: str,
    cache: tuple[Path, Path] | None,
    chunk: int | None = None,
):
    """Decode every path once into (images (M,C,S,S) for the good ones, per-file meta, mmap).

    With `cache`, the pixels are appended to a temporary .npy `chunk` images at a time (plain
    writes: unlike a writable map, written pages never count as this process's memory), the
    file is renamed into place when complete, then the sidecar is written, and the result is
    the memory map of that file: peak memory is one chunk, whatever the dataset's size.
    Without `cache`, they go into an array in RAM.
    """
    # Pass 1: gray or colour, size and mode per file (headers only for gray images), so the
    # channel count and the number of rows are known before anything is written.
    probes = chunked_map(_probe, paths, workers)
    good = [i for i, p in enumerate(probes) if not isinstance(p, str)]
    c = channels or (3 if any(not probes[i][0] for i in good) else 1)
    shape = (len(good), c, image_size, image_size)
    results: list[dict] = [{"error": p} if isinstance(p, str) else {} for p in probes]
    # ~2 MB of decoded pixels per chunk: memory stays flat whatever the image size.
    chunk = chunk or max(1, min(256, (2 << 20) // (c * image_size * image_size)))
    # Pass 2: the pixels, into RAM or the cache file.
    pixels = _ChunkedDecode(paths, probes, good, channels, c, image_size, workers, chunk, results)
    meta = {"version": CACHE_VERSION, "key": key, "channels": c, "results": results}
    if cache is None:
        images = np.empty(shape, dtype=np.uint8)
        rows = pixels.fill(
            lambda part, at: images[at : at + len(part)].__setitem__(slice(None), part)
        )
        meta["shape"] = [rows, *shape[1:]]
        return images[:rows], meta, None
    npy, meta_path = cache
    try:
        with atomic_path(npy) as tmp:
            with open(tmp, "wb") as f:
                _write_npy_header(f, shape)
                rows = pixels.fill(lambda part, at: f.write(part.tobytes()))
            if rows < len(good):  # some files failed only in pass 2: fix the row count
                _shrink(tmp, rows)
        meta["shape"] = [rows, *shape[1:]]
        atomic_write_json(meta_path, meta)
    except OSError as e:
        warnings.warn(f"could not write decode cache {npy}: {e}; decoding into RAM", stacklevel=4)
        return decode_all(paths, image_size, channels, workers, key=key, cache=None, chunk=chunk)
    images, mm = map_npy(npy)
    return images, meta, mm


@dataclass
class _ChunkedDecode:
    """decode_all's second pass: the pixels of the files whose header probe succeeded, a chunk
    at a time, recording each file's result (size, mode, bit depth, pixel hash, or error)."""

    paths: list[Path]
    probes: list  # _probe's answer per path
    good: list[int]  # indices of the paths whose probe succeeded
    channels: int | None  # as asked; None decodes each file with its own count
    stored_channels: int
    image_size: int
    workers: int
    chunk: int
    results: list[dict]  # filled in place, one per path

    def decode(self, i: int):
        try:
            c_i = self.channels or (1 if self.probes[i][0] else 3)
            return load_image(self.paths[i], size=self.image_size, channels=c_i)
        except Exception as e:
            return _decode_error(e)

    def fill(self, sink) -> int:
        """Decode chunk by chunk, handing each chunk's rows to sink; -> rows written."""
        c, s = self.stored_channels, self.image_size
        rows = 0
        buf = np.empty((min(self.chunk, len(self.good)), c, s, s), dtype=np.uint8)
        for start in range(0, len(self.good), self.chunk):
            part = self.good[start : start + self.chunk]
            k = 0
            for i, px in zip(part, chunked_map(self.decode, part, self.workers), strict=True):
                if isinstance(px, str):  # the header was fine, the pixels are not
                    self.results[i] = {"error": px}
                    continue
                # Gray decoded to 1 channel, repeated: identical to load_image(channels=3) for
                # gray pixels (Pillow's L->RGB copies the value, bilinear resize per channel).
                buf[k] = px if px.shape[0] == c else np.repeat(px, c, axis=0)
                _, (w, h), mode, depth = self.probes[i]
                self.results[i] = {
                    "size": f"{w}x{h}",
                    "mode": mode,
                    "bit_depth": depth,
                    "pixel_hash": pixel_hash(buf[k]),
                }
                k += 1
            sink(buf[:k], rows)
            rows += k
        return rows


def _write_npy_header(f, shape: tuple[int, ...]) -> None:
    header = {"descr": "|u1", "fortran_order": False, "shape": tuple(shape)}
    np.lib.format.write_array_header_1_0(f, header)


def _shrink(path: Path, rows: int, chunk_bytes: int = 1 << 24) -> None:
    """Rewrite the .npy at `path` holding only its first `rows` rows, a few MB at a time."""
    smaller = path.with_name(path.name + ".rows")
    with open(path, "rb") as src, open(smaller, "wb") as dst:
        np.lib.format.read_magic(src)
        shape, _, _ = np.lib.format.read_array_header_1_0(src)
        _write_npy_header(dst, (rows, *shape[1:]))
        left = rows * int(np.prod(shape[1:]))
        while left:
            block = src.read(min(chunk_bytes, left))
            dst.write(block)
            left -= len(block)
    os.replace(smaller, path)
