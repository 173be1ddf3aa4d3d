"""pytest-benchmark suite (`tox -e bench` = pytest tests/benchmarks --benchmark-only).

Micro-benchmarks that catch performance regressions in CI: one eager forward per default
architecture and one ONNX Runtime session run, at 64 px, batch 1, on CPU. They are NOT the
reported speed numbers (those come from bench.measure with time-bounded runs at the real image
size); 64 px keeps the whole suite under ~2 minutes on 2 cores. The augmented training batch
benchmark belongs to the data suite.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision

from tests.conftest import export_plain_onnx

IMAGE_SIZE = 64
ARCHS = ("resnet50", "vgg16_bn", "densenet121", "shufflenet_v2_x1_0")
# Heavier models get fewer rounds; pedantic() runs exactly rounds x iterations calls.
ROUNDS = {"resnet50": 30, "vgg16_bn": 20, "densenet121": 20, "shufflenet_v2_x1_0": 60}


def build(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return torchvision.models.get_model(name, weights=None, num_classes=6).eval()


def example_input(batch: int = 1) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    return torch.randn(batch, 3, IMAGE_SIZE, IMAGE_SIZE, generator=gen)


@pytest.mark.benchmark(group=f"torch-forward-{IMAGE_SIZE}px-b1")
@pytest.mark.parametrize("arch", ARCHS)
def test_torch_forward(benchmark, arch):
    model, x = build(arch), example_input()
    benchmark.extra_info.update(
        arch=arch, image_size=IMAGE_SIZE, batch_size=1, threads=torch.get_num_threads()
    )

    def forward():
        with torch.inference_mode():
            return model(x)

    out = benchmark.pedantic(forward, rounds=ROUNDS[arch], iterations=1, warmup_rounds=2)
    assert out.shape == (1, 6)


@pytest.fixture(scope="module")
def shufflenet_onnx(tmp_path_factory):
    path = tmp_path_factory.mktemp("bench-onnx") / "shufflenet_v2_x1_0.onnx"
    return export_plain_onnx(build("shufflenet_v2_x1_0"), path, IMAGE_SIZE)


@pytest.mark.benchmark(group=f"ort-run-{IMAGE_SIZE}px-b1")
def test_ort_session_run(benchmark, shufflenet_onnx):
    from exports.runtime import create_session

    threads = torch.get_num_threads()  # same thread count as the torch benchmarks
    session, provider = create_session(shufflenet_onnx, provider="cpu", threads=threads)
    x = example_input().numpy().astype(np.float32)
    benchmark.extra_info.update(
        arch="shufflenet_v2_x1_0", image_size=IMAGE_SIZE, batch_size=1, threads=threads,
        provider=provider,
    )  # fmt: skip
    out = benchmark.pedantic(
        session.run, args=(None, {"input": x}), rounds=200, iterations=1, warmup_rounds=5
    )
    assert out[0].shape == (1, 6)
