"""Nothing stated that was not checked: split manifests and split flags, the figures each
exported or variant file states about itself, and what `exports verify` holds them against."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from bench.config import ConfigError, build_configs
from exports.__main__ import main as exports_main
from exports.fidelity import compare_logits
from exports.figures import own_figures, stamp_figures
from exports.quantize import int8_settings, quantize_int8, update_metadata
from exports.runtime import Classifier, deployment_warning
from neu.dataset import DatasetError, load_dataset
from neu.image import normalize
from neu.split import load_manifest, make_split, save_manifest
from tests.conftest import make_neu_flat, run_without_torch
from tests.test_deployment import measured  # noqa: F401  (fixture)
from tests.test_runtime import SIZE, model, verified_run  # noqa: F401  (fixtures)

# --- split manifests -----------------------------------------------------------------------


@pytest.fixture
def manifest(tmp_path):
    root = make_neu_flat(tmp_path / "d", per_class=6, size=(24, 24))
    ds = load_dataset(root, image_size=24, cache_dir=False)
    split = make_split(ds, seed=0, limit_per_class=5)
    return root, ds, save_manifest(split, ds, tmp_path / "split.json")


def _edit(path, **fields):
    m = json.loads(path.read_text())
    m.update(fields)
    path.write_text(json.dumps(m))


@pytest.mark.parametrize(
    "field, value",
    [("mean", [0.9, 0.9, 0.9]), ("std", [0.01, 0.01, 0.01]), ("channels", 3),
     ("classes", ["a", "b", "c", "d", "e", "f"])],
)  # fmt: skip
def test_an_edited_manifest_field_that_changes_training_is_refused(manifest, field, value):
    # The mean/std edit used to be trained with and reported as "from the training split".
    _, ds, path = manifest
    assert load_manifest(path, ds).split_hash  # as written: accepted
    _edit(path, **{field: value})
    with pytest.raises(DatasetError, match=rf"split.json states {field} .* but the "):
        load_manifest(path, ds)


def test_a_manifest_of_another_image_size_is_refused_naming_the_flag(manifest):
    root, _, path = manifest
    with pytest.raises(DatasetError, match="states image_size 24 .* give 32") as e:
        load_manifest(path, load_dataset(root, image_size=32, cache_dir=False))
    assert "--image-size 24" in str(e.value)


def test_split_flags_that_disagree_with_split_are_refused(manifest):
    _, _, path = manifest
    with pytest.raises(ConfigError, match=r"--limit-per-class 30 disagrees with --split .*"
                       r"made with --limit-per-class 5"):  # fmt: skip
        build_configs({"split": str(path), "limit_per_class": 30})
    with pytest.raises(ConfigError, match="--split-seed 7 disagrees"):
        build_configs({"split": str(path), "split_seed": 7, "val_fraction": 0.1})
    # Unset flags take the manifest's values, so results and report show the split used.
    recipe, _ = build_configs({"split": str(path), "quick": True})  # --quick says 20/class
    assert (recipe.limit_per_class, recipe.split_seed, recipe.val_fraction) == (5, 0, 0.1)
    same, _ = build_configs({"split": str(path), "limit_per_class": 5})  # agreeing: fine
    assert same.limit_per_class == 5


def test_bench_run_with_split_reports_the_split_used_and_the_checkpoint_size(manifest, tmp_path):
    from bench.__main__ import main as bench_main

    root, _, path = manifest
    out = tmp_path / "run"
    argv = ["run", "--models", "shufflenet_v2_x0_5", "--data", str(root), "--out", str(out),
            "--weights", "none", "--image-size", "24", "--epochs", "1", "--batch-size", "8",
            "--threads", "1", "--no-speed", "--export", "best", "--split", str(path)]  # fmt: skip
    assert bench_main([*argv, "--val-fraction", "0.3"]) == 2  # refused before any work
    assert not (out / "results.json").exists()
    assert bench_main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["recipe"]["limit_per_class"] == 5
    report = (out / "report.md").read_text()
    assert "limit_per_class=5" in report
    # --no-speed: the checkpoint exists, so its size is in the report.
    size = results["models"]["shufflenet_v2_x0_5"]["checkpoint_size_mb"]
    assert size > 0 and f"| {size:.1f} |" in report
    # The export states its own figures (its parity run on the test images).
    info = Classifier(out / "exports" / "shufflenet_v2_x0_5.onnx").info
    fid = info.fidelity
    assert fid["judged"] and fid["passed"] and fid["runtime"] == "onnxruntime"
    assert fid["n_images"] == info.test_images and not info.rejected


# --- files state their own figures ---------------------------------------------------------


def _int8_file(rows, tmp):
    """(file, row) of an INT8 file and the row that judged it: the chosen copy, else (no
    candidate passed, so none was kept) the first candidate's own file."""
    r8 = rows.get("ort_int8")
    if r8 and r8.get("candidate") and not r8.get("skipped"):
        return tmp / "variants" / "m.int8.onnx", r8
    r8 = next(r for r in rows.values() if r.get("candidate"))
    return tmp / "variants" / f"m.int8.{r8['candidate']}.onnx", r8


