"""Where ONNX Runtime ran the nodes: profile counting, the table's warning, --strict-providers.

No GPU is needed: a recorded-style profile stands for a CUDA session in which the CUDA
provider lacked one op, and a fake InferenceSession checks what --strict-providers asks of ORT.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bench.measure.placement import nodes_by_provider_from_profile
from bench.report.tables import placement_note
from tests.conftest import export_plain_onnx

# The shape of an ORT profile of a CUDA session where the CUDA EP could not run NonMaxSuppression:
# fences carry no provider, every node's kernel event does, and a node run twice counts once.
CUDA_PROFILE_WITH_A_CPU_NODE = [
    {"cat": "Session", "name": "model_run", "args": {}},
    {"cat": "Node", "name": "Conv_0_fence_before", "args": {"op_name": "Conv"}},
    {"cat": "Node", "name": "Conv_0_kernel_time",
     "args": {"op_name": "Conv", "provider": "CUDAExecutionProvider"}},
    {"cat": "Node", "name": "Relu_1_kernel_time",
     "args": {"op_name": "Relu", "provider": "CUDAExecutionProvider"}},
    {"cat": "Node", "name": "MemcpyToHost_kernel_time",
     "args": {"op_name": "MemcpyToHost", "provider": "CUDAExecutionProvider"}},
    {"cat": "Node", "name": "NonMaxSuppression_2_kernel_time",
     "args": {"op_name": "NonMaxSuppression", "provider": "CPUExecutionProvider"}},
    {"cat": "Node", "name": "Conv_0_kernel_time",
     "args": {"op_name": "Conv", "provider": "CUDAExecutionProvider"}},
]  # fmt: skip


def test_profile_counts_each_node_once_under_the_provider_that_ran_it():
    assert nodes_by_provider_from_profile(CUDA_PROFILE_WITH_A_CPU_NODE) == {"cpu": 1, "cuda": 3}


def test_gpu_row_with_cpu_nodes_says_so_in_the_speed_table():
    from bench.report.tables import speed_table_rows

    row = {"model": "m", "runtime": "onnxruntime", "provider": "cuda", "precision": "fp32",
           "batch_size": 1, "threads": 2, "latency_ms_p50": 1.0, "latency_ms_p90": 1.0,
           "latency_ms_p99": 1.0, "throughput_img_s": 1.0, "n": 3,
           "nodes_by_provider": nodes_by_provider_from_profile(CUDA_PROFILE_WITH_A_CPU_NODE)}  # fmt: skip
    _, (cells,) = speed_table_rows({"speed": [row]})
    assert cells[2] == "cuda (1 of 4 nodes on cpu)"
    all_on_cpu = {**row, "provider": "cpu", "nodes_by_provider": {"cpu": 4}}
    assert placement_note(all_on_cpu) == ""


def test_cpu_session_rows_count_their_nodes(tmp_path):
    from bench import measure as speed

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    path = export_plain_onnx(model, tmp_path / "m.onnx", 16)
    backend = speed.OnnxRuntime.open(path, image_size=16, threads=1)
    nodes = backend.provenance()["nodes_by_provider"]
    assert set(nodes) == {"cpu"} and nodes["cpu"] >= 2  # conv(+relu fused), pool, flatten


class FakeSession:
    """Records what create_session asked ORT for; `fail` mimics a placement refusal."""

    calls: list = []
    fail = False

    def __init__(self, path, sess_options, providers):
        FakeSession.calls.append((sess_options, providers))
        if FakeSession.fail:
            raise RuntimeError("Could not find an implementation for NonMaxSuppression(11)")

    def get_providers(self):
        return [FakeSession.calls[-1][1][0]]


def test_strict_providers_disables_cpu_fallback(monkeypatch, tmp_path):
    import onnxruntime as ort

    from exports.runtime import ProviderUnavailableError, create_session

    path = tmp_path / "m.onnx"
    path.write_bytes(b"not read by the fake session")
    monkeypatch.setattr(ort, "get_available_providers",
                        lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])  # fmt: skip
    monkeypatch.setattr(ort, "InferenceSession", FakeSession)
    FakeSession.calls, FakeSession.fail = [], False

    _, actual = create_session(path, provider="cuda", disable_cpu_fallback=True)
    options, providers = FakeSession.calls[-1]
    assert actual == "cuda"
    assert options.get_session_config_entry("session.disable_cpu_ep_fallback") == "1"
    assert providers == ["CUDAExecutionProvider"]  # ORT rejects CPU EP + disabled fallback

    create_session(path, provider="cuda")  # default: mixed placement allowed, CPU listed
    assert FakeSession.calls[-1][1] == ["CUDAExecutionProvider", "CPUExecutionProvider"]

    FakeSession.fail = True
    with pytest.raises(ProviderUnavailableError, match="--strict-providers"):
        create_session(path, provider="cuda", disable_cpu_fallback=True)
