"""`python -m exports client`: KServe v2 / Triton HTTP requests, checked by a loopback stub.

The stub is a tiny v2 server on 127.0.0.1 (an ephemeral port, stopped after the module): it
answers metadata and config from the repository's config.pbtxt, checks every inference
request against the v2 protocol's JSON form, and runs the served raw-pixel file with
onnxruntime, so the client's answers can be compared with `exports predict`'s.
"""

from __future__ import annotations

import json
import math
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from google.protobuf import json_format, text_format
from tritonclient.grpc import model_config_pb2

from exports.repository import write_repository
from neu.image import load_image
from tests.conftest import run_without_torch, write_image
from tests.test_rawpixel import SIZE, _export

V2_DATATYPES = {"BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32",
                "INT64", "FP16", "FP32", "FP64", "BYTES", "BF16"}  # fmt: skip


def check_v2_request(body: dict) -> None:
    """The v2 protocol's $inference_request JSON object (KServe predict protocol v2)."""
    assert set(body) <= {"id", "parameters", "inputs", "outputs"}, body.keys()
    assert isinstance(body["inputs"], list) and body["inputs"]
    for t in body["inputs"]:
        assert set(t) <= {"name", "shape", "datatype", "parameters", "data"}
        assert isinstance(t["name"], str) and t["datatype"] in V2_DATATYPES
        assert all(isinstance(d, int) and d >= 0 for d in t["shape"])
        flat = np.asarray(t["data"]).reshape(-1)
        assert flat.size == math.prod(t["shape"]), "data must hold every element, row-major"
    for o in body.get("outputs", []):
        assert set(o) <= {"name", "parameters"} and isinstance(o["name"], str)


class Stub:
    def __init__(self, repo: Path):
        self.repo, self.requests, self.sessions = repo, [], {}

    def config(self, model: str):
        path = self.repo / model / "config.pbtxt"
        if not path.is_file():
            return None
        return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())

    def metadata(self, model: str) -> dict:
        c = self.config(model)

        def tensor(t):
            kind = model_config_pb2.DataType.Name(t.data_type).removeprefix("TYPE_")
            return {"name": t.name, "shape": [-1, *t.dims], "datatype": kind}

        return {"name": model, "versions": ["1"], "platform": c.platform,
                "inputs": [tensor(t) for t in c.input], "outputs": [tensor(t) for t in c.output]}  # fmt: skip

    def infer(self, model: str, body: dict) -> dict:
        check_v2_request(body)
        self.requests.append(body)
        if model not in self.sessions:
            path = str(self.repo / model / "1" / "model.onnx")
            self.sessions[model] = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        (t,) = body["inputs"]
        dtype = {"UINT8": np.uint8, "FP32": np.float32}[t["datatype"]]
        x = np.asarray(t["data"], dtype=dtype).reshape(t["shape"])
        y = self.sessions[model].run(None, {t["name"]: x})[0]
        return {"model_name": model, "outputs": [
            {"name": "logits", "datatype": "FP32", "shape": list(y.shape),
             "data": y.reshape(-1).tolist()}]}  # fmt: skip


def _handler(stub: Stub):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # keep pytest's output clean
            pass

        def _reply(self, code: int, obj=None):
            data = b"" if obj is None else json.dumps(obj).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            parts = self.path.strip("/").split("/")
            if parts == ["v2", "health", "live"]:
                return self._reply(200)
            if len(parts) >= 3 and parts[:2] == ["v2", "models"]:
                config = stub.config(parts[2])
                if config is None:
                    return self._reply(400, {"error": f"Request for unknown model: '{parts[2]}'"})
                if parts[3:] == ["config"]:
                    return self._reply(200, json_format.MessageToDict(
                        config, preserving_proto_field_name=True))  # fmt: skip
                return self._reply(200, stub.metadata(parts[2]))
            self._reply(404, {"error": "not found"})

        def do_POST(self):
            parts = self.path.strip("/").split("/")
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            assert "Inference-Header-Content-Length" not in self.headers  # pure JSON, no binary
            self._reply(200, stub.infer(parts[2], body))

    return Handler


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("client")
    plain = _export(tmp, 1)
    repo = tmp / "repo"
    write_repository([plain], repo)
    write_repository([plain], tmp / "plainrepo", raw=False)
    stub = Stub(repo)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(stub))  # loopback only
    server.timeout = 5
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield {"url": f"http://127.0.0.1:{server.server_address[1]}", "stub": stub,
               "plain": plain, "repo": repo, "tmp": tmp}  # fmt: skip
    finally:
        server.shutdown()
        server.server_close()


def _client(served, tmp_path, *args):
    return run_without_torch(["-m", "exports", "client", served["url"], *args], tmp_path)


