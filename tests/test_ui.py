from rich.console import Console

from bench.ui import PlainReporter


def _reporter():
    calls = []

    def estimate(name, seconds_per_batch, batches, epochs):
        calls.append((name, seconds_per_batch, batches, epochs))
        return f"estimate {seconds_per_batch:.2f}"

    console = Console(file=open("/dev/null", "w"), force_terminal=False)
    return PlainReporter(console, estimate), calls


def test_estimate_skips_the_warm_up_batches():
    # Regression from the H200 run: cuDNN autotuning made the first batches 10x slower and
    # the sweep estimate 40x too long.
    rep, calls = _reporter()
    rep.start_model("m", 0, epochs=3, batches=45)
    elapsed = 0.0
    for i in range(1, 46):
        elapsed += 10.0 if i <= 2 else 1.0
        rep.batch(i, elapsed=elapsed)
    assert calls == [("m", 1.0, 45, 3)]


def test_estimate_with_fewer_batches_than_the_warm_up_still_comes():
    rep, calls = _reporter()
    rep.start_model("m", 0, epochs=1, batches=2)
    rep.batch(1, elapsed=2.0)
    rep.batch(2, elapsed=4.0)
    assert calls == [("m", 2.0, 2, 1)]
    rep.start_model("n", 0, epochs=1, batches=4)  # each model gets its own estimate
    for i in range(1, 5):
        rep.batch(i, elapsed=3.0 * i)
    assert calls[-1] == ("n", 3.0, 4, 1)
