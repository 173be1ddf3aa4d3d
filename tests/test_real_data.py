"""The real NEU-CLS set (NEU_DATA): counts, classes, the known duplicate, a reproducible split,
sane statistics and a decode cache that pays off. Skips without NEU_DATA, fails under
NEU_REQUIRE_DATA=1 (see the neu_data fixture)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from neu import NEU_CLASSES
from neu.dataset import load_dataset
from neu.split import make_split, save_manifest

pytestmark = pytest.mark.real_data
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def loaded(neu_data, tmp_path_factory):
    """(first load that decodes, its seconds, second load from the cache, its seconds)."""
    cache = tmp_path_factory.mktemp("real-cache")
    t0 = time.perf_counter()
    first = load_dataset(neu_data, cache_dir=cache)
    t1 = time.perf_counter()
    second = load_dataset(neu_data, cache_dir=cache)
    t2 = time.perf_counter()
    return first, t1 - t0, second, t2 - t1


def test_counts_and_classes(loaded):
    ds = loaded[0]
    assert ds.layout == "neu-cls" and len(ds) == 1800
    assert ds.classes == list(NEU_CLASSES)
    assert ds.class_counts() == {c: 300 for c in NEU_CLASSES}
    assert tuple(ds.images.shape) == (1800, 1, 200, 200) and ds.channels == 1
    assert ds.original_sizes == {"200x200": 1800} and ds.excluded == []


def test_known_duplicate_pair_in_one_split(loaded):
    ds = loaded[0]
    assert ds.duplicates == [["Pa_101.bmp", "Pa_105.bmp"]]
    for seed in range(3):
        where = make_split(ds, seed=seed).assignment(len(ds))
        assert where[ds.files.index("Pa_101.bmp")] == where[ds.files.index("Pa_105.bmp")]


def test_default_split_and_statistics(loaded):
    ds = loaded[0]
    sp = make_split(ds)
    assert (len(sp.train), len(sp.val), len(sp.test)) == (1260, 180, 360)
    assert np.bincount(ds.labels[sp.val]).tolist() == [30] * 6
    assert np.bincount(ds.labels[sp.test]).tolist() == [60] * 6
    assert len(set(sp.mean)) == 1 and len(set(sp.std)) == 1  # gray: one value, repeated
    assert 0.2 < sp.mean[0] < 0.8 and 0.05 < sp.std[0] < 0.4


def test_cached_load_is_faster_and_identical(loaded):
    first, t_first, second, t_second = loaded
    print(f"\nNEU-CLS first load (decode) {t_first:.3f}s, cached load {t_second:.3f}s")
    assert not first.from_cache and second.from_cache
    assert np.array_equal(first.images.numpy(), second.images.numpy())
    assert first.dataset_hash == second.dataset_hash
    assert t_second < t_first


_CHILD = """
import sys
from neu.dataset import load_dataset
from neu.split import make_split, save_manifest
ds = load_dataset(sys.argv[1])
save_manifest(make_split(ds), ds, sys.argv[2])
"""


def test_manifest_identical_across_processes(neu_data, loaded, tmp_path):
    # The children share the warm cache of `loaded`: this checks the split, not decode speed.
    cache = loaded[0].cache_file.parent
    env = {**os.environ, "PYTHONPATH": str(ROOT), "NEU_CACHE_DIR": str(cache)}
    paths = [tmp_path / "a.json", tmp_path / "b.json"]
    procs = [
        subprocess.Popen([sys.executable, "-c", _CHILD, str(neu_data), str(p)], env=env)
        for p in paths
    ]
    assert [p.wait(timeout=300) for p in procs] == [0, 0]
    a, b = (p.read_bytes() for p in paths)
    assert a == b
    ds = loaded[0]
    here = save_manifest(make_split(ds), ds, tmp_path / "here.json")
    assert here.read_bytes() == a
    m = json.loads(a)
    assert m["counts"] == {"train": 1260, "val": 180, "test": 360} and len(m["items"]) == 1800
