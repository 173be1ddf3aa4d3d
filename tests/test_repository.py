"""exports.repository: a Triton / OVMS model repository, checked against Triton's own schema."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from exports.quantize import int8_settings, quantize_int8
from exports.repository import (
    RepositoryError,
    Serving,
    add_model,
    max_batch_from_curve,
    queue_delay_from_latency,
    serving_from_rows,
    to_pbtxt,
    validate_config,
    write_repository,
)
from exports.runtime import METADATA_PREFIX, Classifier
from neu.image import normalize
from tests.conftest import REPO, run_without_torch
from tests.test_rawpixel import MEAN, SIZE, STD, _export, pixels

_TYPES = {onnx.TensorProto.UINT8: "TYPE_UINT8", onnx.TensorProto.FLOAT: "TYPE_FP32"}


@pytest.fixture(scope="module")
def plain(tmp_path_factory) -> Path:
    return _export(tmp_path_factory.mktemp("plain"), 1)


@pytest.fixture(scope="module")
def int8(plain) -> Path:
    out = plain.with_name("shufflenet_v2_x0_5.int8.onnx")
    quantize_int8(plain, out, normalize(pixels(12, 1, seed=1), MEAN, STD),
                  int8_settings(vnni=False, machine="x86_64"))  # fmt: skip
    return out


def parse_config(folder: Path) -> model_config_pb2.ModelConfig:
    config = model_config_pb2.ModelConfig()
    text_format.Parse((folder / "config.pbtxt").read_text(), config)  # unknown field: ParseError
    return config


def check_against_graph(folder: Path) -> model_config_pb2.ModelConfig:
    """config.pbtxt names, types and dims == the ONNX graph of the newest version."""
    config = parse_config(folder)
    versions = sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit())
    proto = onnx.load(str(folder / str(versions[-1]) / "model.onnx"))
    assert config.name == folder.name and config.platform == "onnxruntime_onnx"
    for entries, values in ((config.input, proto.graph.input), (config.output, proto.graph.output)):
        assert [e.name for e in entries] == [v.name for v in values]
        for e, v in zip(entries, values, strict=True):
            t = v.type.tensor_type
            assert model_config_pb2.DataType.Name(e.data_type) == _TYPES[t.elem_type]
            assert list(e.dims) == [d.dim_value for d in t.shape.dim][1:]  # batch axis left out
            assert t.shape.dim[0].dim_param  # ...because it is the dynamic one
    classes = json.loads(
        {p.key: p.value for p in proto.metadata_props}[METADATA_PREFIX + "classes"]
    )
    assert config.output[0].label_filename == "labels.txt"
    assert (folder / "labels.txt").read_text().splitlines() == classes
    return config


def test_repository_layout_and_config_match_the_graph(plain, int8, tmp_path):
    repo = tmp_path / "repo"
    written = write_repository([plain, int8], repo)
    assert [w["folder"] for w in written] == ["shufflenet_v2_x0_5", "shufflenet_v2_x0_5_int8"]
    for w in written:
        folder = repo / w["folder"]
        assert sorted(p.name for p in folder.iterdir()) == ["1", "config.pbtxt", "labels.txt"]
        config = check_against_graph(folder)
        assert model_config_pb2.DataType.Name(config.input[0].data_type) == "TYPE_UINT8"
        assert list(config.input[0].dims) == [SIZE, SIZE]
        assert config.max_batch_size == 64  # no throughput curve for a bare file
        assert config.HasField("dynamic_batching")
        delay = config.dynamic_batching.max_queue_delay_microseconds
        params = {k: v.string_value for k, v in config.parameters.items()}
        assert 100 <= delay <= 100_000 and "measured" in params["neu_bench.max_queue_delay_basis"]
        assert [g.kind for g in config.instance_group] == [
            model_config_pb2.ModelInstanceGroup.KIND_CPU
        ]
        assert params["neu_bench.input_kind"] == "raw"
        assert json.loads(params["neu_bench.raw_parity"])["passed"]
        assert float(params["neu_bench.val_accuracy"]) == 0.875
        assert params["neu_bench.precision"] == w["precision"]
        assert w["config_validated_with_tritonclient"] is True
    # The served file is a raw-pixel model that predicts what the plain one does.
    x = pixels(8, 1, seed=9)
    served = Classifier(repo / "shufflenet_v2_x0_5" / "1" / "model.onnx")
    np.testing.assert_allclose(served.predict_arrays(x), Classifier(plain).predict_arrays(x),
                               atol=1e-6)  # fmt: skip


def test_plain_input_and_gpu_kind(plain, tmp_path):
    (w,) = write_repository([plain], tmp_path / "repo", raw=False, gpu=True)
    config = check_against_graph(tmp_path / "repo" / w["folder"])
    assert model_config_pb2.DataType.Name(config.input[0].data_type) == "TYPE_FP32"
    assert list(config.input[0].dims) == [3, SIZE, SIZE]
    assert config.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU


def test_versions_increment_and_are_never_overwritten(plain, tmp_path):
    repo = tmp_path / "repo"
    first = add_model(repo, plain)
    v1 = (repo / "shufflenet_v2_x0_5" / "1" / "model.onnx").read_bytes()
    again = add_model(repo, plain)  # the same file: nothing new to serve
    assert (first["version"], again["version"], again["reused_version"]) == (1, 1, True)
    redone = tmp_path / "redone" / "shufflenet_v2_x0_5.onnx"  # re-exported: only the date differs
    redone.parent.mkdir()
    proto = onnx.load(str(plain))
    for p in proto.metadata_props:
        if p.key == METADATA_PREFIX + "export_date":
            p.value = "2030-01-01T00:00:00+00:00"
    onnx.save(proto, str(redone))
    assert redone.read_bytes() != plain.read_bytes()
    assert add_model(repo, redone)["version"] == 1
    changed = tmp_path / "shufflenet_v2_x0_5.onnx"
    proto = onnx.load(str(plain))
    props = {p.key: p.value for p in proto.metadata_props}
    props[METADATA_PREFIX + "val_accuracy"] = "0.9"  # a new export of the model
    del proto.metadata_props[:]
    onnx.helper.set_model_props(proto, props)
    onnx.save(proto, str(changed))
    second = add_model(repo, changed)
    assert second["version"] == 2 and not second["reused_version"]
    assert (repo / "shufflenet_v2_x0_5" / "1" / "model.onnx").read_bytes() == v1
    assert (
        parse_config(repo / "shufflenet_v2_x0_5").parameters["neu_bench.val_accuracy"].string_value
        == "0.9"
    )
    assert add_model(repo, changed)["version"] == 2


def test_a_killed_writers_staging_folder_is_removed_by_the_next(plain, tmp_path):
    repo = tmp_path / "repo"
    add_model(repo, plain)
    left = repo / ".shufflenet_v2_x0_5.k1ll3d"  # what SIGKILL leaves: finally never ran
    left.mkdir()
    (left / "model.onnx").write_bytes(plain.read_bytes())
    other = repo / ".another_model.k1ll3d"  # another model's: not this writer's to judge
    other.mkdir()
    assert add_model(repo, plain)["version"] == 1
    assert not left.exists() and other.is_dir()
    assert sorted(p.name for p in repo.iterdir()) == [".another_model.k1ll3d", "shufflenet_v2_x0_5"]


def test_existing_paths_with_other_content_are_refused(plain, tmp_path):
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "todo.txt").write_text("keep me")
    with pytest.raises(RepositoryError, match="todo.txt.*nothing was overwritten"):
        write_repository([plain], notes)
    assert sorted(p.name for p in notes.iterdir()) == ["todo.txt"]

    repo = tmp_path / "repo"
    (repo / "shufflenet_v2_x0_5").mkdir(parents=True)
    (repo / "shufflenet_v2_x0_5" / "config.pbtxt").write_text('name: "someone else"\n')
    (repo / "shufflenet_v2_x0_5" / "weights.bin").write_bytes(b"x")
    with pytest.raises(RepositoryError, match="weights.bin.*refusing"):
        add_model(repo, plain)
    assert (repo / "shufflenet_v2_x0_5" / "config.pbtxt").read_text() == 'name: "someone else"\n'
    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(RepositoryError, match="not a folder"):
        write_repository([plain], afile)
    # The command line says so and exits 2; nothing is written.
    proc = subprocess.run(
        [sys.executable, "-m", "exports", "repository", str(plain), "--out", str(notes)],
        capture_output=True, text=True, cwd=REPO, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2 and "todo.txt" in proc.stderr
    assert sorted(p.name for p in notes.iterdir()) == ["todo.txt"]


def test_schema_validation_rejects_unknown_fields():
    good = to_pbtxt({"name": "m", "platform": "onnxruntime_onnx", "max_batch_size": 8})
    assert validate_config(good)
    with pytest.raises(RepositoryError, match="ModelConfig"):
        validate_config(good + "\nmax_batch: 8\n")


def test_serving_figures_from_the_measured_curve_and_latency():
    assert max_batch_from_curve({1: 100.0, 32: 900.0, 64: 910.0}) == 32
    assert max_batch_from_curve({1: 500.0, 32: 400.0}) == 1  # batching did not pay here
    assert max_batch_from_curve({1: 100.0}) is None
    assert queue_delay_from_latency(1.03) == 515
    assert queue_delay_from_latency(0.01) == 100 and queue_delay_from_latency(1e4) == 100_000
    rows = [
        {"model": "m", "runtime": "onnxruntime", "provider": "cpu", "precision": "fp32",
         "batch_size": b, "latency_ms_p50": ms, "throughput_img_s": ips}
        for b, ms, ips in ((1, 2.0, 500.0), (32, 40.0, 800.0))
    ] + [{"model": "m", "runtime": "torch", "provider": "cpu", "precision": "fp32",
          "batch_size": 1, "latency_ms_p50": 9.0, "throughput_img_s": 111.0}]  # fmt: skip
    s = serving_from_rows(rows, model="m", precision="fp32", gpu=False)
    assert (s.max_batch_size, s.queue_delay_us, s.instance_kind) == (32, 1000, "KIND_CPU")
    assert "2 ms" in s.queue_delay_basis and "800 img/s" in s.max_batch_basis
    assert serving_from_rows(rows, model="m", precision="int8", gpu=False) is None
    assert Serving().max_batch_size == 64


def test_bench_flag_refuses_a_repository_path_with_other_content(tmp_path):
    from bench.config import ConfigError, RunOptions

    (tmp_path / "x.txt").write_text("x")
    with pytest.raises(ConfigError, match="--export-repository .*x.txt"):
        RunOptions(export_repository=str(tmp_path))
    RunOptions(export_repository=str(tmp_path / "new"), embed_preprocessing=True)


@pytest.mark.slow
@pytest.mark.real_data
def test_acceptance_bench_run_repository_predicts_like_the_plain_export(neu_data, tmp_path):
    """A tiny `bench run --export best --export-repository REPO`; then, without torch, the
    served raw-pixel file and the plain export classify 24 real NEU images the same way."""
    repo, out = tmp_path / "REPO", tmp_path / "run"
    cmd = [sys.executable, "-m", "bench", "run", "--models", "shufflenet_v2_x1_0", "--epochs",
           "1", "--image-size", "64", "--limit-per-class", "10", "--weights", "none",
           "--no-speed", "--export", "best", "--export-repository", str(repo), "--out", str(out),
           "--data", str(neu_data)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    folders = [p for p in repo.iterdir() if p.is_dir()]
    assert [m["folder"] for m in results["repository"]["models"]] == [p.name for p in folders]
    for folder in folders:
        check_against_graph(folder)
    served = repo / "shufflenet_v2_x1_0" / "1" / "model.onnx"
    plain = out / "exports" / "shufflenet_v2_x1_0.onnx"
    images = sorted(neu_data.glob("*.bmp"))[::75][:24]
    assert len(images) == 24
    answers = {}
    for path in (plain, served):
        proc, attempted = run_without_torch(
            ["-m", "exports", "predict", str(path), *map(str, images), "--json"], tmp_path
        )
        assert proc.returncode == 0, proc.stderr
        assert attempted == []
        answers[path] = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(answers[served]) == 24
    for a, b in zip(answers[plain], answers[served], strict=True):
        assert a["class"] == b["class"]
        assert (
            max(abs(a["probabilities"][c] - b["probabilities"][c]) for c in a["probabilities"])
            <= 1e-5
        )
    raw = results["repository"]["models"][0]["raw_parity"]
    assert raw["passed"] and raw["images"] == results["exports"][0]["n_images"]
    assert raw["images_source"] == "test split" and raw["top1_disagreements"] == 0
    report = (out / "report.md").read_text()
    assert "### Model repository" in report and "| shufflenet_v2_x1_0 | 1 | raw fp32 |" in report


def test_serving_a_raw_pixel_file_keeps_its_parity_figures(plain, tmp_path):
    from exports.rawpixel import embed_preprocessing

    raw = tmp_path / "shufflenet_v2_x0_5.raw.onnx"
    embed_preprocessing(plain, raw, pixels=pixels(10, 1, seed=2), source="test split")
    (w,) = write_repository([raw], tmp_path / "repo")
    assert w["raw_parity"]["images"] == 10 and w["raw_parity"]["images_source"] == "test split"
    assert (tmp_path / "repo" / w["folder"] / "1" / "model.onnx").read_bytes() == raw.read_bytes()


def test_a_failed_model_leaves_the_repository_as_it_was(plain, tmp_path, monkeypatch):
    import exports.rawpixel as rp

    repo = tmp_path / "repo"
    add_model(repo, plain)
    before = sorted(str(p.relative_to(repo)) for p in repo.rglob("*"))
    monkeypatch.setattr(
        rp, "check_raw_parity", lambda *a, **k: {"passed": False, "failures": ["x"]}
    )
    changed = tmp_path / "other" / "m.onnx"
    changed.parent.mkdir()
    proto = onnx.load(str(plain))
    props = {p.key: p.value for p in proto.metadata_props}
    props[METADATA_PREFIX + "model"] = "another_model"
    del proto.metadata_props[:]
    onnx.helper.set_model_props(proto, props)
    onnx.save(proto, str(changed))
    with pytest.raises(rp.RawParityError):
        add_model(repo, changed)
    assert sorted(str(p.relative_to(repo)) for p in repo.rglob("*")) == before
    monkeypatch.undo()
    assert add_model(repo, changed)["folder"] == "another_model"  # and it can still be written


def test_run_folder_serves_its_raw_copy_with_the_runs_figures(plain, int8, tmp_path):
    import shutil

    from exports.rawpixel import embed_preprocessing

    run = tmp_path / "run"
    (run / "exports").mkdir(parents=True)
    for f in (plain, int8):
        shutil.copy(f, run / "exports" / f.name)
    raw = embed_preprocessing(
        run / "exports" / plain.name, pixels=pixels(6, 1), source="test split"
    )
    rows = [
        {"model": "shufflenet_v2_x0_5", "runtime": "onnxruntime", "provider": "cpu",
         "precision": prec, "batch_size": b, "latency_ms_p50": ms, "throughput_img_s": ips}
        for prec in ("fp32", "int8")
        for b, ms, ips in ((1, 4.0, 250.0), (32, 40.0, 800.0))
    ]  # fmt: skip
    entry = {
        "model": "shufflenet_v2_x0_5", "path": f"exports/{plain.name}", "parity_passed": True,
        "raw_pixel": {**raw, "path": f"exports/{Path(raw['path']).name}"},
        "recommended": {"kind": "onnx", "path": f"exports/{int8.name}", "precision": "int8"},
    }  # fmt: skip
    results = {"exports": [entry], "speed": rows, "environment": {"cuda_available": False}}
    (run / "results.json").write_text(json.dumps(results))
    written = write_repository([run], tmp_path / "repo")
    assert [w["folder"] for w in written] == ["shufflenet_v2_x0_5", "shufflenet_v2_x0_5_int8"]
    assert written[0]["source"].endswith(".raw.onnx") and written[0]["raw_parity"]["images"] == 6
    assert written[1]["raw_parity"]["images_source"].startswith("synthetic")
    for w in written:
        config = check_against_graph(tmp_path / "repo" / w["folder"])
        assert (config.max_batch_size, config.dynamic_batching.max_queue_delay_microseconds) == (
            32,
            2000,
        )
    with pytest.raises(RepositoryError, match="results.json"):
        write_repository([tmp_path / "repo"], tmp_path / "other")
