"""bench.measure: statistics, the timing loop, OOM shrink, ORT provider honesty, Pareto + plot.

Tiny conv nets at 16-32 px and min_seconds ~0 keep every test well under a second.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from bench import measure as speed
from tests.conftest import export_plain_onnx

ROW_KEYS = {
    "runtime",
    "provider",
    "precision",
    "channels_last",
    "batch_size",
    "threads",
    "latency_ms_p50",
    "latency_ms_p90",
    "latency_ms_p99",
    "latency_ms_mean",
    "latency_ms_std",
    "n",
    "throughput_img_s",
}
FAST = dict(warmup_iters=1, min_seconds=0.0, min_iters=3)


def tiny_net(num_classes: int = 6) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Dropout(0.5),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, num_classes),
    )


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory):
    path = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    return export_plain_onnx(tiny_net(), path, 16)


# ----------------------------------------------------------------------------- statistics


def test_summarize_matches_hand_computed_percentiles():
    # 1..100 ms; numpy "linear": rank = q/100 * (n-1), interpolate between neighbours.
    s = speed.summarize([i / 1000 for i in range(1, 101)])
    assert s["n"] == 100
    assert s["latency_ms_p50"] == pytest.approx(50.5)  # rank 49.5 -> (50 + 51) / 2
    assert s["latency_ms_p90"] == pytest.approx(90.1)  # rank 89.1 -> 90 + 0.1
    assert s["latency_ms_p99"] == pytest.approx(99.01)  # rank 98.01 -> 99 + 0.01
    assert s["latency_ms_mean"] == pytest.approx(50.5)
    assert s["latency_ms_std"] == pytest.approx(math.sqrt(100 * 101 / 12))  # ddof=1


def test_summarize_keeps_outliers_and_rejects_empty():
    s = speed.summarize([0.001, 0.001, 0.001, 1.0])  # one 1 s outlier is not dropped
    assert s["latency_ms_mean"] == pytest.approx((3 + 1000) / 4)
    assert s["latency_ms_p99"] == pytest.approx(1 + 0.97 * 999)  # rank 2.97
    assert speed.summarize([0.002])["latency_ms_std"] == 0.0
    with pytest.raises(ValueError, match="no samples"):
        speed.summarize([])


def test_throughput_uses_total_time_not_median():
    samples = [0.01, 0.01, 0.01, 0.07]  # p50 = 10 ms would claim 100 img/s per image
    assert speed.throughput_img_s(samples, 4) == pytest.approx(4 * 4 / 0.1)


# ----------------------------------------------------------------------------- measure


class FakeClock:
    """Advances `dt` seconds per read and logs reads, so loops can be checked exactly."""

    def __init__(self, dt: float, log: list):
        self.t, self.dt, self.log = 0.0, dt, log

    def __call__(self) -> float:
        self.log.append("clock")
        self.t += self.dt
        return self.t


def test_measure_stops_at_min_iters_when_time_is_already_enough():
    calls = []
    samples = speed.measure(
        lambda: calls.append(1),
        warmup_iters=3,
        min_seconds=0.5,
        min_iters=7,
        clock=FakeClock(1.0, []),
    )
    assert len(samples) == 7
    assert len(calls) == 3 + 7  # warm-up calls are made but not returned
    assert samples == [1.0] * 7


def test_measure_keeps_going_until_min_seconds():
    samples = speed.measure(
        lambda: None, warmup_iters=0, min_seconds=10.0, min_iters=2, clock=FakeClock(0.5, [])
    )
    assert len(samples) == 20 and sum(samples) == pytest.approx(10.0)


def test_measure_max_seconds_caps_the_run():
    samples = speed.measure(
        lambda: None,
        warmup_iters=0,
        min_seconds=100.0,
        min_iters=1000,
        max_seconds=3.0,
        clock=FakeClock(1.0, []),
    )
    assert len(samples) == 3


def test_measure_max_seconds_also_bounds_the_warm_up():
    # A 4 s call (ResNet-50 at batch 32 on 2 AVX2 cores): 5 warm-up + 20 timed calls would be
    # 100 s per case per round; with a 10 s cap it is 3 warm-up + 3 timed calls.
    calls = []
    samples = speed.measure(
        lambda: calls.append(1),
        warmup_iters=5,
        min_seconds=1.0,
        min_iters=20,
        max_seconds=10.0,
        clock=FakeClock(4.0, []),
    )
    assert len(samples) == 3 and len(calls) == 3 + 3
    # ...and at least one warm-up call and one sample, however slow a call is.
    calls.clear()
    samples = speed.measure(
        lambda: calls.append(1), warmup_iters=5, max_seconds=1.0, clock=FakeClock(30.0, [])
    )
    assert len(samples) == 1 and len(calls) == 2


def test_timing_caps_every_case_by_default():
    assert speed.Timing().max_seconds == 10.0


def test_measure_real_clock_respects_both_minimums():
    samples = speed.measure(lambda: sum(range(100)), warmup_iters=0, min_seconds=0.02, min_iters=5)
    assert len(samples) >= 5 and sum(samples) >= 0.02


@pytest.mark.parametrize("max_seconds", [None, 100.0])
def test_sync_is_called_before_every_clock_read(max_seconds):
    log: list[str] = []
    speed.measure(
        lambda: log.append("fn"),
        sync=lambda: log.append("sync"),
        warmup_iters=2,
        min_seconds=0.0,
        min_iters=4,
        max_seconds=max_seconds,
        clock=FakeClock(1.0, log),
    )
    reads = [i for i, e in enumerate(log) if e == "clock"]
    # start stamp + one per sample (+ the capped warm-up's own stamps: start + one per call)
    assert len(reads) == 4 + 1 + (0 if max_seconds is None else 1 + 2)
    assert all(log[i - 1] == "sync" for i in reads)
    # and every timed fn call is followed by a sync before its end stamp
    if max_seconds is None:
        assert log[:3] == ["fn", "fn", "sync"]


# ----------------------------------------------------------------------------- sizes


def test_count_params_and_gflops():
    conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
    assert speed.count_params(conv) == 8 * 3 * 9
    # FLOPs = 2 x MACs: 2 * (8 out ch * 16*16 px * 3*3*3 kernel MACs)
    assert speed.count_gflops(conv, 16) == pytest.approx(2 * 8 * 256 * 27 / 1e9)
    conv.train()
    speed.count_gflops(conv, 16)
    assert conv.training  # mode restored


def test_file_size_mb(tmp_path):
    p = tmp_path / "f.bin"
    p.write_bytes(b"x" * 2_500_000)
    assert speed.file_size_mb(p) == pytest.approx(2.5)


# ----------------------------------------------------------------------------- backends


def one_row(backend, batch_size=2, rounds=1) -> dict:
    (row,) = speed.run_interleaved(
        [speed.Case(backend, batch_size)],
        model="tiny",
        image_size=16,
        rounds=rounds,
        timing=speed.Timing(**FAST),
    )
    return row.to_dict()


def test_torch_eager_row():
    model = tiny_net().train()
    row = one_row(speed.TorchEager(model, image_size=16, threads=1))
    assert ROW_KEYS <= row.keys()
    assert row["runtime"] == "torch" and row["provider"] == "cpu" and row["error"] is None
    assert row["precision"] == "fp32" and row["batch_size"] == 2 and row["threads"] == 1
    assert row["memory_format"] == "contiguous"
    assert row["n"] >= 3 and row["latency_ms_p50"] > 0 and row["throughput_img_s"] > 0
    # one round: the spread across rounds is unknown, not zero
    assert row["rounds"] == 1 and row["p50_spread_pct"] is None
    assert model.training  # the caller's mode comes back
    c = row["cpu_contention_pct"]  # Linux PSI share of the run spent waiting for a CPU
    assert c is None or 0.0 <= c <= 100.0


def test_torch_eager_channels_last_bf16_restores_threads_and_layout():
    before = torch.get_num_threads()
    model = tiny_net()
    backend = speed.TorchEager(
        model, image_size=16, precision="bf16", channels_last=True, threads=1
    )
    with backend.active():
        assert torch.get_num_threads() == 1
        assert model[0].weight.is_contiguous(memory_format=torch.channels_last)
        out = backend.prepare(2)()
        assert out.dtype == torch.bfloat16  # autocast really on
    row = one_row(backend)
    assert row["precision"] == "bf16" and row["memory_format"] == "channels_last"
    assert torch.get_num_threads() == before
    assert model[0].weight.is_contiguous()  # memory format restored
    with pytest.raises(ValueError, match="precision"):
        speed.TorchEager(model, image_size=16, precision="int8")


class FakeBackend(speed.Backend):
    """Logs prepare/call order; `fail_in_round` raises from that round's prepare on."""

    runtime = "fake"

    def __init__(self, name, log, fail_in_round=None):
        self.name, self.log, self.fail_in_round, self.prepared = name, log, fail_in_round, 0

    def prepare(self, batch_size):
        self.prepared += 1
        if self.fail_in_round is not None and self.prepared > self.fail_in_round:
            raise RuntimeError(f"{self.name} broke")
        return lambda: self.log.append(self.name)

    def provenance(self):
        return {"runtime": self.runtime, "provider": self.name, "precision": "fp32",
                "threads": 1}  # fmt: skip


