"""exports.runtime + `python -m exports`: the torch-free deployment side."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import torchvision

from exports.__main__ import main
from exports.export import build_metadata, export_onnx
from exports.runtime import (
    Classifier,
    ModelFormatError,
    ProviderUnavailableError,
    collect_images,
    create_session,
    softmax,
)
from neu import NEU_CLASSES
from neu.image import load_image, normalize
from tests.conftest import run_without_torch, write_image

SIZE = 32
MEAN, STD = [0.45, 0.45, 0.45], [0.25, 0.25, 0.25]


@pytest.fixture(scope="module")
def model():
    # BatchNorm calibrated on image-like inputs (see tests/test_export.py::tiny_model): without
    # it a random model gives every image the same class by a 1e-7 margin.
    torch.manual_seed(0)
    net = torchvision.models.get_model("shufflenet_v2_x0_5", num_classes=6)
    for m in net.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.momentum = None
    pixels = np.random.default_rng(0).integers(0, 256, (8, 1, SIZE, SIZE), dtype=np.uint8)
    net.train()
    with torch.no_grad():
        net(torch.from_numpy(normalize(pixels, MEAN, STD)))
    return net.eval()


@pytest.fixture(scope="module")
def onnx_path(model, tmp_path_factory) -> Path:
    # torchscript: same file contract as dynamo (tests/test_export.py), 10x faster to produce.
    meta = build_metadata(
        model_name="shufflenet_v2_x0_5",
        classes=NEU_CLASSES,
        image_size=SIZE,
        channels=1,
        mean=MEAN,
        std=STD,
        val_accuracy=0.5,
        dataset_hash="d" * 64,
        split_hash="s" * 64,
        split={"seed": 0, "val_fraction": 0.5, "test_fraction": 0.0, "limit_per_class": None},
        weights="none",
    )
    out = tmp_path_factory.mktemp("runtime") / "model.onnx"
    return export_onnx(model, out, metadata=meta, image_size=SIZE, exporter="torchscript")


@pytest.fixture
def image_dir(tmp_path) -> Path:
    """Images of other sizes and modes, a corrupt one, and a companion file."""
    d = tmp_path / "imgs"
    write_image(d / "a.bmp", size=(24, 24), seed=1)
    write_image(d / "b.png", size=(40, 50), mode="RGB", seed=2)
    write_image(d / "sub" / "c.jpg", size=(32, 32), seed=3, fmt="JPEG")
    (d / "broken.bmp").write_bytes(b"BM" + b"\x00" * 10)  # header of a BMP, then nothing
    (d / "notes.txt").write_text("not an image")
    (d / ".hidden.png").write_bytes(b"ignored")
    return d


def torch_classes(model, files) -> list[str]:
    """What the PyTorch model says for these files, through the same preprocessing."""
    pixels = np.stack([load_image(f, size=SIZE, channels=1) for f in files])
    with torch.no_grad():
        logits = model(torch.from_numpy(normalize(pixels, MEAN, STD)))
    return [NEU_CLASSES[i] for i in logits.argmax(1).tolist()]


# --- the model file ------------------------------------------------------------------------


def test_classifier_reads_metadata(onnx_path):
    clf = Classifier(onnx_path)
    assert clf.classes == list(NEU_CLASSES)
    assert (clf.image_size, clf.channels, clf.provider) == (SIZE, 1, "cpu")
    assert clf.info.model == "shufflenet_v2_x0_5" and clf.info.val_accuracy == 0.5
    assert "shufflenet_v2_x0_5" in repr(clf)


@pytest.mark.parametrize(
    "content",
    [b"", b"this is not a model\n", "truncated", "image"],
    ids=["empty", "text", "truncated", "image"],
)
def test_unreadable_model_file(content, onnx_path, tmp_path):
    bad = tmp_path / "bad.onnx"
    if content == "truncated":
        data = onnx_path.read_bytes()
        bad.write_bytes(data[: len(data) // 3])
    elif content == "image":
        write_image(bad, size=(8, 8), fmt="BMP")
    else:
        bad.write_bytes(content)
    with pytest.raises(ModelFormatError, match="is not a readable ONNX model") as info:
        Classifier(bad)
    assert str(bad) in str(info.value) and "bench run" in str(info.value)


def test_missing_model_file(tmp_path):
    with pytest.raises(ModelFormatError, match="does not exist"):
        Classifier(tmp_path / "nope.onnx")


def test_onnx_without_our_metadata(tmp_path):
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 3])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 3])
    graph = onnx.helper.make_graph([onnx.helper.make_node("Identity", ["x"], ["y"])], "g", [x], [y])
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / "identity.onnx"
    onnx.save_model(model, str(path))
    with pytest.raises(ModelFormatError, match="not exported by neu-bench") as info:
        Classifier(path)
    message = str(info.value)
    assert str(path) in message
    for key in ("neu_bench.classes", "neu_bench.image_size", "neu_bench.mean", "neu_bench.std"):
        assert key in message


def test_metadata_that_disagrees_with_the_graph(onnx_path, tmp_path):
    proto = onnx.load(str(onnx_path))
    for p in proto.metadata_props:
        if p.key == "neu_bench.image_size":
            p.value = "64"
    path = tmp_path / "m.onnx"
    onnx.save_model(proto, str(path))
    with pytest.raises(ModelFormatError, match="does not match the metadata"):
        Classifier(path)


# --- providers -----------------------------------------------------------------------------


def test_gpu_provider_fallback_is_detected(onnx_path):
    session, actual = create_session(onnx_path, provider="cuda", strict=False)
    if actual == "cuda":
        pytest.skip("CUDA works here: no fallback to detect")
    assert actual == "cpu" and session.get_providers()[0] == "CPUExecutionProvider"
    with pytest.raises(ProviderUnavailableError, match="--provider cpu"):
        create_session(onnx_path, provider="cuda", strict=True)
    with pytest.raises(ValueError, match="unknown provider"):
        create_session(onnx_path, provider="gpu")


def test_a_missing_gpu_provider_falls_back_whole_with_strict_placement(onnx_path, monkeypatch):
    """strict=False and --strict-providers with a GPU provider this build lacks: a plain CPU
    session, not one with no provider left."""
    import onnxruntime as ort

    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    session, actual = create_session(
        onnx_path, provider="cuda", strict=False, disable_cpu_fallback=True,
        provider_options={"device_id": "0"},
    )  # fmt: skip
    assert actual == "cpu" and session.get_providers() == ["CPUExecutionProvider"]


@pytest.mark.needs_cuda
def test_cuda_provider_runs_and_agrees_with_cpu(onnx_path):
    pixels = np.random.default_rng(0).integers(0, 256, (8, 1, SIZE, SIZE), dtype=np.uint8)
    gpu = Classifier(onnx_path, provider="cuda")
    assert gpu.provider == "cuda"
    np.testing.assert_allclose(
        gpu.predict_arrays(pixels), Classifier(onnx_path).predict_arrays(pixels), atol=1e-3
    )


# --- predicting ----------------------------------------------------------------------------


def test_collect_images(image_dir, tmp_path):
    explicit = tmp_path / "explicit.txt"
    explicit.write_text("x")
    images, skipped = collect_images([image_dir, explicit, tmp_path / "missing.bmp"])
    rel = [p.relative_to(tmp_path).as_posix() for p in images]
    assert rel == [
        "imgs/a.bmp",
        "imgs/b.png",
        "imgs/broken.bmp",
        "imgs/sub/c.jpg",
        "explicit.txt",  # named explicitly: kept, so it gets a per-file error
        "missing.bmp",
    ]
    assert [p.name for p in skipped] == ["notes.txt"]


def test_predict_files_one_bad_image_does_not_stop_the_others(onnx_path, model, image_dir):
    clf = Classifier(onnx_path)
    images, _ = collect_images([image_dir])
    results = clf.predict_files(images + [image_dir / "missing.bmp"], batch_size=2)
    assert [Path(r["file"]).name for r in results] == [
        "a.bmp",
        "b.png",
        "broken.bmp",
        "c.jpg",
        "missing.bmp",
    ]
    errors = {Path(r["file"]).name: r["error"] for r in results if "error" in r}
    assert set(errors) == {"broken.bmp", "missing.bmp"}
    assert "No such file" in errors["missing.bmp"]
    good = [r for r in results if "error" not in r]
    for r in good:
        assert set(r["probabilities"]) == set(NEU_CLASSES)
        assert abs(sum(r["probabilities"].values()) - 1) < 1e-5
        assert r["class"] == max(r["probabilities"], key=r["probabilities"].get)
        assert r["confidence"] == r["probabilities"][r["class"]]
    assert [r["class"] for r in good] == torch_classes(model, [r["file"] for r in good])


def test_predict_arrays_checks_its_input(onnx_path):
    clf = Classifier(onnx_path)
    with pytest.raises(ValueError, match="load_image"):
        clf.predict_arrays(np.zeros((2, 3, SIZE, SIZE), np.uint8))  # model reads grayscale
    with pytest.raises(ValueError, match="uint8"):
        clf.predict_arrays(np.zeros((2, 1, SIZE, SIZE), np.float32))
    assert clf.predict_arrays(np.zeros((0, 1, SIZE, SIZE), np.uint8)).shape == (0, 6)


def test_softmax_is_stable():
    p = softmax(np.array([[1000.0, 0.0], [0.0, 0.0]], dtype=np.float32))
    np.testing.assert_allclose(p, [[1, 0], [0.5, 0.5]], atol=1e-6)


# --- the command line ----------------------------------------------------------------------


def test_cli_predict_json(onnx_path, image_dir, capsys):
    code = main(["predict", str(onnx_path), str(image_dir), "--json", "--batch-size", "3"])
    out, err = capsys.readouterr()
    assert code == 1  # broken.bmp
    lines = [json.loads(line) for line in out.splitlines()]
    assert len(lines) == 4
    for r in lines:
        assert "error" in r or set(r) >= {"file", "class", "probabilities"}
    assert [Path(r["file"]).name for r in lines if "error" in r] == ["broken.bmp"]
    assert "skipped 1 non-image" in err and "1 of 4 images" in err


def test_cli_predict_table_all_good(onnx_path, image_dir, capsys):
    code = main(["predict", str(onnx_path), str(image_dir / "a.bmp"), str(image_dir / "b.png")])
    out, _ = capsys.readouterr()
    assert code == 0
    assert "a.bmp" in out and "b.png" in out
    assert any(c in out for c in NEU_CLASSES)


def test_cli_bad_model_file_exit_2(tmp_path, image_dir, capsys):
    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"garbage")
    assert main(["predict", str(bad), str(image_dir)]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "bench run" in err


def test_cli_predict_runs_without_torch(onnx_path, model, image_dir, tmp_path):
    """`python -m exports predict` in a process where `import torch` fails loudly."""
    proc, attempted = run_without_torch(
        ["-m", "exports", "predict", str(onnx_path), str(image_dir), "--json"], tmp_path
    )
    assert not attempted, f"torch import attempted: {attempted}\n{proc.stderr}"
    assert proc.returncode == 1, proc.stderr  # broken.bmp
    results = [json.loads(line) for line in proc.stdout.splitlines()]
    good = [r for r in results if "error" not in r]
    assert len(good) == 3
    assert [r["class"] for r in good] == torch_classes(model, [r["file"] for r in good])


def test_cli_predict_table_needs_only_onnxruntime_numpy_pillow(
    onnx_path, model, image_dir, tmp_path
):
    """Without torch and without rich (a line PC with onnxruntime only), the table is plain
    text with the same classes; it once failed with ModuleNotFoundError: rich."""
    proc, attempted = run_without_torch(
        ["-m", "exports", "predict", str(onnx_path), str(image_dir)], tmp_path,
        also_block=("rich",),
    )  # fmt: skip
    # rich is tried and found missing (the fallback ran); torch is never even tried.
    assert attempted == ["rich"], f"{attempted}\n{proc.stderr}"
    assert proc.returncode == 1, proc.stderr  # broken.bmp
    lines = proc.stdout.splitlines()
    # b.png is 40x50: its squashed aspect ratio gets a note, so the table has a note column.
    assert lines[1] == "file\tclass\tconfidence\tdecision\tnote"
    rows = [line.split("\t") for line in lines[2:]]
    notes = {Path(r[0]).name: r[4] for r in rows if len(r) > 4}
    assert notes["b.png"].startswith("aspect ratio changed: 40x50") and notes["a.bmp"] == ""
    good = [r for r in rows if not r[1].startswith("error: ")]
    assert len(good) == 3 and len(rows) == 4
    assert [r[1] for r in good] == torch_classes(model, [r[0] for r in good])
    assert all(0 < float(r[2]) <= 1 for r in good)


# --- verify --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def verified_run(model, tmp_path_factory):
    """A miniature NEU-CLS, its seeded split, and the model exported with that provenance."""
    from neu.dataset import load_dataset
    from neu.split import make_split
    from tests.conftest import make_neu_flat

    tmp = tmp_path_factory.mktemp("verify")
    root = make_neu_flat(tmp / "NEU-CLS", per_class=4, size=(40, 40))
    ds = load_dataset(root, image_size=SIZE, cache_dir=False)
    split = make_split(ds, seed=3, val_fraction=0.25, test_fraction=0.5)
    test = torch.as_tensor(split.test)
    inputs = torch.from_numpy(normalize(ds.images[test].numpy(), split.mean, split.std))
    with torch.no_grad():
        top1 = model(inputs).argmax(1).numpy()
    accuracy = float((top1 == ds.labels[split.test]).mean())

    def export(path, test_accuracy=accuracy, val_accuracy=0.5):
        meta = build_metadata(
            model_name="shufflenet_v2_x0_5",
            classes=ds.classes,
            image_size=SIZE,
            channels=ds.channels,
            mean=split.mean,
            std=split.std,
            val_accuracy=val_accuracy,
            test_accuracy=test_accuracy,
            test_images=len(split.test),
            dataset_hash=ds.dataset_hash,
            split_hash=split.split_hash,
            split=split.info(),
            weights="none",
        )
        return export_onnx(model, path, metadata=meta, image_size=SIZE, exporter="torchscript")

    checkpoint = tmp / "best.pt"
    torch.save(
        {
            "format": 1,
            "model": "shufflenet_v2_x0_5",
            "classes": list(ds.classes),
            "num_classes": 6,
            "state_dict": model.state_dict(),
            "image_size": SIZE,
            "channels": ds.channels,
            "mean": list(split.mean),
            "std": list(split.std),
            "val_accuracy": accuracy,
            "dataset_hash": ds.dataset_hash,
            "split_hash": split.split_hash,
            "split": split.info(),
            "weights": "none",
            "seed": 0,
            "epoch": 1,
        },
        checkpoint,
    )
    return {"root": root, "accuracy": accuracy, "export": export, "tmp": tmp, "ckpt": checkpoint}


@pytest.mark.isa
def test_verify_reproduces_accuracy(verified_run, capsys):
    path = verified_run["export"](verified_run["tmp"] / "good.onnx")
    code = main(["verify", str(path), "--data", str(verified_run["root"]), "--json"])
    result = json.loads(capsys.readouterr().out)
    assert code == 0, result
    assert result["passed"] and not result["failures"] and not result["warnings"]
    assert (result["images"], result["n_images"]) == ("test", 12)
    assert result["onnx_accuracy"] == pytest.approx(verified_run["accuracy"])
    assert result["dataset_hash_match"] and result["split_hash_match"]


@pytest.mark.isa
def test_verify_with_checkpoint_runs_parity(verified_run, capsys):
    path = verified_run["export"](verified_run["tmp"] / "good.onnx")
    args = ["verify", str(path), "--data", str(verified_run["root"])]
    code = main([*args, "--checkpoint", str(verified_run["ckpt"]), "--json"])
    result = json.loads(capsys.readouterr().out)
    assert code == 0, result
    assert result["parity"]["passed"] and result["parity"]["n_images"] == 12


def test_verify_fails_on_wrong_recorded_accuracy(verified_run, capsys):
    wrong = min(1.0, verified_run["accuracy"] + 0.5) if verified_run["accuracy"] < 0.5 else 0.0
    path = verified_run["export"](verified_run["tmp"] / "wrong.onnx", test_accuracy=wrong)
    code = main(["verify", str(path), "--data", str(verified_run["root"])])
    out, err = capsys.readouterr()
    assert code == 1
    assert "FAILED" in err and "recorded test_accuracy" in err and "verify: FAILED" in out


def test_verify_fails_on_other_dataset_unless_allowed(verified_run, tmp_path, capsys):
    # It used to warn, check nothing, print "passed" and exit 0.
    from tests.conftest import make_neu_flat

    path = verified_run["export"](verified_run["tmp"] / "good.onnx")
    other = make_neu_flat(tmp_path / "other", per_class=5, size=(40, 40))
    code = main(["verify", str(path), "--data", str(other)])
    out, err = capsys.readouterr()
    assert code == 1 and "verify: FAILED" in out and "passed" not in out
    assert "not the exact dataset" in err and "--allow-other-data" in err

    code = main(["verify", str(path), "--data", str(other), "--allow-other-data", "--json"])
    result = json.loads(capsys.readouterr().out)
    assert code == 0 and result["passed"] and not result["dataset_hash_match"]
    assert result["onnx_accuracy"] is not None
    assert any("ran on" in v for v in result["verified"])
    assert not any("reproduces" in v for v in result["verified"])
    assert any("not the exact dataset" in v for v in result["not_verified"])


def test_verify_fails_on_another_split_of_the_same_data(verified_run, tmp_path, capsys):
    from neu.dataset import load_dataset
    from neu.split import make_split, save_manifest

    path = verified_run["export"](verified_run["tmp"] / "good.onnx")
    ds = load_dataset(verified_run["root"], image_size=SIZE, cache_dir=False)
    other = save_manifest(make_split(ds, seed=99), ds, tmp_path / "other.json")
    args = ["verify", str(path), "--data", str(verified_run["root"]), "--manifest", str(other)]
    assert main(args) == 1
    out, err = capsys.readouterr()
    assert "split hash" in err and "verify: FAILED" in out
    assert main([*args, "--allow-other-data"]) == 0
    out, _ = capsys.readouterr()
    assert "NOT verified: the recorded test_accuracy" in out and "split hash" in out


def test_verify_fails_without_recorded_accuracy(verified_run, capsys):
    path = verified_run["export"](
        verified_run["tmp"] / "none.onnx", test_accuracy=None, val_accuracy=None
    )
    assert main(["verify", str(path), "--data", str(verified_run["root"])]) == 1
    assert "records no val_accuracy" in capsys.readouterr().err
    args = ["verify", str(path), "--data", str(verified_run["root"]), "--allow-other-data"]
    assert main(args) == 0
    assert "NOT verified: the recorded val_accuracy (none)" in capsys.readouterr().out


def test_verify_bad_data_exit_2(verified_run, tmp_path, capsys):
    path = verified_run["export"](verified_run["tmp"] / "good.onnx")
    assert main(["verify", str(path), "--data", str(tmp_path / "empty")]) == 2
    assert "error:" in capsys.readouterr().err


def test_verify_reproduces_a_files_own_figure_exactly(verified_run, capsys):
    # A figure the file states about itself (runtime, batch, count) must be met to the image;
    # the old 2-image tolerance let a file that misstated its accuracy by one image pass.
    from exports.verify import stamp_test_figures

    path = verified_run["export"](verified_run["tmp"] / "stamped.onnx")
    args = ["verify", str(path), "--data", str(verified_run["root"]), "--json"]
    main(args)
    k = json.loads(capsys.readouterr().out)["onnx_correct"]

    def stamp(correct):
        stamp_test_figures(path, {"correct": correct, "images": 12, "accuracy": correct / 12,
                                  "precision": "fp32", "provider": "cpu", "batch_size": 32},
                           {"accuracy": 0.5, "precision": "bf16", "runtime": "torch"})  # fmt: skip

    stamp(k)
    assert main(args) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["accuracy_tolerance"] == 0.0 and "exact" in result["accuracy_tolerance_reason"]
    stamp(k - 1 if k else k + 1)  # one image off: within the old tolerance, now a failure
    assert main(args) == 1
    result = json.loads(capsys.readouterr().out)
    assert any("the file states" in f for f in result["failures"])
    # another batch size than the stamp's: the tolerance applies, and says why
    assert main([*args, "--batch-size", "5"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["accuracy_tolerance"] > 0 and "batch 5" in result["accuracy_tolerance_reason"]
