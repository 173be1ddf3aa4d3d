"""`python -m neu download`: archives served from a local HTTP server, never the internet.

The real-data tests zip the 1,800 NEU_DATA images in the layout of the pinned GitHub
archive (Kaggle folders under one top folder) and check the shipped hash list against
them; the others use a handful of synthetic images with a matching hash list.
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import stat
import threading
import zipfile
from pathlib import Path

import pytest

import neu.download as D
from neu.__main__ import main
from tests.conftest import make_neu_flat

KAGGLE = {"Cr": "Crazing", "In": "Inclusion", "Pa": "Patches", "PS": "Pitted", "RS": "Rolled"}
KAGGLE["Sc"] = "Scratches"
TOP = f"Surface-Defect-Detection-in-Hot-Rolled-Steel-Strips-{D.COMMIT}"


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Static files, plus /lying/<file>: announces the full length, sends half, hangs up."""

    def do_GET(self):
        if self.path.startswith("/lying/"):
            data = (Path(self.directory) / self.path.removeprefix("/lying/")).read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data[: len(data) // 2])
            self.close_connection = True
            return
        super().do_GET()

    def log_message(self, *args):  # keep pytest output clean
        pass


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(folder served, base URL) of an HTTP server on 127.0.0.1 running in a thread."""
    root = tmp_path_factory.mktemp("served")
    handler = functools.partial(_Handler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def kaggle_zip(path: Path, files: list[Path], *, corrupt: str | None = None) -> Path:
    """Zip `files` as GitHub's archive of the pinned commit lays them out (ZIP_STORED)."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        z.writestr(f"{TOP}/README.md", "not an image\n")
        for i, f in enumerate(sorted(files)):
            split = ("train", "valid", "test")[i % 3]
            arc = f"{TOP}/NEU Metal Surface Defects Data/{split}/{KAGGLE[f.name[:2]]}/{f.name}"
            data = f.read_bytes()
            if f.name == corrupt:
                data = data[:-1] + bytes([data[-1] ^ 0xFF])  # one flipped byte
            z.writestr(arc, data)
    return path


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def assert_nothing_left(parent: Path, dest: Path) -> None:
    assert not dest.exists()
    leftovers = [p.name for p in parent.iterdir() if ".download-" in p.name]
    assert leftovers == [], leftovers


# --- the real 1,800 images -------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_archives(neu_data, served):
    root, url = served
    files = sorted(neu_data.glob("*.bmp"))
    good = kaggle_zip(root / "neu.zip", files)
    kaggle_zip(root / "corrupt.zip", files, corrupt="Sc_300.bmp")
    (root / "truncated.zip").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    return url


def test_shipped_hash_list_matches_the_real_dataset(neu_data):
    hashes = D.expected_hashes()
    assert len(hashes) == 1800
    assert {name[:2] for name in hashes} == set(KAGGLE)
    assert hashes == {f.name: _sha(f) for f in neu_data.glob("*.bmp")}


def test_download_puts_1800_verified_files_flat_in_dest(real_archives, tmp_path, capsys):
    dest = tmp_path / "data" / "NEU-CLS"
    assert main(["download", str(dest), "--url", f"{real_archives}/neu.zip"]) == 0
    files = sorted(dest.iterdir())
    assert len(files) == 1800 and all(f.is_file() for f in files)  # flat: no sub-folders
    expected = D.expected_hashes()
    assert {f.name: _sha(f) for f in files} == expected
    out = capsys.readouterr().out
    assert "academic research use only" in out and "Applied Surface Science 285" in out
    assert [p.name for p in dest.parent.iterdir()] == ["NEU-CLS"]  # no temp folder left

    # Run again: DEST exists and is complete -> said so, exit 0, nothing touched.
    assert main(["download", str(dest), "--url", f"{real_archives}/neu.zip"]) == 0
    assert "already holds all 1800" in capsys.readouterr().out


def test_corrupted_archive_names_the_file_and_leaves_nothing(real_archives, tmp_path, capsys):
    dest = tmp_path / "NEU-CLS"
    assert main(["download", str(dest), "--url", f"{real_archives}/corrupt.zip"]) == 1
    err = capsys.readouterr().err
    assert "Sc_300.bmp: SHA-256 mismatch" in err
    assert_nothing_left(tmp_path, dest)


def test_truncated_archive_is_an_error_and_leaves_nothing(real_archives, tmp_path, capsys):
    dest = tmp_path / "NEU-CLS"
    assert main(["download", str(dest), "--url", f"{real_archives}/truncated.zip"]) == 1
    err = capsys.readouterr().err
    assert f"{real_archives}/truncated.zip" in err and "not a zip archive" in err
    assert_nothing_left(tmp_path, dest)


# --- synthetic images: the failure paths -----------------------------------------------------


@pytest.fixture
def tiny(tmp_path, monkeypatch):
    """12 small images and a hash list of exactly them, standing in for the shipped one."""
    files = sorted(make_neu_flat(tmp_path / "src", per_class=2).iterdir())
    monkeypatch.setattr(D, "expected_hashes", lambda: {f.name: _sha(f) for f in files})
    return files


def test_connection_cut_short_is_reported_as_truncated(tiny, served, tmp_path, capsys):
    root, url = served
    kaggle_zip(root / "tiny.zip", tiny)
    dest = tmp_path / "out" / "NEU-CLS"
    assert main(["download", str(dest), "--url", f"{url}/lying/tiny.zip"]) == 1
    err = capsys.readouterr().err
    assert "truncated" in err and f"{url}/lying/tiny.zip" in err
    assert not (tmp_path / "out").exists()  # the parent it created is gone too

    assert main(["download", str(dest), "--url", f"{url}/tiny.zip"]) == 0  # the same, whole
    assert sorted(p.name for p in dest.iterdir()) == sorted(f.name for f in tiny)


def test_http_error_and_no_network_name_the_url(tiny, served, tmp_path, capsys):
    _, url = served
    dest = tmp_path / "NEU-CLS"
    assert main(["download", str(dest), "--url", f"{url}/missing.zip"]) == 1
    assert "HTTP 404" in capsys.readouterr().err
    assert_nothing_left(tmp_path, dest)
    # Port 9 (discard) on 127.0.0.1 refuses connections like a machine without network.
    assert main(["download", str(dest), "--url", "http://127.0.0.1:9/neu.zip"]) == 1
    assert "cannot reach http://127.0.0.1:9/neu.zip" in capsys.readouterr().err
    assert_nothing_left(tmp_path, dest)


def test_archive_missing_an_image_is_refused(tiny, served, tmp_path, capsys):
    root, url = served
    kaggle_zip(root / "short.zip", tiny[1:])
    dest = tmp_path / "NEU-CLS"
    assert main(["download", str(dest), "--url", f"{url}/short.zip"]) == 1
    assert f"lacks 1 of the 12 NEU-CLS images (first: {tiny[0].name})" in capsys.readouterr().err
    assert_nothing_left(tmp_path, dest)


def test_existing_dest_is_never_clobbered(tiny, served, tmp_path, capsys):
    root, url = served
    kaggle_zip(root / "tiny.zip", tiny)
    dest = tmp_path / "NEU-CLS"
    dest.mkdir()
    (dest / "mine.txt").write_text("keep me")
    assert main(["download", str(dest), "--url", f"{url}/tiny.zip"]) == 2
    assert "already exists and is not a complete NEU-CLS copy (0 of 12" in capsys.readouterr().err
    assert [p.name for p in dest.iterdir()] == ["mine.txt"]
    assert (dest / "mine.txt").read_text() == "keep me"


def test_path_traversal_absolute_and_link_entries_are_refused(tiny, served, tmp_path, capsys):
    root, url = served
    victim = tmp_path / "abs-evil.txt"
    with zipfile.ZipFile(root / "evil.zip", "w") as z:
        for f in tiny:  # a complete, valid dataset, so only the bad entries can fail it
            z.writestr(f"{TOP}/{f.name}", f.read_bytes())
        z.writestr("../evil.txt", "escaped")
        z.writestr(f"{TOP}/../../evil.txt", "escaped")
        z.writestr(str(victim), "escaped")  # absolute path
        link = zipfile.ZipInfo(f"{TOP}/link")
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        z.writestr(link, "/etc/passwd")
    names = zipfile.ZipFile(root / "evil.zip").namelist()
    assert "../evil.txt" in names and str(victim) in names  # zipfile kept them verbatim

    dest = tmp_path / "work" / "NEU-CLS"
    assert main(["download", str(dest), "--url", f"{url}/evil.zip"]) == 1
    err = capsys.readouterr().err
    for why in ("'../evil.txt' ('..' in path)", "(absolute path)", "(symbolic link)"):
        assert why in err, err
    assert not dest.exists() and not victim.exists()
    assert not list(tmp_path.rglob("evil.txt")) and not (tmp_path / "work").exists()


def test_a_link_named_like_an_image_is_refused(tiny, served, tmp_path, capsys):
    root, url = served
    with zipfile.ZipFile(root / "link.zip", "w") as z:
        for f in tiny[1:]:
            z.writestr(f"{TOP}/{f.name}", f.read_bytes())
        link = zipfile.ZipInfo(f"{TOP}/{tiny[0].name}")
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        link.create_system = 3
        z.writestr(link, "/etc/passwd")
    dest = tmp_path / "NEU-CLS"
    assert main(["download", str(dest), "--url", f"{url}/link.zip"]) == 1
    assert f"{tiny[0].name}' (symbolic link)" in capsys.readouterr().err
    assert_nothing_left(tmp_path, dest)


def test_ctrl_c_mid_download_leaves_nothing(tiny, tmp_path, monkeypatch, capsys):
    def interrupted(url, target, **kwargs):
        target.write_bytes(b"PK\x03\x04 half an archive")
        raise KeyboardInterrupt

    monkeypatch.setattr(D, "fetch", interrupted)
    dest = tmp_path / "NEU-CLS"
    assert main(["download", str(dest), "--url", "http://127.0.0.1:9/x.zip"]) == 130
    assert "interrupted: nothing was written" in capsys.readouterr().err
    assert_nothing_left(tmp_path, dest)


def test_download_command_quotes_the_path():
    assert D.download_command() == "python -m neu download data/NEU-CLS"
    assert D.download_command("my data/NEU") == "python -m neu download 'my data/NEU'"


def test_bench_run_without_dataset_says_the_download_command(tmp_path):
    """A newcomer's first command, on a machine without the data: exit 2, the fix spelled out."""
    import os
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[1]
    env = {k: v for k, v in os.environ.items() if k != "NEU_DATA"}
    env["PYTHONPATH"] = str(repo)
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "run", "--models", "all"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "python -m neu download data/NEU-CLS" in proc.stdout + proc.stderr
    assert not (tmp_path / "runs").exists() and not (tmp_path / "data").exists()


def test_inspect_of_a_missing_folder_says_the_download_command(tmp_path, capsys):
    assert main(["inspect", str(tmp_path / "my data")]) == 1
    assert f"python -m neu download '{tmp_path / 'my data'}'" in capsys.readouterr().err
