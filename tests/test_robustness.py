"""The corruption benchmark: neu.corrupt, neu.heldout, bench.measure.robustness, `bench robustness`."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bench.config import ConfigError, RunOptions
from bench.measure import robustness as R
from neu import corrupt as C
from neu.heldout import load_heldout
from neu.layout import DatasetError
from tests.conftest import make_neu_flat, run_without_torch


def _image(seed=0, size=200) -> np.ndarray:
    """A textured gray image like a NEU one (smooth background + speckle), uint8 (1, H, W)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    base = 120 + 30 * np.sin(xx / 7.0) * np.cos(yy / 11.0)
    return np.clip(base + rng.normal(0, 12, (size, size)), 0, 255).astype(np.uint8)[None]


# --- neu.corrupt -----------------------------------------------------------------------------


@pytest.mark.parametrize("cond", C.parse_plan("full"), ids=lambda c: c.key)
def test_corruption_is_deterministic(cond):
    x = _image()
    a = C.corrupt(x, cond, content_hash="h1", seed=0)
    b = C.corrupt(x, cond, content_hash="h1", seed=0)
    assert a.dtype == np.uint8 and a.shape == x.shape
    assert a.tobytes() == b.tobytes()


def test_draws_depend_on_content_hash_and_seed():
    x, cond = _image(), C.Condition("snr", 30)
    base = C.corrupt(x, cond, content_hash="h1", seed=0)
    assert base.tobytes() != C.corrupt(x, cond, content_hash="h2", seed=0).tobytes()
    assert base.tobytes() != C.corrupt(x, cond, content_hash="h1", seed=1).tobytes()


@pytest.mark.parametrize("snr_db", C.SNR_LEVELS_DB)
def test_realised_snr_within_0_2_db_before_clipping(snr_db):
    x = _image(seed=snr_db)
    rng = C._rng("test", "h", C.Condition("snr", snr_db), 0)
    noisy = C.add_noise_at_snr(x, snr_db, rng)
    noise_power = np.mean((noisy - x.astype(np.float64)) ** 2)
    realised = 10 * np.log10(C.signal_power(x) / noise_power)
    assert abs(realised - snr_db) < 0.2
    # the power is the mean of squared pixel values, not the variance
    assert C.signal_power(x) == pytest.approx(np.mean(x.astype(np.float64) ** 2))


def _grad_energy(y):
    y = y.astype(np.float64)
    return np.mean(np.diff(y, axis=1) ** 2) + np.mean(np.diff(y, axis=2) ** 2)


def _illumination_swing(y):
    # std of 20x20 block means: a smooth gain field moves whole regions apart
    b = y[0].astype(np.float64).reshape(10, 20, 10, 20).mean(axis=(1, 3))
    return b.std()


STATISTIC = {  # corruption -> (statistic, +1 if it grows with severity, -1 if it shrinks)
    "snr": (lambda y, x: np.var(y.astype(np.float64) - x), +1),
    "gaussian_noise": (lambda y, x: np.var(y.astype(np.float64)), +1),
    "motion_blur": (lambda y, x: _grad_energy(y), -1),
    "defocus_blur": (lambda y, x: _grad_energy(y), -1),
    "brightness": (lambda y, x: y.mean(), +1),
    "contrast": (lambda y, x: y.std(), -1),
    "uneven_illumination": (lambda y, x: _illumination_swing(y), +1),
    "jpeg": (lambda y, x: np.abs(y.astype(np.float64) - x).mean(), +1),
}


@pytest.mark.parametrize("name", [*C.CORRUPTIONS, "snr"])
def test_severities_are_monotone_in_a_simple_statistic(name):
    x = _image(seed=3)
    fn, sign = STATISTIC[name]
    levels = sorted(C.SNR_LEVELS_DB, reverse=True) if name == "snr" else C.SEVERITIES
    values = [fn(C.corrupt(x, C.Condition(name, lv), content_hash="h"), x) for lv in levels]
    assert all(sign * (b - a) > 0 for a, b in zip(values, values[1:], strict=False)), values