def test_driver_interleaves_backends_round_by_round():
    log: list[str] = []
    a, b = FakeBackend("a", log), FakeBackend("b", log)
    timing = speed.Timing(warmup_iters=0, min_seconds=0.0, min_iters=2)
    rows = speed.run_interleaved(
        [speed.Case(a, 1), speed.Case(b, 1)], model="m", image_size=8, rounds=3, timing=timing
    )
    # a a b b | a a b b | a a b b: never all of a's rounds first
    assert log == ["a", "a", "b", "b"] * 3
    assert [r.rounds for r in rows] == [3, 3] and [r.n for r in rows] == [6, 6]
    assert all(r.p50_spread_pct is not None for r in rows)


def test_driver_records_a_failing_backend_and_keeps_the_others():
    log: list[str] = []
    ok, bad = FakeBackend("ok", log), FakeBackend("bad", log, fail_in_round=1)
    timing = speed.Timing(warmup_iters=0, min_seconds=0.0, min_iters=1)
    good_row, bad_row = speed.run_interleaved(
        [speed.Case(ok, 1), speed.Case(bad, 1)], model="m", image_size=8, rounds=3, timing=timing
    )
    assert bad_row.error == "RuntimeError: bad broke" and bad_row.latency_ms_p50 is None
    assert bad.prepared == 2  # tried in round 2, then left out of round 3
    assert good_row.error is None and good_row.rounds == 3


