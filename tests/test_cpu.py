import pytest
import torch

from bench import cpu

AVX2_EPYC = frozenset("fpu sse sse2 avx avx2 fma bmi2".split())
SAPPHIRE_RAPIDS = frozenset(
    "avx2 fma avx512f avx512bw avx512_vnni avx512_bf16 avx512_fp16 amx_tile amx_bf16 amx_int8".split()
)


def test_isa_reports_each_flag_from_the_given_set():
    isa = cpu.cpu_isa(AVX2_EPYC)
    assert isa["avx2"] is True and isa["fma"] is True
    assert isa["avx512f"] is False and isa["amx_bf16"] is False
    assert set(cpu.ISA_FLAGS) <= set(isa)


def test_bf16_and_vnni_decisions_follow_the_flags():
    assert not cpu.has_bf16_hardware(AVX2_EPYC)
    assert not cpu.has_vnni(AVX2_EPYC)
    assert cpu.has_bf16_hardware(SAPPHIRE_RAPIDS)
    assert cpu.has_vnni(SAPPHIRE_RAPIDS)
    assert cpu.has_vnni(frozenset({"avx2", "avx_vnni"}))
    assert cpu.has_bf16_hardware(frozenset({"amx_bf16"}))


def test_labels_name_the_instruction_sets():
    assert cpu.isa_label(cpu.cpu_isa(AVX2_EPYC)) == "AVX2"
    assert cpu.isa_label(cpu.cpu_isa(SAPPHIRE_RAPIDS)) == "AVX-512 + VNNI + BF16 + AMX"


def test_this_machine_is_described():
    isa = cpu.cpu_isa()
    assert isa["torch_capability"]  # torch always reports a dispatch level


def test_flags_override_replaces_the_probed_flags(monkeypatch):
    monkeypatch.setenv(cpu.FLAGS_OVERRIDE_ENV, "AVX2, fma")
    assert cpu.cpu_flags() == {"avx2", "fma"}
    isa = cpu.cpu_isa()
    assert isa["flags_source"] == cpu.FLAGS_OVERRIDE_ENV and isa["cpu_class"] == "avx2"
    # A figure measured under the override never passes for a real machine's.
    assert cpu.isa_label() == f"AVX2 (simulated by {cpu.FLAGS_OVERRIDE_ENV})"
    monkeypatch.delenv(cpu.FLAGS_OVERRIDE_ENV)
    assert cpu.cpu_flags() == cpu._probed_flags()
    assert "flags_source" not in cpu.cpu_isa()


@pytest.mark.parametrize("name", sorted(cpu.CPU_CLASSES))
def test_every_class_decides_as_its_flags_say(name, monkeypatch):
    from bench.amp import resolve_precision
    from exports.quantize import int8_settings

    monkeypatch.setenv(cpu.FLAGS_OVERRIDE_ENV, cpu.CPU_CLASSES[name])
    assert cpu.cpu_class() == name
    precision = resolve_precision(torch.device("cpu"), "auto")
    assert precision.name == ("fp32" if name == "avx2" else "bf16")
    # INT8 on x86-64: 7-bit weights only where there is no VNNI.
    assert int8_settings(vnni=cpu.has_vnni(), machine="x86_64").reduce_range == (name == "avx2")
    assert ("AMX" in cpu.isa_label()) == (name == "amx")


@pytest.mark.isa
def test_the_class_under_test_is_the_one_decided():
    """Under `pytest --cpu-class X` (tox -e isa) the whole process decides as class X."""
    import os

    override = os.environ.get(cpu.FLAGS_OVERRIDE_ENV)
    if override is None:
        assert "flags_source" not in cpu.cpu_isa()
        return
    assert cpu.cpu_flags() == cpu.flags_override()
    isa = cpu.cpu_isa()
    assert isa["cpu_class"] in cpu.CPU_CLASSES
    if isa["cpu_class"] == "avx2":  # the kernels are capped too, not only the decisions
        assert isa["torch_capability"] == "AVX2"