def test_variant_files_carry_their_own_figures(measured):  # noqa: F811
    rows, _, tmp = measured
    path, r8 = _int8_file(rows, tmp)
    int8 = Classifier(path).info
    assert int8.fidelity["judged"] and int8.fidelity["passed"] == r8["passed"]
    assert int8.test_accuracy == pytest.approx(r8["test_accuracy"])  # its own, not the parent's
    assert int8.fidelity["agreement"] == pytest.approx(r8["agreement"])
    assert int8.fidelity["provider"] == "cpu" and int8.fidelity["n_images"] == 40
    assert bool(int8.rejected) != r8["passed"]
    fp32 = Classifier(tmp / "m.onnx").info
    assert fp32.fidelity["passed"] and fp32.fidelity["rule"].startswith("strict parity")
    fp16 = Classifier(tmp / "variants" / "m.fp16.onnx").info
    assert fp16.fidelity == {"judged": False, "reason": rows["ort_fp16"]["skipped"]}
    assert fp16.test_accuracy is None
    assert "was never judged on images" in deployment_warning(fp16, "m.fp16.onnx")
    assert deployment_warning(fp32) is None


def _flip(logits, rows):
    """The same logits with the top-1 class moved to the next class on `rows`."""
    out = logits.copy()
    for i in rows:
        out[i, (logits[i].argmax() + 1) % logits.shape[1]] = logits[i].max() + 10
    return out


def test_a_rejected_file_is_marked_and_predict_warns(measured, tmp_path):  # noqa: F811
    rows, _, tmp = measured
    path = shutil.copy(_int8_file(rows, tmp)[0], tmp_path / "m.int8.onnx")
    ref = np.random.default_rng(0).normal(size=(100, 6)).astype(np.float32)
    fid = compare_logits(ref, _flip(ref, [0, 1]), ref.argmax(1), precision="int8")
    assert not fid.passed  # 98% agreement < 99%
    stamp_figures(path, own_figures(fid.to_dict(), precision="int8", runtime="onnxruntime",
                                    provider="cpu", source="test split"))  # fmt: skip
    info = Classifier(path).info
    assert info.rejected.startswith("top-1 agreement 98.00% < 99% (2/100 images flipped)")
    assert info.test_accuracy == pytest.approx(0.98)
    img = tmp_path / "a.png"
    from PIL import Image

    Image.new("L", (SIZE, SIZE), 7).save(img)
    proc, attempted = run_without_torch(["-m", "exports", "predict", str(path), str(img)],
                                        tmp_path)  # fmt: skip
    assert proc.returncode == 0 and attempted == []
    assert "was REJECTED by its fidelity check (top-1 agreement 98.00%" in proc.stderr
    assert "test accuracy 0.9800" in proc.stderr


# --- verify checks what the file states ----------------------------------------------------


def test_verify_fails_on_a_wrong_test_image_count_or_precision(verified_run, tmp_path, capsys):  # noqa: F811
    good = verified_run["export"](tmp_path / "good.onnx")
    args = ["--data", str(verified_run["root"])]
    assert exports_main(["verify", str(good), *args]) == 0
    out = capsys.readouterr().out
    assert "verified: test_images=12 matches" in out and "verified: precision=fp32" in out
    assert "NOT verified: fidelity: the file states no figures of its own" in out
    for key, value, why in [
        ("test_images", "999", "states test_images=999 but its test split has 12 images"),
        ("precision", "int8", "states precision=int8 but its graph computes in fp32"),
    ]:
        bad = shutil.copy(good, tmp_path / f"{key}.onnx")
        update_metadata(bad, {key: value})
        assert exports_main(["verify", str(bad), *args]) == 1
        captured = capsys.readouterr()
        assert why in captured.err and "verify: FAILED" in captured.out


