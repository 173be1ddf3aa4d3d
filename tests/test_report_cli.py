"""`bench report RUN_DIR` re-renders a finished run's views from results.json alone, byte for
byte, without torch; and results.json keeps its keys (renamed ones are listed in CHANGELOG.md)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
KEYS_FILE = REPO / "tests" / "results_keys.txt"
MODEL = "shufflenet_v2_x0_5"
VIEWS = ("results.csv", "speed.csv", "report.md", "report.html")


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    """A tiny run through every step: train, speed with INT8 candidates, robustness,
    calibration, Grad-CAM, export with parity."""
    from bench.cli.run import run
    from bench.config import Recipe, RunOptions
    from bench.ui import NullReporter
    from tests.conftest import make_neu_flat

    data = make_neu_flat(tmp_path_factory.mktemp("d") / "NEU-CLS", per_class=10, size=(40, 40))
    out = tmp_path_factory.mktemp("run")
    recipe = Recipe(epochs=2, batch_size=8, image_size=32, eval_batch_size=16, weights="none")
    opts = RunOptions(
        models=MODEL, data=str(data), out=str(out), deterministic=True, variants="int8",
        speed_min_seconds=0.0, speed_min_iters=2, speed_max_seconds=1.0, speed_rounds=1,
        calibration_images=16, robustness="snr:30",
    )  # fmt: skip
    results, code = run(recipe, opts, NullReporter())
    return out, results, code


def key_paths(obj, prefix: str = "", names: tuple[str, ...] = (), nulls=None) -> set[str]:
    """Every key path of a results dict, lists as [] and run-specific keys (model, class and
    file names, seeds) as <name>, so two runs of one version give the same set. `nulls` (a
    set) also collects the paths whose value is null somewhere: an object the run had nothing
    to put in (no INT8 candidate chosen: `int8_choice.settings`), whose keys below may then be
    absent from this run without a change of format."""
    out = set()
    if isinstance(obj, dict):
        for k, v in obj.items():
            k = "<name>" if any(n in k for n in names) or re.search(r"[/.]|seed \d", k) else k
            path = f"{prefix}.{k}" if prefix else k
            out.add(path)
            if v is None and nulls is not None:
                nulls.add(path)
            out |= key_paths(v, path, names, nulls)
    elif isinstance(obj, list):
        for v in obj:
            out |= key_paths(v, prefix + "[]", names, nulls)
    return out


def run_key_paths(results: dict, nulls=None) -> set[str]:
    names = (MODEL, *results["dataset"]["classes"])
    return key_paths(results, names=names, nulls=nulls)


def under_a_null(key: str, nulls: set[str]) -> bool:
    return any(key.startswith(n + ".") or key.startswith(n + "[]") for n in nulls)


def test_keys_below_a_null_object_may_be_absent():
    ran = {"dataset": {"classes": []}, "a": {"settings": None, "b": 1}}
    nulls = set()
    run_key_paths(ran, nulls)
    assert nulls == {"a.settings"}
    assert under_a_null("a.settings.reduce_range", nulls)
    assert not under_a_null("a.b", nulls) and not under_a_null("a.settingsx.c", nulls)


def renamed_keys(text: str | None = None) -> dict[str, str]:
    """The `old` -> `new` lines of CHANGELOG.md's 'Renamed results.json keys' sections only:
    an arrow between two backquoted names elsewhere (a module move, say) is no key rename."""
    if text is None:
        path = REPO / "CHANGELOG.md"
        text = path.read_text() if path.is_file() else ""
    sections = re.findall(r"^###\s+Renamed results\.json keys\s*$(.*?)(?=^#|\Z)", text, re.M | re.S)
    pair = r"`([\w.\[\]<>]+)`\s*->\s*`([\w.\[\]<>]+)`"
    return dict(p for section in sections for p in re.findall(pair, section))


def test_only_the_renames_section_counts():
    text = (
        "## 2.0\n### Code layout\n- `bench.report` -> `bench.report.core`\n"
        "### Renamed results.json keys\n- `rows[].latency_ms` -> `rows[].latency_ms_p50` (rows)\n"
        "### Commands\n- `a.b` -> `c.d`\n## 1.0\n### Renamed results.json keys\n- `x` -> `y`\n"
    )
    assert renamed_keys(text) == {"rows[].latency_ms": "rows[].latency_ms_p50", "x": "y"}


def test_results_json_keeps_its_keys(full_run):
    out, results, code = full_run
    assert code == 0, results.get("status")
    ran, nulls = json.loads((out / "results.json").read_text()), set()
    # What a run has depends on its machine (which INT8 candidate passes, say): keys below an
    # object that is null in this run are not missing; they stay in the list when it is
    # rewritten here.
    now = run_key_paths(ran, nulls)
    if os.environ.get("NEU_WRITE_KEYS"):  # regenerate after an intended change
        before = set(KEYS_FILE.read_text().split())
        kept = {k for k in before if under_a_null(k, nulls)}
        KEYS_FILE.write_text("\n".join(sorted(now | kept)) + "\n")
    before = set(KEYS_FILE.read_text().split())
    renamed = renamed_keys()
    expected = {_rename(k, renamed) for k in before}
    # Both ways: a key that went missing breaks readers of results.json, and a new one must be
    # recorded (in this list, and in CHANGELOG.md) before it becomes part of the format.
    missing = sorted(k for k in expected - now if not under_a_null(k, nulls))
    new = sorted(now - expected)
    assert not missing and not new, (
        f"results.json keys changed against {KEYS_FILE.name}: missing {missing}, new {new}. "
        "List a rename in CHANGELOG.md ('`old` -> `new`'); for an intended change re-run "
        "with NEU_WRITE_KEYS=1"
    )


def _rename(key: str, renamed: dict[str, str]) -> str:
    for old, new in renamed.items():
        if key == old or key.startswith(old + ".") or key.startswith(old + "[]"):
            return new + key[len(old) :]
    return key


def test_bench_report_rerenders_byte_identical_without_torch(full_run):
    out, _, code = full_run
    assert code == 0
    wrote = {n: (out / n).read_bytes() for n in VIEWS if (out / n).is_file()}
    assert {"report.md", "report.html", "results.csv", "speed.csv"} <= set(wrote)
    json_before = (out / "results.json").read_bytes()
    for n in wrote:
        (out / n).unlink()
    # torch and onnxruntime made unimportable: the views come from results.json alone.
    code = (
        "import sys; sys.modules['torch'] = None; sys.modules['onnxruntime'] = None; "
        "from bench.__main__ import main; sys.exit(main(['report', sys.argv[1]]))"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    p = subprocess.run([sys.executable, "-c", code, str(out)], env=env, capture_output=True,
                       text=True, timeout=120)  # fmt: skip
    assert p.returncode == 0, p.stdout + p.stderr
    for n, data in wrote.items():
        assert (out / n).read_bytes() == data, f"{n} differs from what bench run wrote"
    assert (out / "results.json").read_bytes() == json_before  # not rewritten


def test_bench_report_names_a_folder_without_results(tmp_path):
    from bench.__main__ import main

    assert main(["report", str(tmp_path)]) == 2
    (tmp_path / "results.json").write_text("{not json")
    from bench.cli.report import load_results

    with pytest.raises(ValueError, match="results.json: not valid JSON"):
        load_results(tmp_path)
