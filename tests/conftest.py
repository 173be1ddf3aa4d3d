"""Shared fixtures. CUDA-only tests are marked `needs_cuda` and skipped here, centrally.

Real-data tests take the `neu_data` fixture: it reads NEU_DATA, skips when unset, and fails
instead when NEU_REQUIRE_DATA=1 (CI), so CI can never pass by silently skipping them.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

# What `--cpu-class` restricts besides the decision flags (bench.cpu.CPU_CLASSES): the real
# kernels, downward only. ATEN_CPU_CAPABILITY caps torch's vectorised ops and
# ONEDNN_MAX_CPU_ISA caps oneDNN (convolutions, matmuls, bf16): on a machine with more, the
# class's own kernels run; on one with less, the cap is a no-op and torch emulates what is
# missing (bf16 autocast is then slow but still correct). ONNX Runtime has no such switch: its
# kernels stay the machine's.
KERNEL_CAPS = {
    "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"},
    "avx512-bf16": {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_BF16"},
    "amx": {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_AMX"},
}


def pytest_addoption(parser):
    parser.addoption(
        "--cpu-class",
        choices=sorted(KERNEL_CAPS),
        default=None,
        help="Run as on a CPU of this class: sets NEU_BENCH_CPU_FLAGS to the class's flags "
        "and caps torch/oneDNN kernels at it (tox -e isa runs the isa tests for each).",
    )


def pytest_configure(config):
    # Before any test module imports torch: the kernel caps are read when torch loads.
    name = config.getoption("--cpu-class")
    if name:
        from bench.cpu import CPU_CLASSES, FLAGS_OVERRIDE_ENV

        os.environ[FLAGS_OVERRIDE_ENV] = CPU_CLASSES[name]
        os.environ.update(KERNEL_CAPS[name])


def pytest_report_header(config):
    return _cpu_class_line(config)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    # Also under -q, where the header is not printed: the log names the class it ran as.
    terminalreporter.write_line(_cpu_class_line(config))


def _cpu_class_line(config) -> str:
    from bench import cpu

    real = cpu.cpu_class(cpu._probed_flags())
    name = config.getoption("--cpu-class")
    if not name:
        return (
            f"cpu class: {real} (this machine: {cpu.isa_label(cpu.cpu_isa(cpu._probed_flags()))})"
        )
    caps = ", ".join(f"{k}={v}" for k, v in KERNEL_CAPS[name].items())
    return (
        f"cpu class: {name} (simulated on a {real} machine: "
        f"{cpu.FLAGS_OVERRIDE_ENV}={os.environ[cpu.FLAGS_OVERRIDE_ENV]}; {caps})"
    )


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA; none on this machine")
    for item in items:
        if "needs_cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def neu_data() -> Path:
    value = os.environ.get("NEU_DATA")
    required = os.environ.get("NEU_REQUIRE_DATA") == "1"
    if not value:
        if required:
            pytest.fail("NEU_REQUIRE_DATA=1 but NEU_DATA is not set: point it at NEU-CLS")
        pytest.skip("real-data test: set NEU_DATA to the NEU-CLS folder")
    path = Path(value)
    if not path.is_dir():
        message = f"NEU_DATA={value} is not a folder"
        if required:
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    # Tests never read or pollute the user's decode cache unless they ask for it.
    monkeypatch.setenv("NEU_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "neu-cache"))


def write_image(path: Path, *, size=(24, 24), mode="L", seed=0, fmt=None) -> Path:
    """A small random image; different seeds give different pixels."""
    rng = np.random.default_rng(seed)
    w, h = size
    if mode == "L":
        arr = rng.integers(0, 256, (h, w), dtype=np.uint8)
    else:
        arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr, mode).save(path, format=fmt)
    return path


def make_neu_flat(root: Path, *, per_class=6, size=(24, 24), ext=".bmp") -> Path:
    """A miniature NEU-CLS: Cr_1.bmp ... Sc_<per_class>.bmp, distinct pixels per file."""
    from neu import NEU_CODES

    for ci, code in enumerate(NEU_CODES):
        for n in range(1, per_class + 1):
            write_image(root / f"{code}_{n}{ext}", size=size, seed=1000 * ci + n)
    return root


@pytest.fixture
def tiny_neu(tmp_path) -> Path:
    return make_neu_flat(tmp_path / "NEU-CLS")


def make_class_folders(root: Path, counts: dict[str, int], *, size=(24, 24), ext=".png") -> Path:
    """One sub-folder per class, `counts[name]` distinct images in each (ImageFolder layout)."""
    for ci, (name, n) in enumerate(counts.items()):
        for k in range(n):
            write_image(root / name / f"img_{k}{ext}", size=size, seed=5000 + 100 * ci + k)
    return root


def export_plain_onnx(model, path: Path, image_size: int) -> Path:
    """A bare ONNX file (no neu-bench metadata) with a dynamic batch, for speed tests.

    The TorchScript exporter is used because it is fast; the product's exporter
    (exports.export) is tested in test_export.py.
    """
    import warnings

    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # legacy exporter notice
        torch.onnx.export(
            model.eval(),
            (torch.randn(1, 3, image_size, image_size),),
            str(path),
            dynamo=False,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}},
        )
    return path


REPO = Path(__file__).resolve().parents[1]


def run_without_torch(args: list[str], tmp_path: Path, *, timeout=120, also_block=()):
    """Run `python ARGS` in a process where importing torch or torchvision (and the modules
    in `also_block`) fails loudly.

    Returns (completed process, attempted) where `attempted` lists the blocked modules the
    code tried to import: a deployment path must leave it empty.
    """
    blocker = tmp_path / "no_torch"
    marker = tmp_path / "torch_import_attempted"
    for name in ("torch", "torchvision", *also_block):
        (blocker / name).mkdir(parents=True, exist_ok=True)
        (blocker / name / "__init__.py").write_text(
            f"open({str(marker)!r}, 'a').write({name!r} + '\\n')\n"
            f"raise ImportError('{name} is not available in this deployment test')\n"
        )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(blocker), str(REPO)])}
    proc = subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=timeout,
    )
    attempted = marker.read_text().split() if marker.exists() else []
    return proc, attempted