def test_plan_parsing():
    plan = C.parse_plan("snr,s3")
    assert plan[0] == C.CLEAN
    assert [c.key for c in plan[1:5]] == ["snr:db50", "snr:db40", "snr:db30", "snr:db20"]
    assert {c.corruption for c in plan[5:]} == set(C.CORRUPTIONS)
    assert {c.level for c in plan[5:]} == {3}
    assert len(C.parse_plan("full")) == 1 + 4 + 5 * len(C.CORRUPTIONS)
    assert C.parse_plan("none") == []
    assert [c.key for c in C.parse_plan("jpeg:2,snr:30")] == ["clean", "jpeg:s2", "snr:db30"]


@pytest.mark.parametrize(
    "spec, words",
    [("blur", ["--robustness", "'blur'", "motion_blur", "s1..s5"]),
     ("s7", ["--robustness", "severity '7'", "1, 2, 3, 4, 5"]),
     ("jpeg:9", ["--robustness", "severity '9'"]),
     ("snr:35", ["--robustness", "50, 40, 30, 20"]),
     ("none,snr", ["--robustness", "none"])],
)  # fmt: skip
def test_bad_robustness_flag_names_flag_and_choices(spec, words):
    with pytest.raises(ConfigError) as e:
        RunOptions(robustness=spec)
    for w in words:
        assert w in str(e.value)


def test_bad_flag_fails_before_any_work(tmp_path, capsys):
    from bench.__main__ import main

    code = main(["robustness", str(tmp_path / "missing.onnx"), "--robustness", "fog"])
    assert code == 2
    err = capsys.readouterr().out
    assert "--robustness" in err and "'fog'" in err and "gaussian_noise" in err


# --- held-out images, the engine -------------------------------------------------------------


@pytest.fixture
def run_split(tmp_path):
    """A miniature NEU-CLS (40 px originals), its split and manifest."""
    from neu.dataset import load_dataset
    from neu.split import make_split, save_manifest

    root = make_neu_flat(tmp_path / "NEU-CLS", per_class=5, size=(40, 40))
    ds = load_dataset(root, image_size=32, cache_dir=False)
    split = make_split(ds, seed=0, val_fraction=0.2, test_fraction=0.4)
    manifest = save_manifest(split, ds, tmp_path / "split.json")
    return root, ds, split, manifest


def test_heldout_is_the_test_split_at_original_resolution(run_split):
    root, ds, split, manifest = run_split
    h = load_heldout(manifest, root, channels=1, classes=ds.classes)
    assert sorted(h.files) == sorted(ds.files[i] for i in split.test)
    assert not set(h.files) & {ds.files[i] for i in [*split.train, *split.val]}
    assert all(p.shape == (1, 40, 40) for p in h.pixels)  # before the 32 px resize


def test_class_mismatch_is_listed(run_split):
    root, ds, _, manifest = run_split
    classes = list(ds.classes)
    classes[0] = "oil_stain"
    with pytest.raises(DatasetError) as e:
        load_heldout(manifest, root, channels=1, classes=classes)
    msg = str(e.value)
    assert "missing ['oil_stain']" in msg and "'crazing'" in msg and "--data" in msg


class Recorder:
    """A fake predictor's logits: records every batch, answers from the input's mean."""

    def __init__(self, fail_after=None):
        self.batches, self.calls, self.fail_after = [], 0, fail_after

    def __call__(self, x):
        self.calls += 1
        if self.fail_after is not None and self.calls > self.fail_after:
            raise KeyboardInterrupt  # a kill mid-robustness
        self.batches.append(x.copy())
        m = x.mean(axis=(1, 2, 3))
        return np.stack([m * k for k in range(6)], axis=1)


