"""neu.split: stratified seeded split, duplicates together, manifest, train-only statistics."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from neu.dataset import DatasetError, load_dataset
from neu.split import channel_stats, load_manifest, make_split, save_manifest
from tests.conftest import make_class_folders, make_neu_flat, write_image

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def ds10(tmp_path):
    return load_dataset(make_neu_flat(tmp_path / "d", per_class=10), image_size=16)


def test_default_is_stratified_70_10_20(ds10):
    sp = make_split(ds10)
    assert sp.source == "seeded" and (len(sp.train), len(sp.val), len(sp.test)) == (42, 6, 12)
    assert np.bincount(ds10.labels[sp.val]).tolist() == [1] * 6
    assert np.bincount(ds10.labels[sp.test]).tolist() == [2] * 6
    everything = np.concatenate([sp.train, sp.val, sp.test])
    assert sorted(everything.tolist()) == list(range(60))
    assert sp.train.dtype == np.int64
    assert sp.info() == {
        "seed": 0,
        "val_fraction": 0.1,
        "test_fraction": 0.2,
        "limit_per_class": None,
    }


def test_folds_partition_every_class_and_keep_duplicates_together(tmp_path):
    root = make_neu_flat(tmp_path / "d", per_class=10)
    # Two identical images of one class: they must share a fold (and never straddle splits).
    a, b = sorted(root.glob("Pa_*.bmp"))[:2]
    shutil.copyfile(a, b)
    ds = load_dataset(root, image_size=16)
    folds = [make_split(ds, seed=1, folds=3, fold=k, val_fraction=0.1) for k in range(3)]
    tests = np.concatenate([f.test for f in folds])
    assert sorted(tests.tolist()) == list(range(60))  # every image tested exactly once
    for f in folds:
        assert set(f.train) | set(f.val) | set(f.test) == set(range(60))
        assert not (set(f.train) & set(f.val) or set(f.train) & set(f.test))
        assert not set(f.val) & set(f.test)
        # stratified: 10 images per class -> 3 or 4 test images per class and fold (the
        # duplicate pair may move one more), and 1 val image per class
        per_class = np.bincount(ds.labels[f.test]).tolist()
        assert all(3 <= c <= 4 for i, c in enumerate(per_class) if ds.classes[i] != "patches")
        assert 2 <= per_class[ds.classes.index("patches")] <= 5
        assert np.bincount(ds.labels[f.val]).tolist() == [1] * 6
        assert f.info()["folds"] == 3 and f.info()["fold"] == f.fold
        where = f.assignment(len(ds))
        ia, ib = ds.files.index(a.name), ds.files.index(b.name)
        assert where[ia] == where[ib]
    # make_split(**info) rebuilds each fold: what exports/verify relies on
    assert make_split(ds, **folds[2].info()).split_hash == folds[2].split_hash
    assert len({f.split_hash for f in folds}) == 3
    with pytest.raises(ValueError, match="fold"):
        make_split(ds, folds=3, fold=3)


def test_test_fraction_and_limit_per_class(ds10):
    sp = make_split(ds10, val_fraction=0.2, test_fraction=0.3)
    assert np.bincount(ds10.labels[sp.test]).tolist() == [3] * 6
    assert np.bincount(ds10.labels[sp.val]).tolist() == [2] * 6
    lim = make_split(ds10, limit_per_class=5, val_fraction=0.2, test_fraction=0.0)
    assert (
        len(lim.train) + len(lim.val) == 30
        and np.bincount(ds10.labels[lim.val]).tolist() == [1] * 6
    )
    assert lim.assignment(len(ds10)).count("unused") == 30
    same = make_split(ds10, limit_per_class=5, val_fraction=0.2, test_fraction=0.0)
    assert same.split_hash == lim.split_hash


def test_reproducible_and_seed_dependent(ds10):
    a, b = make_split(ds10, seed=3), make_split(ds10, seed=3)
    assert np.array_equal(a.val, b.val) and a.split_hash == b.split_hash
    assert make_split(ds10, seed=4).split_hash != a.split_hash


def test_split_follows_content_not_names(tmp_path):
    # Renaming files (same bytes) keeps each image in its split: order comes from content.
    a = load_dataset(make_class_folders(tmp_path / "a", {"x": 10, "y": 10}), image_size=16)
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    for f in sorted((tmp_path / "b" / "x").iterdir()):
        f.rename(f.with_name("renamed_" + f.name))
    b = load_dataset(tmp_path / "b", image_size=16)
    va = {a.file_hashes[i] for i in make_split(a).val}
    vb = {b.file_hashes[i] for i in make_split(b).val}
    assert va == vb


def test_tiny_classes_keep_a_training_image(tmp_path):
    ds = load_dataset(make_class_folders(tmp_path, {"a": 1, "b": 2, "c": 3}), image_size=16)
    sp = make_split(ds, val_fraction=0.5, test_fraction=0.4)
    for c in range(3):
        assert (ds.labels[sp.train] == c).sum() >= 1


def test_duplicates_always_in_one_split(tmp_path):
    root = make_neu_flat(tmp_path / "d", per_class=5)
    for k in range(4):  # several duplicate groups, one of three
        shutil.copy(root / f"Pa_{k + 1}.bmp", root / f"Pa_{k + 10}.bmp")
    shutil.copy(root / "Pa_1.bmp", root / "Pa_20.bmp")
    ds = load_dataset(root, image_size=16)
    assert len(ds.duplicates) == 4
    for seed in range(25):
        where = make_split(ds, seed=seed, val_fraction=0.3, test_fraction=0.2).assignment(len(ds))
        for group in ds.duplicates:
            assert len({where[ds.files.index(f)] for f in group}) == 1, (seed, group)


def test_mean_std_from_train_only(tmp_path):
    # Constant images of very different brightness: any val leak would move the mean.
    from PIL import Image

    for k in range(10):
        for cls in ("a", "b"):
            p = tmp_path / cls / f"{k}.png"
            p.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.full((8, 8), 20 * k + (5 if cls == "b" else 0), np.uint8)).save(p)
    ds = load_dataset(tmp_path, image_size=8)
    sp = make_split(ds)
    train = ds.images[torch.from_numpy(sp.train)].double() / 255
    assert sp.mean == pytest.approx((float(train.mean()),) * 3, abs=1e-12)
    assert sp.std == pytest.approx((float(train.std(unbiased=False)),) * 3, abs=1e-12)
    everything = float((ds.images.double() / 255).mean())
    assert abs(sp.mean[0] - everything) > 1e-4


def test_rgb_stats_per_channel():
    x = torch.zeros(2, 3, 4, 4, dtype=torch.uint8)
    x[:, 0] = 255
    x[1, 1] = 255
    mean, std = channel_stats(x)
    assert mean == pytest.approx((1.0, 0.5, 0.0)) and std == pytest.approx((0.0, 0.5, 0.0))


def test_layout_split_needs_kaggle(ds10):
    with pytest.raises(ValueError, match="no split of its own"):
        make_split(ds10, use_layout_split=True)


def test_bad_fractions(ds10):
    with pytest.raises(ValueError):
        make_split(ds10, val_fraction=0.6, test_fraction=0.5)


# --- manifest ----------------------------------------------------------------------------


def test_manifest_round_trip(ds10, tmp_path):
    sp = make_split(ds10, seed=7, test_fraction=0.2)
    path = save_manifest(sp, ds10, tmp_path / "m" / "split.json")
    m = json.loads(path.read_text())
    assert m["split_hash"] == sp.split_hash and m["dataset_hash"] == ds10.dataset_hash
    assert m["classes"] == ds10.classes and len(m["items"]) == 60
    assert set(m["items"][0]) == {"file", "class", "sha256", "split"}
    back = load_manifest(path, ds10)
    assert back.source == "manifest" and back.split_hash == sp.split_hash
    for name in ("train", "val", "test"):
        assert np.array_equal(getattr(back, name), getattr(sp, name))
    assert back.mean == sp.mean and back.std == sp.std
    assert (back.seed, back.val_fraction, back.test_fraction) == (7, 0.1, 0.2)
    assert not list(path.parent.glob(".*.tmp"))  # atomic write leaves no temp files


def test_manifest_detects_changed_missing_and_new_files(tmp_path):
    root = make_neu_flat(tmp_path / "d", per_class=4)
    ds = load_dataset(root, image_size=16)
    path = save_manifest(make_split(ds), ds, tmp_path / "split.json")

    write_image(root / "Cr_2.bmp", seed=999)  # tampered
    with pytest.raises(DatasetError, match=r"Cr_2.bmp: contents changed") as e:
        load_manifest(path, load_dataset(root, image_size=16))
    assert "split.json" in str(e.value)

    (root / "Cr_2.bmp").unlink()  # missing
    with pytest.raises(DatasetError, match="Cr_2.bmp: in the manifest but missing"):
        load_manifest(path, load_dataset(root, image_size=16))

    write_image(root / "Cr_2.bmp", seed=2)  # restored (same bytes as make_neu_flat) + new file
    write_image(root / "Cr_9.bmp", seed=12345)
    with pytest.raises(DatasetError, match="Cr_9.bmp: in the dataset but not in the manifest"):
        load_manifest(path, load_dataset(root, image_size=16))
    (root / "Cr_9.bmp").unlink()
    assert load_manifest(path, load_dataset(root, image_size=16)).split_hash


def test_manifest_edited_or_missing(ds10, tmp_path):
    path = save_manifest(make_split(ds10), ds10, tmp_path / "split.json")
    m = json.loads(path.read_text())
    item = next(it for it in m["items"] if it["split"] == "val")
    item["split"] = "train"
    path.write_text(json.dumps(m))
    with pytest.raises(DatasetError, match="was edited"):
        load_manifest(path, ds10)
    with pytest.raises(DatasetError, match="nope.json does not exist"):
        load_manifest(tmp_path / "nope.json", ds10)
    path.write_text("{not json")
    with pytest.raises(DatasetError, match="not a valid manifest"):
        load_manifest(path, ds10)


_CHILD = """
import json, sys
from neu.dataset import load_dataset
from neu.split import make_split, save_manifest
ds = load_dataset(sys.argv[1], image_size=16, cache_dir=False)
sp = make_split(ds, seed=5, test_fraction=0.1)
save_manifest(sp, ds, sys.argv[2])
"""


def test_split_identical_across_processes(tmp_path):
    root = make_neu_flat(tmp_path / "d", per_class=10)
    shutil.copy(root / "Pa_1.bmp", root / "Pa_11.bmp")
    procs, paths = [], []
    for k, hashseed in enumerate(["1", "2"]):  # different str hash seeds must not matter
        paths.append(tmp_path / f"m{k}.json")
        env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONHASHSEED": hashseed}
        procs.append(
            subprocess.Popen([sys.executable, "-c", _CHILD, str(root), str(paths[k])], env=env)
        )
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    outs = [p.read_bytes() for p in paths]
    assert outs[0] == outs[1]
    ds = load_dataset(root, image_size=16)
    here = make_split(ds, seed=5, test_fraction=0.1)
    assert json.loads(outs[0])["split_hash"] == here.split_hash
