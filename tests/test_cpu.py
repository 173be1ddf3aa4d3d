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


def test_isa_class_names_the_three_machine_classes():
    zen5 = frozenset("avx2 fma avx512f avx512bw avx512_vnni avx512_bf16".split())
    assert cpu.isa_class(cpu.cpu_isa(AVX2_EPYC)) == "AVX2"
    assert cpu.isa_class(cpu.cpu_isa(zen5)) == "AVX-512 + VNNI + BF16 (no AMX)"
    assert cpu.isa_class(cpu.cpu_isa(SAPPHIRE_RAPIDS)) == "AVX-512 + AMX"
    # something else keeps its label rather than being forced into a class
    skylake = frozenset("avx2 fma avx512f avx512bw".split())
    assert cpu.isa_class(cpu.cpu_isa(skylake)) == "AVX-512"