def _predictor(name, logits, ds, split, snr_only=False):
    return R.Predictor(model=name, variant="fp32", engine="fake", image_size=32, channels=1,
                       mean=split.mean, std=split.std, classes=list(ds.classes),
                       fingerprint=name, logits=logits, snr_only=snr_only)  # fmt: skip


def test_two_models_see_the_same_images_and_training_images_are_never_corrupted(
    run_split, tmp_path, monkeypatch
):
    root, ds, split, manifest = run_split
    h = load_heldout(manifest, root, channels=1, classes=ds.classes)
    seen = []
    real = C.corrupt
    monkeypatch.setattr(
        C,
        "corrupt",
        lambda px, c, *, content_hash, seed=0: (
            seen.append(content_hash),
            real(px, c, content_hash=content_hash, seed=seed),
        )[1],
    )
    a, b = Recorder(), Recorder()
    plan = C.parse_plan("snr,s3")
    preds = [_predictor("a", a, ds, split), _predictor("b", b, ds, split)]
    rec = R.benchmark(plan, h, preds, tmp_path / "out", seed=0, log=lambda m: None)
    assert len(a.batches) == len(b.batches) == len(plan)
    assert all(np.array_equal(x, y) for x, y in zip(a.batches, b.batches, strict=True))
    test_hashes = {ds.file_hashes[i] for i in split.test}
    train_hashes = {ds.file_hashes[i] for i in [*split.train, *split.val]}
    assert set(seen) == test_hashes and not set(seen) & train_hashes
    # corrupted once per condition, shared by both predictors
    assert len(seen) == len(plan) * len(h)
    rows = rec["rows"]
    assert len(rows) == 2 * len(plan)
    assert {"model", "variant", "corruption", "severity", "snr_db", "test_images", "correct",
            "accuracy", "accuracy_ci95_low", "accuracy_ci95_high",
            "agreement_with_clean"} <= set(rows[0])  # fmt: skip
    assert rec["verdict"]["most_robust"] in ("a", "b")
    assert len(rec["comparisons"]) == len(plan) - 1


def test_clean_condition_reproduces_the_models_usual_pixels(run_split):
    root, ds, split, manifest = run_split
    h = load_heldout(manifest, root, channels=1, classes=ds.classes)
    clean = [C.resize(C.corrupt(p, C.CLEAN, content_hash=k), 32)
             for p, k in zip(h.pixels, h.hashes, strict=True)]  # fmt: skip
    want = {ds.files[i]: ds.images[i].numpy() for i in split.test}
    assert all(np.array_equal(c, want[f]) for c, f in zip(clean, h.files, strict=True))


def test_resume_after_a_kill_evaluates_only_what_is_missing(run_split, tmp_path):
    root, ds, split, manifest = run_split
    h = load_heldout(manifest, root, channels=1, classes=ds.classes)
    plan = C.parse_plan("snr,s3")
    out = tmp_path / "out"
    killed = Recorder(fail_after=4)
    with pytest.raises(KeyboardInterrupt):
        R.evaluate(plan, h, [_predictor("a", killed, ds, split)], out / "robustness",
                   seed=0, log=lambda m: None)  # fmt: skip
    state = json.loads((out / "robustness" / "a__fp32.json").read_text())
    assert len(state["answers"]) == 4
    again = Recorder()
    answers = R.evaluate(plan, h, [_predictor("a", again, ds, split)], out / "robustness",
                         seed=0, log=lambda m: None)  # fmt: skip
    assert again.calls == len(plan) - 4  # one batch per condition: only the missing ones
    full = Recorder()
    ref = R.evaluate(plan, h, [_predictor("a", full, ds, split)], tmp_path / "fresh",
                     seed=0, log=lambda m: None)  # fmt: skip
    assert {k: v.tolist() for k, v in answers["a__fp32"].items()} == {
        k: v.tolist() for k, v in ref["a__fp32"].items()
    }


