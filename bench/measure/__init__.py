"""Speed measurement: timing core, backends, the interleaved driver, sizes, Pareto plot.

Pure functions and small classes, no printing, no CLI parsing: every result is a plain dict
with units in the key names (latency_ms_p50, throughput_img_s). Read in this order:
timing.py (one measured run), backends.py (what is run), driver.py (rounds and rows),
maxbatch.py, size.py, environment.py, pareto.py.
"""

from bench.measure.backends import Backend, OnnxRuntime, TorchEager
from bench.measure.driver import (
    Case,
    SpeedRow,
    confirmed_ort_backends,
    run_interleaved,
    speed_rows_for_model,
    speedup,
)
from bench.measure.environment import environment
from bench.measure.maxbatch import decay_batch_step, find_max_batch, is_oom
from bench.measure.pareto import pareto_front, plot_accuracy_vs_latency
from bench.measure.size import count_gflops, count_params, file_size_mb
from bench.measure.timing import (
    Timing,
    measure,
    measure_with_contention,
    summarize,
    throughput_img_s,
)

__all__ = [
    "Backend",
    "Case",
    "OnnxRuntime",
    "SpeedRow",
    "Timing",
    "TorchEager",
    "confirmed_ort_backends",
    "count_gflops",
    "count_params",
    "decay_batch_step",
    "environment",
    "file_size_mb",
    "find_max_batch",
    "is_oom",
    "measure",
    "measure_with_contention",
    "pareto_front",
    "plot_accuracy_vs_latency",
    "run_interleaved",
    "speed_rows_for_model",
    "speedup",
    "summarize",
    "throughput_img_s",
]