def int8_copy(verified_run, tmp_path):  # noqa: F811
    """(INT8 copy of the verified run's FP32 export, calibrated on its training images; the
    test labels; the copy's fidelity against the FP32 file on the test images)."""
    from neu.split import make_split as split_of

    fp32 = verified_run["export"](tmp_path / "m.onnx")
    ds = load_dataset(verified_run["root"], image_size=SIZE, cache_dir=False)
    split = split_of(ds, seed=3, val_fraction=0.25, test_fraction=0.5)
    pixels = ds.images.numpy()
    x = normalize(pixels[split.test], split.mean, split.std)
    int8 = tmp_path / "m.int8.onnx"
    calib = normalize(pixels[split.train], split.mean, split.std)
    quantize_int8(fp32, int8, calib, int8_settings(vnni=False, machine="x86_64"))
    labels = ds.labels[split.test]
    fid = compare_logits(Classifier(fp32).logits(x), Classifier(int8).logits(x), labels,
                         precision="int8").to_dict()  # fmt: skip
    return int8, labels, fid


@pytest.mark.isa  # INT8 numerics: run once per CPU class
def test_verify_holds_a_variant_to_its_own_accuracy_exactly(verified_run, tmp_path, capsys):  # noqa: F811
    int8, labels, fid = int8_copy(verified_run, tmp_path)
    assert Classifier(int8).info.test_accuracy is None  # not the parent's any more
    stamp_figures(int8, own_figures(fid, precision="int8", runtime="onnxruntime",
                                    provider="cpu", source="test split"))  # fmt: skip
    args = ["verify", "--data", str(verified_run["root"]), "--json"]
    code = exports_main([args[0], str(int8), *args[1:]])
    result = json.loads(capsys.readouterr().out)
    assert result["accuracy_rule"].startswith("exact: measured by onnxruntime cpu")
    assert code == (0 if fid["passed"] else 1), result
    assert any("fidelity.test_accuracy" in v and "exactly" in v for v in result["verified"])
    # One image more than it achieved: the same runtime on the same images says otherwise.
    off = dict(fid, test_accuracy=fid["test_accuracy"] + 1 / len(labels), passed=True,
               failures=[])  # fmt: skip
    stamp_figures(int8, own_figures(off, precision="int8", runtime="onnxruntime",
                                    provider="cpu", source="test split"))  # fmt: skip
    assert exports_main([args[0], str(int8), *args[1:]]) == 1
    failures = json.loads(capsys.readouterr().out)["failures"]
    assert any("recorded test_accuracy" in f and "exact" in f for f in failures), failures


@pytest.mark.isa  # INT8 numerics: run once per CPU class
def test_verify_checkpoint_judges_an_int8_file_by_fidelity_not_fp32_parity(
    verified_run,  # noqa: F811
    tmp_path,
    capsys,
):
    # FP32 parity's logit tolerance fails every INT8 file; verify --checkpoint used to apply it.
    int8, labels, fid = int8_copy(verified_run, tmp_path)
    # Stated as passed, so that verify reaches the checkpoint check whatever this tiny model's
    # INT8 copy really does; that check then measures it again.
    stamp_figures(int8, own_figures(dict(fid, passed=True, failures=[]), precision="int8",
                                    runtime="onnxruntime", provider="cpu",
                                    source="test split"))  # fmt: skip
    argv = ["verify", str(int8), "--data", str(verified_run["root"]),
            "--checkpoint", str(verified_run["ckpt"])]  # fmt: skip
    code = exports_main([*argv, "--json"])
    result = json.loads(capsys.readouterr().out)
    p = result["parity"]
    assert p["check"] == "fidelity" and p["precision"] == "int8" and p["n_images"] == len(labels)
    assert p["agreement"] == pytest.approx(fid["agreement"])  # torch FP32 = the FP32 file here
    assert p["rule"].startswith("accuracy delta >=")
    assert not any("max |delta logit|" in f for f in result["failures"])
    assert code == (0 if p["passed"] else 1), result
    assert any("int8 fidelity against" in v for v in result["verified"])
    exports_main(argv)
    assert "int8 fidelity vs checkpoint: agreement" in capsys.readouterr().out