def test_combine_rounds_takes_medians_and_the_spread_of_p50s():
    from bench.measure.driver import SpeedRow, combine_rounds

    ms = 1e-3
    rounds = [([10 * ms, 10 * ms, 30 * ms], 5.0), ([12 * ms] * 3, None), ([11 * ms] * 3, 20.0)]
    row = combine_rounds(SpeedRow(model="m", batch_size=4, image_size=8, provenance={}), rounds)
    assert row.latency_ms_p50_by_round == pytest.approx([10.0, 12.0, 11.0])
    assert row.latency_ms_p50 == pytest.approx(11.0)  # median of the rounds' p50s
    assert row.p50_spread_pct == pytest.approx(20.0)  # (12 - 10) / 10
    assert row.latency_ms_p99 == pytest.approx(12.0)  # median of 29.6, 12, 11
    assert row.n == 9 and row.rounds == 3
    assert row.throughput_img_s == pytest.approx(4 * 3 / 0.036)  # median round: 36 ms
    assert row.cpu_contention_pct == 20.0  # the worst round


# ----------------------------------------------------------------------------- OOM shrink


def test_decay_batch_step_ladder():
    ladder, b = [], 64
    while b:
        ladder.append(b)
        b = speed.decay_batch_step(b)
    assert ladder == [64, 48, 32, 24, 16, 12, 8, 6, 4, 3, 2, 1]


