"""neu.dataset: layouts, bad input, companions, formats, duplicates, cache (synthetic images)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

import neu.cache
from neu import NEU_CLASSES, NEU_CODES
from neu.dataset import DatasetError, load_dataset, scan
from neu.image import load_image
from tests.conftest import make_class_folders, make_neu_flat, write_image

S = 16  # decode size for tests: tiny and fast


def load(root, **kw):
    kw.setdefault("image_size", S)
    return load_dataset(root, **kw)


# --- layouts -----------------------------------------------------------------------------


def test_flat_neu_cls(tiny_neu):
    ds = load(tiny_neu)
    assert ds.layout == "neu-cls"
    assert ds.classes == list(NEU_CLASSES)
    assert len(ds) == 36 and ds.class_counts() == {c: 6 for c in NEU_CLASSES}
    assert ds.images.dtype == torch.uint8 and tuple(ds.images.shape) == (36, 1, S, S)
    assert ds.channels == 1 and ds.labels.dtype == np.int64
    # natural order within a class, labels follow the prefix
    assert ds.files[:3] == ["Cr_1.bmp", "Cr_2.bmp", "Cr_3.bmp"]
    for f, lab in zip(ds.files, ds.labels, strict=True):
        assert NEU_CODES[lab] == f.split("_")[0]
    # pixels are exactly load_image's
    i = ds.files.index("PS_4.bmp")
    np.testing.assert_array_equal(
        ds.images[i].numpy(), load_image(tiny_neu / "PS_4.bmp", size=S, channels=1)
    )
    assert ds.original_sizes == {"24x24": 36} and ds.modes == {"L": 36}
    assert ds.layout_split is None and ds.duplicates == [] and ds.excluded == []


def test_flat_neu_det_long_names(tmp_path):
    names = ["crazing_12.jpg", "inclusion_1.jpg", "patches_3.jpg"]
    names += ["pitted_surface_3.jpg", "rolled-in_scale_4.jpg", "scratches_9.jpg"]
    for k, n in enumerate(names):
        write_image(tmp_path / n, seed=k)
    ds = load(tmp_path)
    assert ds.layout == "neu-cls" and ds.classes == list(NEU_CLASSES)
    assert [ds.classes[i] for i in ds.labels] == list(NEU_CLASSES)


def test_prefix_is_case_sensitive(tmp_path):
    make_neu_flat(tmp_path, per_class=2)
    write_image(tmp_path / "ps_7.bmp", seed=99)
    with pytest.raises(DatasetError, match="ps_7.bmp") as e:
        load(tmp_path)
    assert "did you mean 'PS'" in str(e.value)


def test_class_folders_generic_sorted_imbalanced(tmp_path):
    make_class_folders(tmp_path, {"zebra": 2, "apple": 7, "Mango": 3})
    ds = load(tmp_path)
    assert ds.layout == "folder"
    assert ds.classes == ["Mango", "apple", "zebra"]  # sorted(), like ImageFolder
    assert ds.class_counts() == {"Mango": 3, "apple": 7, "zebra": 2}
    assert all(
        f.startswith(ds.classes[lab] + "/") for f, lab in zip(ds.files, ds.labels, strict=True)
    )


def test_class_folders_with_neu_names_map_to_canonical(tmp_path):
    # Any spelling of the six classes -> canonical names and order.
    folders = ["Sc", "crazing", "PITTED", "rolled-in scale", "Inclusion", "patches"]
    make_class_folders(tmp_path, {f: 2 for f in folders})
    ds = load(tmp_path)
    assert ds.classes == list(NEU_CLASSES)
    assert ds.files[0].startswith("crazing/") and ds.files[-1].startswith("Sc/")
    # a subset keeps canonical names and order
    shutil.rmtree(tmp_path / "crazing")
    assert load(tmp_path).classes == list(NEU_CLASSES[1:])


def test_class_folders_nested_images_count(tmp_path):
    make_class_folders(tmp_path, {"a": 2, "b": 2})
    write_image(tmp_path / "a" / "deeper" / "x.png", seed=77)
    ds = load(tmp_path)
    assert "a/deeper/x.png" in ds.files and ds.class_counts() == {"a": 3, "b": 2}


def make_kaggle(root, per=(3, 1, 1)):
    names = ["Crazing", "Inclusion", "Patches", "Pitted", "Rolled", "Scratches"]
    for si, split in enumerate(["train", "valid", "test"]):
        for ci, name in enumerate(names):
            for k in range(per[si]):
                write_image(
                    root / split / name / f"{NEU_CODES[ci]}_{si}{k}.bmp", seed=si * 97 + ci * 11 + k
                )
    return root


def test_kaggle_layout_and_its_split(tmp_path):
    from neu.split import make_split

    make_kaggle(tmp_path)
    ds = load(tmp_path)
    assert ds.layout == "kaggle" and ds.classes == list(NEU_CLASSES)
    assert len(ds) == 30 and sorted(set(ds.layout_split)) == ["test", "train", "val"]
    sp = make_split(ds, use_layout_split=True)
    assert sp.source == "layout"
    assert (len(sp.train), len(sp.val), len(sp.test)) == (18, 6, 6)
    assert all(ds.files[i].startswith("valid/") for i in sp.val)
    # default: our own split over all images
    own = make_split(ds)
    assert own.source == "seeded" and len(own.train) + len(own.val) + len(own.test) == 30
    assert len(own.test) == 6  # 70/10/20 of 5 images per class: one test image each


def test_kaggle_wrapped_in_one_folder_is_detected(tmp_path):
    make_kaggle(tmp_path / "NEU Metal Surface Defects Data")
    ds = load(tmp_path)
    assert ds.layout == "kaggle"
    assert all(f.startswith("NEU Metal Surface Defects Data/") for f in ds.files)
    assert "NEU Metal Surface Defects Data/train/Crazing/Cr_00.bmp" in ds.files


@pytest.mark.parametrize("images_dir", ["IMAGES", "images"])
def test_neu_det_layout_ignores_annotations(tmp_path, images_dir):
    for ci, name in enumerate(NEU_CLASSES):
        for k in (1, 2):
            write_image(tmp_path / images_dir / f"{name}_{k}.jpg", seed=ci * 10 + k, fmt="JPEG")
            (tmp_path / "ANNOTATIONS").mkdir(exist_ok=True)
            (tmp_path / "ANNOTATIONS" / f"{name}_{k}.xml").write_text("<annotation/>")
    ds = load(tmp_path)
    assert ds.layout == "neu-det" and ds.classes == list(NEU_CLASSES) and len(ds) == 12
    assert "ANNOTATIONS/" in ds.ignored
    assert ds.files[0] == f"{images_dir}/crazing_1.jpg"


def test_forced_layout(tmp_path):
    make_class_folders(tmp_path, {"a": 2, "b": 2})
    assert scan(tmp_path, layout="folder").layout == "folder"
    sc = scan(tmp_path, layout="neu-cls")  # wrong on purpose: folders are reported, not skipped
    assert sc.layout == "neu-cls" and sc.files == []
    assert {p.file for p in sc.problems} == {"a/", "b/"}
    with pytest.raises(DatasetError, match="not in the Kaggle layout"):
        scan(tmp_path, layout="kaggle")
    with pytest.raises(DatasetError, match="IMAGES/"):
        scan(tmp_path, layout="neu-det")
    with pytest.raises(ValueError, match="unknown layout"):
        scan(tmp_path, layout="nope")


# --- formats, sizes, channels ------------------------------------------------------------


def test_mixed_formats_sizes_gray_only_gives_one_channel(tmp_path):
    specs = [(".bmp", "BMP", (24, 24)), (".png", "PNG", (40, 30)), (".jpg", "JPEG", (17, 33))]
    specs += [(".tiff", "TIFF", (50, 50))]
    for k, (ext, fmt, size) in enumerate(specs):
        write_image(tmp_path / "a" / f"x{k}{ext}", size=size, fmt=fmt, seed=k)
        write_image(tmp_path / "b" / f"y{k}{ext}", size=size, fmt=fmt, seed=50 + k)
    # an RGB file holding only gray pixels still counts as gray
    gray_rgb = np.repeat(np.arange(24 * 24, dtype=np.uint8).reshape(24, 24, 1), 3, axis=2)
    from PIL import Image

    Image.fromarray(gray_rgb, "RGB").save(tmp_path / "a" / "grayrgb.png")
    ds = load(tmp_path)
    assert ds.channels == 1 and tuple(ds.images.shape) == (9, 1, S, S)
    assert ds.original_sizes["24x24"] == 3 and ds.modes["RGB"] == 1


def test_any_color_image_gives_three_channels(tmp_path):
    write_image(tmp_path / "a" / "gray.png", seed=1)
    write_image(tmp_path / "a" / "gray2.bmp", size=(31, 20), seed=2)
    write_image(tmp_path / "b" / "color.jpg", mode="RGB", seed=3, fmt="JPEG")
    ds = load(tmp_path)
    assert ds.channels == 3 and tuple(ds.images.shape) == (3, 3, S, S)
    for f in ("a/gray.png", "a/gray2.bmp", "b/color.jpg"):  # same as decoding with 3 channels
        np.testing.assert_array_equal(
            ds.images[ds.files.index(f)].numpy(), load_image(tmp_path / f, size=S, channels=3)
        )
    assert load(tmp_path, channels=1, cache_dir=False).channels == 1


# --- bad input ---------------------------------------------------------------------------


def _corrupt(root):
    (root / "Cr_99.bmp").write_bytes(b"BM this is not really a bitmap" * 10)
    return "Cr_99.bmp"


def _truncated(root):
    write_image(root / "In_99.png", size=(64, 64), seed=5, fmt="PNG")
    data = (root / "In_99.png").read_bytes()
    (root / "In_99.png").write_bytes(data[: len(data) // 2])
    return "In_99.png"


def _unmatched(root):
    write_image(root / "Xx_1.bmp", seed=123)
    return "Xx_1.bmp"


def _non_image(root):
    (root / "notes.txt").write_text("hello")
    return "notes.txt"


def _zero_byte(root):
    (root / "Sc_99.bmp").write_bytes(b"")
    return "Sc_99.bmp"


def _no_number(root):
    write_image(root / "Crazing.bmp", seed=124)
    return "Crazing.bmp"


@pytest.mark.parametrize(
    "make_bad", [_corrupt, _truncated, _unmatched, _non_image, _zero_byte, _no_number]
)
def test_bad_file_is_an_error_naming_it_and_exclude_bad_reports_it(tiny_neu, make_bad):
    bad = make_bad(tiny_neu)
    with pytest.raises(DatasetError) as e:
        load(tiny_neu)
    msg = str(e.value)
    assert bad in msg and "--exclude-bad" in msg
    assert [p.file for p in e.value.problems] == [bad]
    ds = load(tiny_neu, exclude_bad=True)
    assert len(ds) == 36 and bad not in ds.files
    assert [p.file for p in ds.excluded] == [bad]


def test_empty_class_folder(tmp_path):
    make_class_folders(tmp_path, {"a": 2, "b": 2})
    (tmp_path / "c").mkdir()
    with pytest.raises(DatasetError, match="c/: class folder has no images"):
        load(tmp_path)
    ds = load(tmp_path, exclude_bad=True)
    assert ds.classes == ["a", "b"] and [p.file for p in ds.excluded] == ["c/"]


def test_non_image_and_stray_file_in_class_folder_layout(tmp_path):
    make_class_folders(tmp_path, {"a": 2, "b": 2})
    (tmp_path / "a" / "labels.csv").write_text("x")
    write_image(tmp_path / "stray.png", seed=9)
    (tmp_path / "b" / "empty.png").write_bytes(b"")
    with pytest.raises(DatasetError) as e:
        load(tmp_path, layout="folder")
    assert {p.file for p in e.value.problems} == {"a/labels.csv", "stray.png", "b/empty.png"}


def test_missing_path_and_empty_folder(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        load(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no images found"):
        load(tmp_path / "empty")
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "README.md").write_text("only docs")
    with pytest.raises(DatasetError, match="no images found"):
        load(tmp_path / "docs", exclude_bad=True)
    (tmp_path / "file.bmp").write_bytes(b"x")
    with pytest.raises(DatasetError, match="is a file"):
        load(tmp_path / "file.bmp")


def test_error_lists_first_five_and_count(tiny_neu):
    for k in range(8):
        (tiny_neu / f"junk_{k}.txt").write_text("x")
    with pytest.raises(DatasetError) as e:
        load(tiny_neu)
    msg = str(e.value)
    assert "junk_4.txt" in msg and "junk_5.txt" not in msg
    assert "(and 3 more)" in msg and len(e.value.problems) == 8


def test_companion_files_are_ignored_and_listed(tiny_neu):
    names = ["README.md", "LICENSE", "LICENCE.txt", "COPYING", "NOTICE", "CITATION.cff"]
    names += ["SHA256SUMS", "MD5SUMS", "NEU.sha256", "x.md5", "y.sha1", "z.sha256sum"]
    names += [".DS_Store", "Thumbs.db", "desktop.ini", ".hidden.bmp"]
    for n in names:
        (tiny_neu / n).write_text("companion")
    (tiny_neu / ".git").mkdir()
    (tiny_neu / ".git" / "config").write_text("x")
    ds = load(tiny_neu)
    assert len(ds) == 36 and ds.excluded == []
    assert set(ds.ignored) == set(names) | {".git/"}


def test_companions_inside_class_folders(tmp_path):
    make_class_folders(tmp_path, {"a": 2, "b": 2})
    (tmp_path / "a" / "Thumbs.db").write_text("x")
    (tmp_path / "README.txt").write_text("x")
    (tmp_path / "b" / ".cache").mkdir()
    (tmp_path / "b" / ".cache" / "junk.bin").write_text("x")
    ds = load(tmp_path)
    assert set(ds.ignored) == {"a/Thumbs.db", "README.txt", "b/.cache/"}


# --- duplicates --------------------------------------------------------------------------


def test_duplicates_found_by_pixels_not_bytes(tiny_neu):
    shutil.copy(tiny_neu / "Pa_1.bmp", tiny_neu / "Pa_7.bmp")  # byte copy
    from PIL import Image

    Image.open(tiny_neu / "Pa_2.bmp").save(tiny_neu / "Pa_8.png")  # same pixels, other bytes
    ds = load(tiny_neu)
    assert ds.duplicates == [["Pa_1.bmp", "Pa_7.bmp"], ["Pa_2.bmp", "Pa_8.png"]]
    i, j = ds.files.index("Pa_2.bmp"), ds.files.index("Pa_8.png")
    assert ds.pixel_hashes[i] == ds.pixel_hashes[j] and ds.file_hashes[i] != ds.file_hashes[j]


def test_duplicates_with_different_labels_are_a_problem(tiny_neu):
    shutil.copy(tiny_neu / "Cr_1.bmp", tiny_neu / "In_9.bmp")
    with pytest.raises(DatasetError, match="same pixels as") as e:
        load(tiny_neu)
    assert {p.file for p in e.value.problems} == {"Cr_1.bmp", "In_9.bmp"}
    assert "labelled 'inclusion'" in str(e.value)
    ds = load(tiny_neu, exclude_bad=True)
    assert len(ds) == 35 and {p.file for p in ds.excluded} == {"Cr_1.bmp", "In_9.bmp"}


def test_dataset_hash_depends_on_content_and_labels(tmp_path):
    a = load(make_neu_flat(tmp_path / "a", per_class=2))
    b = load(make_neu_flat(tmp_path / "b", per_class=2), image_size=12)
    assert a.dataset_hash == b.dataset_hash  # same files, any decode size
    write_image(tmp_path / "b" / "Cr_1.bmp", seed=4242)
    assert load(tmp_path / "b").dataset_hash != a.dataset_hash


# --- cache -------------------------------------------------------------------------------


def test_second_load_comes_from_cache(tiny_neu, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    first = load(tiny_neu, cache_dir=cache)
    assert not first.from_cache and first.cache_file.exists()
    assert first.cache_file.parent == cache

    def boom(*a, **k):
        raise AssertionError("decoded although cached")

    monkeypatch.setattr(neu.cache, "load_image", boom)
    second = load(tiny_neu, cache_dir=cache)
    assert second.from_cache
    assert np.array_equal(first.images.numpy(), second.images.numpy())
    assert first.pixel_hashes == second.pixel_hashes and first.dataset_hash == second.dataset_hash
    # another size or changed bytes is a miss: it has to decode (and fails here on purpose)
    with pytest.raises(DatasetError, match="decoded although cached"):
        load(tiny_neu, cache_dir=cache, image_size=S + 2)
    write_image(tiny_neu / "Cr_1.bmp", seed=31337)
    with pytest.raises(DatasetError, match="decoded although cached"):
        load(tiny_neu, cache_dir=cache)


def test_cache_env_var_and_disable(tiny_neu, tmp_path, monkeypatch):
    monkeypatch.setenv("NEU_CACHE_DIR", str(tmp_path / "envcache"))
    ds = load(tiny_neu)
    assert ds.cache_file.parent == tmp_path / "envcache" and ds.cache_file.exists()
    off = load(tiny_neu, cache_dir=False)
    assert off.cache_file is None and not off.from_cache
    # a corrupt cache file is a miss, not a crash. `ds` maps that very file: overwriting it in
    # place truncates its pages (neu-bench itself only ever replaces cache files by rename).
    del ds
    cache_file = tmp_path / "envcache" / load(tiny_neu).cache_file.name
    cache_file.write_bytes(b"garbage")
    with pytest.warns(UserWarning, match="unreadable decode cache"):
        again = load(tiny_neu)
    assert not again.from_cache and np.array_equal(again.images.numpy(), off.images.numpy())


def test_cache_remembers_corrupt_files(tiny_neu, tmp_path, monkeypatch):
    (tiny_neu / "Cr_99.bmp").write_bytes(b"not an image")
    cache = tmp_path / "c"
    with pytest.raises(DatasetError):
        load(tiny_neu, cache_dir=cache)
    monkeypatch.setattr(neu.cache, "load_image", lambda *a, **k: 1 / 0)
    with pytest.raises(DatasetError) as e:
        load(tiny_neu, cache_dir=cache)
    assert [p.file for p in e.value.problems] == ["Cr_99.bmp"]
    ds = load(tiny_neu, cache_dir=cache, exclude_bad=True)
    assert ds.from_cache and len(ds) == 36


def test_thread_pool_gives_the_same_result(tiny_neu, monkeypatch):
    one = load(tiny_neu, cache_dir=False)
    monkeypatch.setenv("NEU_DECODE_THREADS", "3")
    assert neu.cache.decode_workers(100) == 3
    many = load(tiny_neu, cache_dir=False)
    assert torch.equal(one.images, many.images) and one.file_hashes == many.file_hashes


def test_decode_cache_is_a_memory_map_equal_to_decoding_in_ram(tiny_neu, tmp_path):
    # A truncated PNG passes the header probe and fails only when its pixels are decoded:
    # the .npy written for the header count must be rewritten with one row fewer.
    bad = _truncated(tiny_neu)
    ram = load(tiny_neu, cache_dir=False, exclude_bad=True)
    mapped = load(tiny_neu, cache_dir=tmp_path / "c", exclude_bad=True)
    assert ram.image_map is None and mapped.image_map is not None
    assert mapped.cache_file.suffix == ".npy" and mapped.cache_file.with_suffix(".json").exists()
    assert np.load(mapped.cache_file, mmap_mode="r").shape == (36, 1, S, S)
    assert torch.equal(ram.images, mapped.images) and ram.pixel_hashes == mapped.pixel_hashes
    assert [p.file for p in mapped.excluded] == [bad]
    again = load(tiny_neu, cache_dir=tmp_path / "c", exclude_bad=True)
    assert again.from_cache and torch.equal(again.images, ram.images)
    assert mapped.images_nbytes == 36 * S * S


def test_decoding_in_chunks_gives_the_same_pixels(tiny_neu, tmp_path):
    import neu.cache as nc

    paths = sorted(tiny_neu.glob("*.bmp"))
    whole, meta1, _ = nc.decode_all(paths, S, None, 1, key="k", cache=None)
    parts, meta2, mm = nc.decode_all(
        paths, S, None, 1, key="k", cache=nc.cache_paths(tmp_path, "k" * 40), chunk=5
    )
    assert mm is not None and np.array_equal(whole, parts)
    assert meta1["results"] == meta2["results"]
