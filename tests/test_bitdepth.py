"""neu.image's decoder by declared bit depth, shared by training, `neu inspect` and `predict`,
and the per-image notes on inputs whose meaning changed on the way to the model."""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from exports.__main__ import main as exports_main
from exports.runtime import Classifier
from neu.image import UnsupportedImageError, check_mode, decode_image, load_image
from tests.conftest import make_neu_flat
from tests.test_export import metadata, tiny_model

SIZE = 32


def gray(seed=0, size=(40, 40)) -> np.ndarray:
    w, h = size
    return np.random.default_rng(seed).integers(0, 256, (h, w), dtype=np.uint8)


def png16(path: Path, samples: np.ndarray) -> Path:
    """A 16-bit PNG (grey, RGB or RGBA) written by hand: Pillow cannot write 48-bit colour."""
    h, w = samples.shape[:2]
    color = {2: 0, 3: 2}[samples.ndim] if samples.ndim == 2 or samples.shape[2] == 3 else 6
    raw = b"".join(b"\x00" + samples[y].astype(">u2").tobytes() for y in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", w, h, 16, color, 0, 0, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )  # fmt: skip
    return path


def save16(path: Path, a8: np.ndarray, factor: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(a8.astype(np.uint16) * factor).save(path)  # mode I;16
    return path


# --- the decoder ---------------------------------------------------------------------------


@pytest.mark.parametrize("factor", [257, 256])
@pytest.mark.parametrize("ext", [".png", ".tif"])
def test_16bit_grey_decodes_to_its_8bit_twin(tmp_path, factor, ext):
    # It used to clip: every pixel of a x256 16-bit PNG of a NEU image came out 255.
    a = gray()
    Image.fromarray(a).save(tmp_path / "a.bmp")
    d = decode_image(save16(tmp_path / f"a16{ext}", a, factor), size=SIZE, channels=1)
    assert d.mode == "I;16" and d.bit_depth == 16
    assert np.array_equal(d.pixels, load_image(tmp_path / "a.bmp", size=SIZE, channels=1))
    three = decode_image(tmp_path / f"a16{ext}", size=SIZE, channels=3).pixels
    assert np.array_equal(three, load_image(tmp_path / "a.bmp", size=SIZE, channels=3))


def test_16bit_colour_and_32bit_int_and_float(tmp_path):
    rgb = np.random.default_rng(1).integers(0, 256, (20, 20, 3), dtype=np.uint8)
    Image.fromarray(rgb, "RGB").save(tmp_path / "rgb.png")
    d = decode_image(png16(tmp_path / "rgb16.png", rgb.astype(np.uint16) * 257), size=None,
                     channels=3)  # fmt: skip
    assert d.bit_depth == 16 and np.array_equal(d.pixels, rgb.transpose(2, 0, 1))
    a = gray(2, (20, 20))
    Image.fromarray(a.astype(np.int32) << 23).save(tmp_path / "i32.tif")  # signed 32-bit
    d = decode_image(tmp_path / "i32.tif", size=None, channels=1)
    assert d.mode == "I" and d.bit_depth == 32 and np.array_equal(d.pixels[0], a)
    Image.fromarray(a.astype(np.float32) / 255).save(tmp_path / "f.tif")
    d = decode_image(tmp_path / "f.tif", size=None, channels=1)
    assert d.mode == "F" and np.array_equal(d.pixels[0], a)


def test_values_the_declared_depth_cannot_hold_are_errors_naming_the_file(tmp_path):
    Image.fromarray(gray().astype(np.float32)).save(tmp_path / "f255.tif")  # 0..255 floats
    with pytest.raises(UnsupportedImageError, match=r"f255.tif: float image .* \[0, 1\]"):
        decode_image(tmp_path / "f255.tif", size=SIZE, channels=1)
    Image.fromarray(gray().astype(np.int32) - 300).save(tmp_path / "neg.tif")
    with pytest.raises(UnsupportedImageError, match="neg.tif: signed 32-bit image"):
        decode_image(tmp_path / "neg.tif", size=SIZE, channels=1)


def test_unknown_mode_is_an_error_naming_file_and_mode(tmp_path, monkeypatch):
    with pytest.raises(UnsupportedImageError, match=r"x.png: Pillow mode 'La' is not one"):
        check_mode(Image.new("La", (2, 2)), "x.png")
    # Inside a dataset: a per-file problem, never a silent guess.
    import neu.image
    from neu.dataset import DatasetError, load_dataset

    root = make_neu_flat(tmp_path / "d", per_class=3)
    monkeypatch.setattr(neu.image, "KNOWN_MODES", ("RGB",))  # as if "L" were unknown
    with pytest.raises(DatasetError, match=r"Cr_1.bmp: .*Pillow mode 'L' is not one"):
        load_dataset(root, image_size=16, cache_dir=False)


def test_inspect_reports_bit_depths_and_mixing(tmp_path):
    from neu.dataset import load_dataset
    from neu.inspect import inspect_dataset

    root = make_neu_flat(tmp_path / "d", per_class=3, size=(24, 24))
    eight = load_dataset(root, image_size=24, cache_dir=False)
    bmp = root / "Sc_1.bmp"
    save16(root / "Sc_1.png", np.asarray(Image.open(bmp)), 256)
    bmp.unlink()
    report = inspect_dataset(root, image_size=24, cache_dir=False)
    assert report["usable"] and report["bit_depths"] == {"8": 17, "16": 1}
    assert report["mixed_bit_depths"] and report["modes"] == {"L": 17, "I;16": 1}
    # Training sees the 8-bit pixels, not a white square labelled scratches.
    mixed = load_dataset(root, image_size=24, cache_dir=False)
    assert np.array_equal(mixed.images.numpy(), eight.images.numpy())


# --- predict: the twins, and the notes -----------------------------------------------------


@pytest.fixture(scope="module")
def onnx_path(tmp_path_factory) -> Path:
    from exports.export import export_onnx

    out = tmp_path_factory.mktemp("bitdepth") / "m.onnx"
    return export_onnx(tiny_model(size=SIZE), out, metadata=metadata(size=SIZE),
                       image_size=SIZE, exporter="torchscript")  # fmt: skip


def test_x257_twin_predicts_like_the_8bit_original(onnx_path, tmp_path):
    clf = Classifier(onnx_path)
    files = []
    for seed in range(4):
        a = gray(seed)
        Image.fromarray(a).save(tmp_path / f"{seed}.bmp")
        files += [tmp_path / f"{seed}.bmp", save16(tmp_path / f"{seed}.png", a, 257)]
    results = clf.predict_files(files)
    for eight, sixteen in zip(results[::2], results[1::2], strict=True):
        assert sixteen["class"] == eight["class"]
        for c, p in eight["probabilities"].items():
            assert abs(sixteen["probabilities"][c] - p) <= 1e-4
        assert sixteen["warnings"] == []


def test_predict_json_notes_inputs_whose_meaning_changed(onnx_path, tmp_path, capsys):
    d = tmp_path / "imgs"
    d.mkdir()
    Image.fromarray(gray(size=(400, 100))).save(d / "wide.png")
    frames = [Image.fromarray(gray(s)) for s in (1, 2, 3)]
    frames[0].save(d / "multi.tif", save_all=True, append_images=frames[1:])
    Image.new("RGBA", (40, 40), (0, 0, 0, 0)).save(d / "transparent.png")
    Image.new("L", (40, 40), 0).save(d / "black.png")
    Image.fromarray(gray(5)).save(d / "plain.png")
    assert exports_main(["predict", str(onnx_path), str(d), "--json"]) == 0
    notes = {
        Path(r["file"]).name: r["warnings"]
        for r in map(json.loads, capsys.readouterr().out.splitlines())
    }
    assert notes["plain.png"] == []
    assert notes["wide.png"] == [
        f"aspect ratio changed: 400x100 was resized to {SIZE}x{SIZE}, squashing the image"
    ]
    assert notes["multi.tif"] == ["multi-frame file (3 frames): only frame 1 is classified"]
    assert notes["transparent.png"][0].startswith("alpha channel dropped: 100.0% of the pixels")
    assert notes["transparent.png"][1].startswith("constant image: every pixel is 0")
    assert notes["black.png"] == [
        "constant image: every pixel is 0; the prediction says nothing about the surface"
    ]
    # The table says it too, in a note column.
    assert exports_main(["predict", str(onnx_path), str(d / "wide.png")]) == 0
    out = capsys.readouterr().out
    header = next(line for line in out.splitlines() if "confidence" in line)
    assert "note" in header
    # rich folds the note inside its column: compare the words, not the line breaks.
    words = " ".join(w for w in out.split() if w.isalnum() or w.endswith(":"))
    assert "aspect ratio changed:" in words


# --- real NEU images in other formats ------------------------------------------------------


@pytest.mark.real_data
def test_real_neu_images_in_other_formats_classify_like_the_bmp(onnx_path, tmp_path, neu_data):
    """One image per class, as 16-bit PNG (x257 and x256), 16-bit TIFF, 16-bit colour PNG and
    JPEG: the lossless ones give the BMP's probabilities, the JPEG its pixels within a few
    levels (lossy) and, where the BMP's top-1 margin is clear, its class."""
    root = neu_data
    bmps = sorted(root.rglob("*_1.bmp"))[:6]
    assert len(bmps) == 6
    clf = Classifier(onnx_path)
    for bmp in bmps:
        a = np.asarray(Image.open(bmp).convert("L"))
        stem = tmp_path / bmp.stem
        twins = [
            save16(stem.with_suffix(".x257.png"), a, 257),
            save16(stem.with_suffix(".x256.png"), a, 256),
            save16(stem.with_suffix(".tif"), a, 257),
            png16(stem.with_suffix(".rgb16.png"), np.repeat(a[..., None], 3, 2).astype(np.uint16)
                  * 257),
        ]  # fmt: skip
        Image.fromarray(a).save(stem.with_suffix(".jpg"), quality=100)
        ref, *lossless, jpeg = clf.predict_files([bmp, *twins, stem.with_suffix(".jpg")])
        for r in lossless:
            assert r["class"] == ref["class"], r["file"]
            assert max(abs(r["probabilities"][c] - p) for c, p in ref["probabilities"].items()) \
                <= 1e-4, r["file"]  # fmt: skip
        jp = load_image(stem.with_suffix(".jpg"), size=200, channels=1).astype(int)
        assert np.abs(jp - load_image(bmp, size=200, channels=1)).max() <= 4
        top2 = sorted(ref["probabilities"].values())[-2:]
        if top2[1] - top2[0] > 0.1:
            assert jpeg["class"] == ref["class"], jpeg["file"]