def test_find_max_batch_with_fake_oom():
    tried = []

    def try_batch(bs):
        tried.append(bs)
        if bs > 20:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB")

    assert speed.find_max_batch(try_batch, 64) == 16
    assert tried == [64, 48, 32, 24, 16]

    def runtime_oom(bs):
        if bs > 5:
            raise RuntimeError("DefaultCPUAllocator: not enough memory: you tried... out of memory")

    assert speed.find_max_batch(runtime_oom, 8) == 4


def test_find_max_batch_reraises_other_errors_and_gives_up_below_min():
    def broken(bs):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    with pytest.raises(RuntimeError, match="illegal"):
        speed.find_max_batch(broken, 8)

    def always_oom(bs):
        raise torch.cuda.OutOfMemoryError("out of memory")

    with pytest.raises(RuntimeError, match="every batch size"):
        speed.find_max_batch(always_oom, 8, min_batch=2)


# ----------------------------------------------------------------------------- training


# ----------------------------------------------------------------------------- onnxruntime


def test_ort_row_records_provider_and_threads(tiny_onnx):
    row = one_row(speed.OnnxRuntime.open(tiny_onnx, image_size=16, threads=1), batch_size=3)
    assert ROW_KEYS <= row.keys()
    assert row["runtime"] == "onnxruntime"
    assert row["provider"] == "cpu" and row["threads"] == 1 and row["batch_size"] == 3


def test_ort_threads_default_to_torch_threads(tiny_onnx):
    row = one_row(speed.OnnxRuntime.open(tiny_onnx, image_size=16))
    assert row["threads"] == torch.get_num_threads()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU fallback")
def test_gpu_provider_fallback_is_never_labelled_gpu(tiny_onnx):
    from exports.runtime import ProviderUnavailableError

    with pytest.raises(ProviderUnavailableError):
        speed.OnnxRuntime.open(tiny_onnx, image_size=16, provider="cuda", strict=True)
    backend = speed.OnnxRuntime.open(tiny_onnx, image_size=16, provider="cuda", strict=False)
    row = one_row(backend)
    assert row["provider"] == "cpu" and row["requested_provider"] == "cuda"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU fallback")
def test_speed_rows_skip_unconfirmed_gpu_providers(tiny_onnx):
    notes: list[str] = []
    rows = speed.speed_rows_for_model(
        tiny_net(),
        name="tiny",
        image_size=16,
        onnx_path=tiny_onnx,
        batch_sizes=(1, 2),
        providers=("cuda", "tensorrt"),
        threads=1,
        rounds=3,
        notes=notes,
        timing=speed.Timing(**FAST),
    )
    assert {(r["runtime"], r["provider"], r["batch_size"]) for r in rows} == {
        ("torch", "cpu", 1),
        ("torch", "cpu", 2),
        ("onnxruntime", "cpu", 1),  # CPU is always measured
        ("onnxruntime", "cpu", 2),
    }
    assert all(r["model"] == "tiny" and r["threads"] == 1 for r in rows)
    for r in rows:
        p50s = r["latency_ms_p50_by_round"]
        assert r["rounds"] == 3 and len(p50s) == 3
        assert r["latency_ms_p50"] == pytest.approx(sorted(p50s)[1])
        assert r["p50_spread_pct"] == pytest.approx(
            (max(p50s) - min(p50s)) / min(p50s) * 100, abs=0.01
        )
    assert len(notes) == 2 and "cuda" in notes[0] and "tensorrt" in notes[1]

    (r,) = speed.speedup(rows, throughput_batch=2)
    assert r["model"] == "tiny"
    torch_b1, ort_b1 = (
        next(x for x in rows if x["runtime"] == rt and x["batch_size"] == 1)
        for rt in ("torch", "onnxruntime")
    )
    per_round = [
        t / o
        for t, o in zip(
            torch_b1["latency_ms_p50_by_round"], ort_b1["latency_ms_p50_by_round"], strict=True
        )
    ]
    assert r["latency_speedup_b1"] == pytest.approx(sorted(per_round)[1])
    assert r["throughput_ratio_b2"] > 0


