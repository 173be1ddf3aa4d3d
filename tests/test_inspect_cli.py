"""`python -m neu inspect`: tables / JSON, exit codes, problems, and import hygiene."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from neu import NEU_CLASSES
from neu.__main__ import main
from tests.conftest import make_neu_flat

ROOT = Path(__file__).resolve().parents[1]


def run_json(capsys, *args):
    rc = main(["inspect", *map(str, args), "--json", "--image-size", "16"])
    return rc, json.loads(capsys.readouterr().out)


def test_json_report_for_a_good_folder(tiny_neu, capsys):
    (tiny_neu / "README.md").write_text("x")
    import shutil

    shutil.copy(tiny_neu / "Pa_1.bmp", tiny_neu / "Pa_9.bmp")
    rc, r = run_json(capsys, tiny_neu)
    assert rc == 0 and r["usable"] is True
    assert r["layout"] == "neu-cls" and r["num_images"] == 37
    assert list(r["classes"]) == list(NEU_CLASSES) and r["classes"]["patches"] == 7
    assert r["duplicates"] == [["Pa_1.bmp", "Pa_9.bmp"]]
    assert r["problems"] == [] and r["excluded"] == [] and r["ignored"] == ["README.md"]
    assert r["channels"] == 1 and r["sizes"] == {"24x24": 37}


def test_problems_exit_1_and_exclude_bad_exit_0(tiny_neu, capsys):
    (tiny_neu / "Cr_77.bmp").write_bytes(b"garbage")
    (tiny_neu / "notes.txt").write_text("x")
    rc, r = run_json(capsys, tiny_neu)
    assert rc == 1 and r["usable"] is False
    assert {p["file"] for p in r["problems"]} == {"Cr_77.bmp", "notes.txt"}
    assert all(set(p) == {"file", "problem"} for p in r["problems"])
    rc, r = run_json(capsys, tiny_neu, "--exclude-bad")
    assert rc == 0 and r["usable"] is True and r["problems"] == []
    assert {p["file"] for p in r["excluded"]} == {"Cr_77.bmp", "notes.txt"}
    assert r["num_images"] == 36


def test_table_mode_prints_problems_to_stderr(tiny_neu, capsys):
    rc = main(["inspect", str(tiny_neu), "--image-size", "16"])
    out = capsys.readouterr().out
    assert rc == 0 and "crazing" in out and "neu-cls" in out and "usable" in out
    (tiny_neu / "Xy_3.bmp").write_bytes(b"")
    rc = main(["inspect", str(tiny_neu), "--image-size", "16"])
    captured = capsys.readouterr()
    assert rc == 1 and "Xy_3.bmp" in captured.err and "--exclude-bad" in captured.err
    rc = main(["inspect", str(tiny_neu), "--image-size", "16", "--exclude-bad"])
    captured = capsys.readouterr()
    assert rc == 0 and "Xy_3.bmp" in captured.out and "excluded" in captured.out


def test_missing_path_and_forced_layout(tmp_path, capsys):
    rc, r = run_json(capsys, tmp_path / "nope")
    assert rc == 1 and "does not exist" in r["error"]
    rc = main(["inspect", str(tmp_path / "nope")])
    assert rc == 1 and "does not exist" in capsys.readouterr().err
    make_neu_flat(tmp_path / "flat", per_class=2)
    rc, r = run_json(capsys, tmp_path / "flat", "--layout", "folder")
    assert rc == 1 and r["layout"] == "folder"


def test_module_entry_point_and_import_hygiene(tiny_neu):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    # `import neu` and `import neu.__main__` stay torch-free (the CLI imports torch only to run).
    code = "import sys, neu, neu.image, neu._io, neu.__main__; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, env=env)
    p = subprocess.run(
        [sys.executable, "-m", "neu", "inspect", str(tiny_neu), "--json", "--image-size", "16"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["num_images"] == 36