def test_client_answers_like_predict_and_sends_v2_json(served, tmp_path):
    imgs = [write_image(tmp_path / f"i{k}.png", size=(50, 44), seed=k) for k in range(3)]
    served["stub"].requests.clear()
    proc, attempted = _client(served, tmp_path, "shufflenet_v2_x0_5", *map(str, imgs),
                              "--json", "--batch-size", "2")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert attempted == []  # the client needs no torch either
    got = [json.loads(line) for line in proc.stdout.splitlines()]
    ref, _ = run_without_torch(
        ["-m", "exports", "predict", str(served["plain"]), *map(str, imgs), "--json"], tmp_path
    )
    want = [json.loads(line) for line in ref.stdout.splitlines()]
    assert [g["file"] for g in got] == [w["file"] for w in want]
    for g, w in zip(got, want, strict=True):
        assert (g["class"], g["index"]) == (w["class"], w["index"])
        for c, p in w["probabilities"].items():
            assert abs(g["probabilities"][c] - p) <= 1e-6

    bodies = served["stub"].requests
    assert [b["inputs"][0]["shape"] for b in bodies] == [[2, SIZE, SIZE], [1, SIZE, SIZE]]
    sent = np.concatenate([np.asarray(b["inputs"][0]["data"]).reshape(-1) for b in bodies])
    pixels = np.stack([load_image(p, size=SIZE, channels=1)[0] for p in imgs])
    np.testing.assert_array_equal(sent, pixels.reshape(-1))  # raw pixels, resized like training
    assert all(b["inputs"][0]["datatype"] == "UINT8" for b in bodies)
    assert all(b["inputs"][0]["name"] == "pixels" for b in bodies)
    assert all([o["name"] for o in b["outputs"]] == ["logits"] for b in bodies)


def test_client_table_names_the_classes(served, tmp_path):
    img = write_image(tmp_path / "a.png", size=(SIZE, SIZE), seed=5)
    proc, _ = _client(served, tmp_path, "shufflenet_v2_x0_5", str(img))
    assert proc.returncode == 0, proc.stderr
    ref, _ = run_without_torch(["-m", "exports", "predict", str(served["plain"]), str(img),
                                "--json"], tmp_path)  # fmt: skip
    assert json.loads(ref.stdout)["class"] in proc.stdout


def test_client_without_a_server_fails_at_once_naming_the_url(tmp_path):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    img = write_image(tmp_path / "a.png", seed=1)
    url = f"http://127.0.0.1:{port}"
    started = time.perf_counter()
    proc, _ = run_without_torch(["-m", "exports", "client", url, "m", str(img)], tmp_path)
    assert proc.returncode == 2
    assert url in proc.stderr and "no inference server" in proc.stderr
    assert time.perf_counter() - started < 30


def test_client_refuses_unknown_and_float_input_models(served, tmp_path):
    img = write_image(tmp_path / "a.png", seed=1)
    proc, _ = _client(served, tmp_path, "nope", str(img))
    assert proc.returncode == 2 and "'nope'" in proc.stderr
    served["stub"].repo = served["tmp"] / "plainrepo"
    try:
        proc, _ = _client(served, tmp_path, "shufflenet_v2_x0_5", str(img))
    finally:
        served["stub"].repo = served["repo"]
    assert proc.returncode == 2 and "UINT8" in proc.stderr and "FP32" in proc.stderr


DOC = Path(__file__).resolve().parents[1] / "docs" / "serving.md"


def test_documented_raw_pixel_example_needs_no_preprocessing_code(served, tmp_path):
    text = DOC.read_text()
    start = text.index("```python\nimport json, sys") + len("```python\n")
    code = text[start : text.index("```", start)]
    assert len([line for line in code.splitlines() if line.strip()]) <= 11  # 3 imports + 8
    script = tmp_path / "raw_example.py"
    script.write_text(code)
    raw = served["repo"] / "shufflenet_v2_x0_5" / "1" / "model.onnx"
    img = write_image(tmp_path / "a.png", size=(60, 52), seed=7)
    proc, attempted = run_without_torch([str(script), str(raw), str(img)], tmp_path)
    assert proc.returncode == 0 and attempted == [], proc.stderr
    name, prob = proc.stdout.split()
    ref, _ = run_without_torch(["-m", "exports", "predict", str(served["plain"]), str(img),
                                "--json"], tmp_path)  # fmt: skip
    want = json.loads(ref.stdout)
    assert name == want["class"] and abs(float(prob) - want["confidence"]) <= 1e-6


def test_documented_curl_body_is_a_v2_request_the_server_answers(served, tmp_path):
    import subprocess
    import sys
    import urllib.request

    text = DOC.read_text()
    start = text.index("python3 -c '") + len("python3 -c '")
    snippet = text[start : text.index("' Cr_1.bmp", start)].replace("200, 200", f"{SIZE}, {SIZE}")
    img = write_image(tmp_path / "Cr_1.bmp", size=(70, 70), seed=3, fmt="BMP")
    body = subprocess.run([sys.executable, "-c", snippet, str(img)], capture_output=True,
                          text=True, check=True, timeout=60).stdout  # fmt: skip
    check_v2_request(json.loads(body))
    url = f"{served['url']}/v2/models/shufflenet_v2_x0_5/infer"
    req = urllib.request.Request(url, data=body.encode(), method="POST",
                                 headers={"Content-Type": "application/json"})  # fmt: skip
    with urllib.request.urlopen(req, timeout=10) as r:
        reply = json.loads(r.read())
    logits = np.asarray(reply["outputs"][0]["data"], np.float32)
    from exports.runtime import Classifier

    clf = Classifier(served["repo"] / "shufflenet_v2_x0_5" / "1" / "model.onnx")
    want = clf.predict_arrays(load_image(img, size=SIZE, channels=1)[None])[0]
    assert int(logits.argmax()) == int(want.argmax())