def test_speedup_is_the_median_of_per_round_ratios():
    def row(runtime, b, p50s, thr):
        return {"model": "m", "runtime": runtime, "provider": "cpu", "precision": "fp32",
                "batch_size": b, "latency_ms_p50": sorted(p50s)[1],
                "latency_ms_p50_by_round": p50s, "throughput_img_s": sorted(thr)[1],
                "throughput_img_s_by_round": thr}  # fmt: skip

    # Per-round ratios 2, 3, 1.5 -> median 2; the ratio of the medians (12 / 8 = 1.5) would
    # divide figures from different windows.
    rows = [
        row("torch", 1, [10.0, 30.0, 12.0], [1, 1, 1]),
        row("onnxruntime", 1, [5.0, 10.0, 8.0], [1, 1, 1]),
    ]
    (r,) = speed.speedup(rows)
    assert r["latency_speedup_b1"] == pytest.approx(2.0)


def test_speedup_missing_side_is_none():
    rows = [
        {"model": "m", "runtime": "torch", "provider": "cpu", "precision": "fp32",
         "batch_size": 1, "latency_ms_p50": 10.0, "throughput_img_s": 100.0},
    ]  # fmt: skip
    (r,) = speed.speedup(rows)
    assert r["torch_cpu_latency_ms_p50_b1"] == 10.0
    assert r["latency_speedup_b1"] is None and r["throughput_ratio_b32"] is None


# ----------------------------------------------------------------------------- environment


def test_environment_has_the_essentials():
    env = speed.environment()
    for key in ("torch", "torchvision", "onnxruntime", "onnx", "numpy", "python", "platform"):
        assert env[key], key
    assert env["torch_threads"] == torch.get_num_threads()
    assert "CPUExecutionProvider" in env["ort_available_providers"]
    assert isinstance(env["cpu"], str) and env["cpu"]
    from bench.cpu import cpu_flags

    isa = env["cpu_isa"]  # the flags speed figures depend on, read from this machine
    assert isa["avx2"] == ("avx2" in cpu_flags()) and "amx_tile" in isa
    assert isa["torch_capability"] == torch.backends.cpu.get_cpu_capability()


def test_report_names_the_cpu_isa_in_header_and_speed_section():
    from bench.report.markdown import markdown

    env = {"cpu": "Test CPU", "cpu_isa": {"torch_capability": "AVX512", "avx512f": True},
           "cpu_isa_label": "AVX-512 VNNI + AMX"}  # fmt: skip
    row = {"model": "m", "runtime": "torch", "provider": "cpu", "precision": "fp32",
           "batch_size": 1, "threads": 2, "latency_ms_p50": 1.0, "latency_ms_p90": 1.0,
           "latency_ms_p99": 1.0, "throughput_img_s": 1.0, "n": 3, "rounds": 3,
           "p50_spread_pct": 2.5}  # fmt: skip
    md = markdown({"environment": env, "speed": [row]})
    header, speed_section = md.split("## Speed")[0], md.split("## Speed")[1]
    assert "ISA AVX-512 VNNI + AMX (torch AVX512)" in header
    assert "ISA AVX-512 VNNI + AMX" in speed_section and "| 2.5 |" in speed_section


# ----------------------------------------------------------------------------- Pareto + plot


def test_pareto_front_hand_made():
    pts = [
        (10.0, 0.90),  # 0 front (fastest)
        (20.0, 0.95),  # 1 front
        (25.0, 0.94),  # 2 dominated by 1
        (40.0, 0.99),  # 3 front
        (40.0, 0.98),  # 4 same latency, lower accuracy -> dominated by 3
        (20.0, 0.95),  # 5 exact duplicate of 1 -> also on the front
        (5.0, float("nan")),  # 6 no accuracy -> never on the front
        (50.0, 0.99),  # 7 same accuracy, slower -> dominated by 3
    ]
    assert speed.pareto_front(pts) == [0, 1, 5, 3]
    assert speed.pareto_front([]) == []
    assert speed.pareto_front([(1.0, 0.5)]) == [0]


