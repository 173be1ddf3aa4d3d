"""The training-precision decision: every (device, capability, --amp) cell, with faked CPU flags."""

import pytest
import torch

from bench import amp
from bench.config import ConfigError, Recipe, build_configs
from tests.test_cpu import AVX2_EPYC, SAPPHIRE_RAPIDS

AVX512_BF16_ONLY = frozenset({"avx2", "avx512f", "avx512_bf16"})  # Cooper Lake: no AMX
AMX_ONLY = frozenset({"avx2", "amx_tile", "amx_bf16"})
NONE = frozenset()

# (device, cuda native bf16, cpu flags, --amp) -> precision, words the reason must contain
TABLE = [
    ("cuda", True, NONE, "auto", "bf16", "natively"),
    ("cuda", False, NONE, "auto", "fp16", "GradScaler"),
    ("cuda", True, NONE, "bf16", "bf16", "natively"),
    ("cuda", False, NONE, "bf16", "bf16", "emulated"),
    ("cuda", True, NONE, "fp16", "fp16", "GradScaler"),
    ("cuda", False, NONE, "fp16", "fp16", "GradScaler"),
    ("cuda", True, NONE, "off", "fp32", "--amp off"),
    ("cpu", False, SAPPHIRE_RAPIDS, "auto", "bf16", "AMX-BF16"),
    ("cpu", False, AMX_ONLY, "auto", "bf16", "AMX-BF16"),
    ("cpu", False, AVX512_BF16_ONLY, "auto", "bf16", "AVX512_BF16"),
    ("cpu", False, AVX2_EPYC, "auto", "fp32", "emulated and slower"),
    ("cpu", False, NONE, "auto", "fp32", "emulated and slower"),
    ("cpu", True, AVX2_EPYC, "auto", "fp32", "emulated and slower"),  # CUDA flag ignored on CPU
    ("cpu", False, SAPPHIRE_RAPIDS, "bf16", "bf16", "AMX-BF16"),
    ("cpu", False, AVX2_EPYC, "bf16", "bf16", "emulated"),
    ("cpu", False, SAPPHIRE_RAPIDS, "fp16", "fp16", "AVX512_FP16"),
    ("cpu", False, AVX2_EPYC, "fp16", "fp16", "emulated"),
    ("cpu", False, SAPPHIRE_RAPIDS, "off", "fp32", "--amp off"),
    ("cpu", False, AVX2_EPYC, "off", "fp32", "--amp off"),
]


@pytest.mark.parametrize("device, cuda_bf16, flags, requested, precision, why", TABLE)
def test_decision_table(device, cuda_bf16, flags, requested, precision, why):
    got, reason = amp.choose_precision(device, cuda_bf16, flags, requested)
    assert got == precision
    assert why in reason
    if requested != "auto":
        assert reason.startswith(f"--amp {requested}")  # an explicit choice is named as such


def test_every_cell_is_covered():
    cells = {(d, r) for d, _, _, r, _, _ in TABLE}
    assert cells == {(d, r) for d in ("cuda", "cpu") for r in amp.AMP_CHOICES}


def test_unknown_choice_names_the_flag():
    with pytest.raises(ValueError, match="--amp"):
        amp.choose_precision("cpu", False, AVX2_EPYC, "int8")


@pytest.mark.parametrize("value", ["fp8", "true", ""])
def test_recipe_rejects_bad_amp_naming_the_flag(value):
    with pytest.raises(ConfigError, match="--amp"):
        Recipe(amp=value)


def test_amp_flag_and_default():
    assert Recipe().amp == "auto"
    recipe, _ = build_configs({"amp": "bf16"})
    assert recipe.amp == "bf16"


@pytest.mark.isa
def test_this_cpu_resolves_consistently_with_its_flags():
    p = amp.resolve_precision(torch.device("cpu"), "auto")
    assert p.name == ("bf16" if amp.cpu.has_bf16_hardware() else "fp32")
    assert p.device_type == "cpu" and p.reason


@pytest.mark.isa
@pytest.mark.parametrize("name", ["fp32", "bf16", "fp16"])
def test_precision_backend_trains_a_step_on_cpu(name):
    # The autocast region really computes in the chosen dtype, and fp16 gets a live scaler.
    p = amp.Precision(name, "test", "cpu")
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.LazyLinear(2)
    )
    x, y = torch.randn(2, 3, 8, 8), torch.tensor([0, 1])
    model(x)  # materialise the lazy layer
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = p.grad_scaler()
    assert scaler.is_enabled() == (name == "fp16")
    before = model[0].weight.detach().clone()
    with p.autocast():
        out = model(x)
    assert out.dtype == {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[name]
    scaler.scale(torch.nn.functional.cross_entropy(out.float(), y)).backward()
    scaler.step(opt)
    scaler.update()
    assert not torch.equal(before, model[0].weight)
    assert all(p.dtype == torch.float32 for p in model.parameters())  # master weights stay fp32
