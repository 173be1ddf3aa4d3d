"""Speed measurement: timing core, backends, the interleaved driver, sizes, Pareto plot.

Pure functions and small classes, no printing, no CLI parsing: every result is a plain dict
with units in the key names (latency_ms_p50, throughput_img_s). Read in this order:
timing.py (one measured run), backends.py (what is run), driver.py (rounds and rows),
maxbatch.py, size.py, environment.py, pareto.py.
"""

# Names resolved on first use (PEP 562): importing one submodule, e.g. the torch-free
# robustness engine that `bench robustness MODEL.onnx` runs where torch is not installed,
# must not import the torch backends.
_WHERE = {
    "Backend": "backends",
    "Case": "driver",
    "OnnxRuntime": "backends",
    "SpeedRow": "driver",
    "Timing": "timing",
    "TorchEager": "backends",
    "confirmed_ort_backends": "driver",
    "count_gflops": "size",
    "count_params": "size",
    "decay_batch_step": "maxbatch",
    "environment": "environment",
    "file_size_mb": "size",
    "find_max_batch": "maxbatch",
    "is_oom": "maxbatch",
    "measure": "timing",
    "measure_with_contention": "timing",
    "pareto_front": "pareto",
    "plot_accuracy_vs_latency": "pareto",
    "run_interleaved": "driver",
    "speed_rows_for_model": "driver",
    "speedup": "driver",
    "summarize": "timing",
    "throughput_img_s": "timing",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module 'bench.measure' has no attribute {name!r}")
    from importlib import import_module

    value = getattr(import_module(f"bench.measure.{_WHERE[name]}"), name)
    globals()[name] = value
    return value