def test_plot_is_a_valid_png(tmp_path):
    from PIL import Image

    rows = [
        {"model": "resnet50", "runtime": "torch", "provider": "cpu", "latency_ms_p50": 80.0,
         "accuracy": 0.99},
        {"model": "resnet50", "runtime": "onnxruntime", "provider": "cpu", "latency_ms_p50": 40.0,
         "accuracy": 0.99},
        {"model": "shufflenet_v2_x1_0", "runtime": "onnxruntime", "provider": "cpu",
         "latency_ms_p50": 2.0, "accuracy": 0.97},
        {"model": "vgg16_bn", "runtime": "torch", "provider": "cuda", "precision": "fp16",
         "latency_ms_p50": 3.0, "accuracy": 0.96},
    ]  # fmt: skip
    out = speed.plot_accuracy_vs_latency(rows, tmp_path / "plots" / "acc_vs_latency.png")
    assert out == tmp_path / "plots" / "acc_vs_latency.png"
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(out) as im:
        im.verify()
    with Image.open(out) as im:
        assert im.format == "PNG" and im.size[0] > 400
    assert [p.name for p in out.parent.iterdir()] == ["acc_vs_latency.png"]  # no temp left

    with pytest.raises(ValueError, match="duplicated"):
        speed.plot_accuracy_vs_latency(rows + rows[:1], tmp_path / "dup.png")
    assert not (tmp_path / "dup.png").exists()


def test_rows_keep_a_bounded_sample_list_across_rounds_in_timing_order():
    from bench.measure.driver import SpeedRow, combine_rounds
    from bench.measure.timing import MAX_KEPT_SAMPLES

    def row(rounds):
        return combine_rounds(
            SpeedRow(model="m", batch_size=1, image_size=8, provenance={}), rounds
        )

    few = row([([0.001, 0.003], None), ([0.002], None)])
    assert few.latency_ms_samples == [1.0, 3.0, 2.0]  # ms, round 1 then round 2
    x = np.random.default_rng(1).exponential(0.01, 5 * MAX_KEPT_SAMPLES + 3)
    kept = row([(x[:2000].tolist(), None), (x[2000:].tolist(), None)]).latency_ms_samples
    assert len(kept) == MAX_KEPT_SAMPLES
    assert kept[0] == round(x[0] * 1e3, 4) and kept[-1] == round(x[-1] * 1e3, 4)
    # Evenly strided through the run: every 5th sample, so the same distribution.
    assert kept[1] == round(x[5] * 1e3, 4)
    assert "latency_ms_samples" in few.to_dict()


def test_sweep_note_names_every_phase_and_the_models_kept_from_an_earlier_attempt():
    from bench.report.markdown import sweep_note

    sw = {"runs": 4, "runs_trained": 4, "runs_finished_earlier": 0,
          "train_seconds_expected": 7200.0, "expected_from": "densenet121: 2.4 s per batch",
          "train_seconds_actual": 7000.0, "speed_seconds_actual": 1200.0,
          "speed_models_kept": ["resnet50", "vgg16_bn"], "robustness_seconds_actual": 600.0,
          "calibration_seconds_actual": 90.0, "export_seconds_actual": 300.0,
          "seconds_actual": 9200.0}  # fmt: skip
    note = sweep_note(sw)
    for phase in ("of training", "of speed and deployment variants (the rows of resnet50, "
                  "vgg16_bn kept from an earlier invocation)", "of the corruption benchmark",
                  "of calibration and Grad-CAM", "of export and parity",
                  "for the whole command"):  # fmt: skip
        assert phase in note
    assert "kept" not in sweep_note({**sw, "speed_models_kept": []})
