"""Lossless PNG copy of an image folder, for carrying NEU-CLS to a machine with a size limit.

    python scripts/png_copy.py SRC DEST

The 1,800 NEU-CLS BMPs are 78 MB; as PNG they are ~42 MB, which fits the GPU machine's 64 MiB
working-tree limit. Pixels are copied exactly (mode and palette-free grayscale kept) and every
file is checked after writing: decoding the PNG must give the same pixel bytes as the source.
Prints the pixel digest (sha256 over sorted (stem, pixel sha256)), which is identical for the
source and the copy; scripts/gpu_proof.sh checks it on the far side.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import numpy as np
from PIL import Image

IMAGE_SUFFIXES = {".bmp", ".png", ".jpg", ".jpeg", ".tif", ".tiff"}


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        im = im.convert("L") if im.mode in ("P", "L") else im.convert("RGB")
        return np.asarray(im)


def pixel_digest(folder: Path) -> str:
    """One hash for a folder's pixels, independent of the file format they are stored in."""
    items = []
    for p in sorted(folder.iterdir()):
        if p.suffix.lower() in IMAGE_SUFFIXES:
            a = pixels(p)
            items.append(f"{p.stem}:{a.shape}:{hashlib.sha256(a.tobytes()).hexdigest()}")
    return hashlib.sha256("\n".join(items).encode()).hexdigest()


def main(src: str, dest: str) -> int:
    src_dir, dest_dir = Path(src), Path(dest)
    dest_dir.mkdir(parents=True, exist_ok=True)
    n = 0
    for p in sorted(src_dir.iterdir()):
        if p.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        a = pixels(p)
        out = dest_dir / (p.stem + ".png")
        tmp = out.with_suffix(".png.tmp")
        Image.fromarray(a).save(tmp, format="PNG", optimize=True)
        if not np.array_equal(pixels(tmp), a):
            tmp.unlink()
            raise SystemExit(f"{p}: PNG round trip changed the pixels")
        tmp.replace(out)
        n += 1
    print(f"{n} images -> {dest_dir}")
    print(f"pixel digest: {pixel_digest(dest_dir)}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 2:
        print(pixel_digest(Path(sys.argv[1])))
        sys.exit(0)
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    sys.exit(main(*sys.argv[1:]))