def test_variants_get_the_snr_levels_only(run_split, tmp_path):
    root, ds, split, manifest = run_split
    h = load_heldout(manifest, root, channels=1, classes=ds.classes)
    plan = C.parse_plan("snr,s3")
    rec = R.benchmark(plan, h, [_predictor("a", Recorder(), ds, split, snr_only=True)],
                      tmp_path, seed=0, log=lambda m: None)  # fmt: skip
    assert {r["corruption"] for r in rec["rows"]} == {"clean", "snr"}


# --- bench robustness MODEL.onnx, torch-free -------------------------------------------------


def test_bench_robustness_on_an_onnx_file_runs_without_torch(run_split, tmp_path):
    import torch
    import torchvision

    from exports.export import build_metadata, export_onnx

    root, ds, split, manifest = run_split
    torch.manual_seed(0)
    net = torchvision.models.get_model("shufflenet_v2_x0_5", num_classes=6).eval()
    meta = build_metadata(
        model_name="shufflenet_v2_x0_5", classes=ds.classes, image_size=32, channels=1,
        mean=split.mean, std=split.std, val_accuracy=0.5, dataset_hash=ds.dataset_hash,
        split_hash=split.split_hash, split=split.info(), weights="none",
    )  # fmt: skip
    onnx = export_onnx(net, tmp_path / "exports" / "m.onnx", metadata=meta, image_size=32,
                       exporter="torchscript")  # fmt: skip
    out = tmp_path / "rb"
    args = ["-m", "bench", "robustness", str(onnx), "--data", str(root), "--robustness",
            "snr,jpeg:3", "--out", str(out)]  # fmt: skip
    proc, attempted = run_without_torch(args, tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert attempted == []
    res = json.loads((out / "results.json").read_text())
    rows = res["robustness"]["rows"]
    assert [r["condition"] for r in rows] == ["clean", "snr:db50", "snr:db40", "snr:db30",
                                              "snr:db20", "jpeg:s3"]  # fmt: skip
    assert all(r["test_images"] == len(split.test) for r in rows)
    assert (out / "robustness.csv").read_text().startswith("model,variant,corruption")
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64") == 3  # heatmap, SNR plot, examples
    # a second run answers from the saved state: same numbers
    proc2, _ = run_without_torch(args, tmp_path)
    assert proc2.returncode == 0
    assert json.loads((out / "results.json").read_text())["robustness"]["rows"] == rows


# --- --augment-corruptions -------------------------------------------------------------------


def test_augment_batch_is_seeded_and_corrupts_about_half():
    batch = np.stack([_image(seed=s, size=48) for s in range(40)])
    a, b = C.augment_batch(batch, seed=5), C.augment_batch(batch, seed=5)
    assert a.tobytes() == b.tobytes()
    changed = sum(not np.array_equal(x, y) for x, y in zip(a, batch, strict=True))
    assert 10 <= changed <= 30
    assert C.augment_batch(batch, seed=6).tobytes() != a.tobytes()


def test_augment_corruptions_is_off_by_default_and_keeps_old_fingerprints():
    from bench.cli.run import _recipe_dict
    from bench.config import Recipe

    assert Recipe().augment_corruptions is False
    assert "augment_corruptions" not in _recipe_dict(Recipe())
    assert _recipe_dict(Recipe(augment_corruptions=True))["augment_corruptions"] is True


def test_augment_corruptions_changes_training_batches_only():
    import torch

    from bench.train.folds import FoldData

    class Stub:  # just what FoldData.augment reads
        def __init__(self, on):
            from bench.config import Recipe

            self.recipe = Recipe(image_size=32, augment_corruptions=on)
            self.mean, self.std, self.memory_format = (0.5,) * 3, (0.2,) * 3, None

    raw = torch.from_numpy(np.stack([_image(seed=s, size=32) for s in range(8)]))
    outs = {}
    for on in (False, True):
        g = torch.Generator().manual_seed(0)
        outs[on] = FoldData.augment(Stub(on), raw, g)
    assert not torch.equal(outs[False], outs[True])
