"""`python -m neu download [DEST]`: NEU-CLS from a pinned public archive, every byte verified.

The default archive is GitHub's zip of one commit of a public repository that holds the
1,800 original BMPs in the Kaggle layout (`NEU Metal Surface Defects Data/{train,valid,
test}/<Class>/`). A commit's content never changes, and on top of that every extracted
file must match the SHA-256 list shipped in this package (`neu/NEU-CLS.sha256`), so a
moved branch, a tampered mirror or a flipped bit is an error, never a silently different
dataset.

The archive is untrusted input. Only the 1,800 expected names are taken from it, each
written under a name that comes from the hash list (never from the archive), and an
archive holding any entry with `..`, an absolute path or a link is refused outright.
Everything happens in a temporary folder beside DEST that is renamed into place only
when all 1,800 hashes match; on any failure (or Ctrl-C) it is removed, so DEST is either
complete or absent.

Standard library only (urllib, zipfile, hashlib) plus rich for the progress bars.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import shlex
import shutil
import stat
import tempfile
import urllib.error
import urllib.request
import zipfile
import zlib
from importlib import resources
from pathlib import Path, PurePosixPath

DEFAULT_DEST = "data/NEU-CLS"
REPOSITORY = "aviralchharia/Surface-Defect-Detection-in-Hot-Rolled-Steel-Strips"
COMMIT = "2a1e01db3b04a6eb9502b73e30fc88a6bb242575"
DEFAULT_URL = f"https://github.com/{REPOSITORY}/archive/{COMMIT}.zip"
HASH_FILE = "NEU-CLS.sha256"

LICENCE = (
    "NEU-CLS is released by its authors (Northeastern University, China) for academic "
    "research use only; it is not for commercial use."
)
CITATION = (
    'K. Song and Y. Yan, "A noise robust method based on completed local binary patterns '
    'for hot-rolled steel strip surface defects," Applied Surface Science 285 (2013) 858-864.'
)

# Every NEU-CLS file is 41,078 bytes; anything far larger is not one of them (zip bomb).
MAX_ENTRY_BYTES = 16 * 1024 * 1024
# The pinned archive is ~80 MB; an endless or absurd stream stops here.
MAX_ARCHIVE_BYTES = 2 * 1024**3
CHUNK = 1 << 16


class DownloadError(RuntimeError):
    """A download that cannot be trusted or completed. str() names the URL or the file."""


def download_command(dest: str | os.PathLike = DEFAULT_DEST) -> str:
    """The exact command that fetches NEU-CLS into `dest` (quoted for a POSIX shell)."""
    return f"python -m neu download {shlex.quote(str(dest))}"


def expected_hashes() -> dict[str, str]:
    """{file name: sha256 hex} of the 1,800 NEU-CLS images, from the package's hash list."""
    text = resources.files("neu").joinpath(HASH_FILE).read_text(encoding="utf-8")
    return parse_hash_list(text)


def parse_hash_list(text: str) -> dict[str, str]:
    """`sha256sum` output ("<hex>  NEU-CLS/Cr_1.bmp") -> {"Cr_1.bmp": "<hex>"}."""
    hashes = {}
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        digest, _, name = line.strip().partition("  ")
        name = PurePosixPath(name.lstrip("*")).name
        if len(digest) != 64 or not name or name in hashes:
            raise ValueError(f"{HASH_FILE} line {n}: expected '<sha256>  <name>', got {line!r}")
        hashes[name] = digest.lower()
    return hashes


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def verify_folder(folder: Path, hashes: dict[str, str]) -> list[str]:
    """Names of expected files that are missing from `folder` or differ from their hash."""
    bad = []
    for name, digest in hashes.items():
        path = folder / name
        if not path.is_file() or sha256_file(path) != digest:
            bad.append(name)
    return bad


# --- the archive ----------------------------------------------------------------------------


def unsafe_entry(info: zipfile.ZipInfo) -> str | None:
    """Why extracting this entry anywhere could escape the destination, or None if it cannot."""
    name = info.filename
    parts = PurePosixPath(name.replace("\\", "/")).parts
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        return "absolute path"
    if ".." in parts:
        return "'..' in path"
    # Unix mode bits live in the high 16 bits; a link's "content" is its target path.
    if stat.S_ISLNK(info.external_attr >> 16):
        return "symbolic link"
    return None


def check_archive(zf: zipfile.ZipFile, source: str) -> None:
    """Refuse the whole archive when any entry could be written outside the destination."""
    bad = [(i.filename, why) for i in zf.infolist() if (why := unsafe_entry(i))]
    if bad:
        listed = ", ".join(f"{name!r} ({why})" for name, why in bad[:5])
        more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
        raise DownloadError(
            f"refusing archive from {source}: unsafe entries {listed}{more}. Nothing was "
            "extracted; use the default URL or an archive you trust."
        )


def extract_verified(
    zf: zipfile.ZipFile, folder: Path, hashes: dict[str, str], *, source: str, progress=None
) -> None:
    """Write every expected image flat into `folder`, checking each against its SHA-256.

    Entries are matched by their base name; everything else in the archive is ignored.
    Output names come from `hashes`, never from the archive. When an archive holds a name
    twice, the first copy with the right hash wins.
    """
    check_archive(zf, source)
    candidates: dict[str, list[zipfile.ZipInfo]] = {}
    for info in zf.infolist():
        name = PurePosixPath(info.filename.replace("\\", "/")).name
        if name in hashes and not info.is_dir():
            candidates.setdefault(name, []).append(info)
    missing = [n for n in hashes if n not in candidates]
    if missing:
        raise DownloadError(
            f"archive from {source} lacks {len(missing)} of the {len(hashes)} NEU-CLS images "
            f"(first: {', '.join(missing[:5])}); it is not a complete NEU-CLS archive"
        )
    task = progress.add_task("verifying", total=len(hashes)) if progress else None
    for name, digest in hashes.items():
        got = None
        for info in candidates[name]:
            got = _extract_one(zf, info, folder / name, source)
            if got == digest:
                break
            (folder / name).unlink()
        if got != digest:
            raise DownloadError(
                f"{name}: SHA-256 mismatch in archive from {source} (expected {digest}, got "
                f"{got}); the archive is corrupted or not the original NEU-CLS. Nothing was "
                "kept."
            )
        if progress:
            progress.advance(task)


def _extract_one(zf: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path, source: str) -> str:
    """Copy one entry to `target` (a new file), return its SHA-256; bounded in size."""
    h = hashlib.sha256()
    size = 0
    try:
        with zf.open(info) as src, open(target, "xb") as dst:
            while chunk := src.read(CHUNK):
                size += len(chunk)
                if size > MAX_ENTRY_BYTES:
                    raise DownloadError(
                        f"{info.filename} in archive from {source} is larger than "
                        f"{MAX_ENTRY_BYTES >> 20} MiB: not a NEU-CLS image; refusing it"
                    )
                h.update(chunk)
                dst.write(chunk)
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError) as e:
        raise DownloadError(
            f"{info.filename}: cannot be read from archive from {source} ({e}); the download "
            "is corrupted or truncated"
        ) from None
    return h.hexdigest()


# --- the transfer ---------------------------------------------------------------------------


def fetch(url: str, target: Path, *, progress=None, timeout: float = 60.0) -> int:
    """Stream `url` into `target`; return the byte count. Errors name the URL."""
    request = urllib.request.Request(url, headers={"User-Agent": "neu-bench-download"})
    size = 0
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            task = progress.add_task("downloading", total=total) if progress else None
            with open(target, "xb") as f:
                while chunk := response.read(CHUNK):
                    size += len(chunk)
                    if size > MAX_ARCHIVE_BYTES:
                        raise DownloadError(
                            f"{url} sent more than {MAX_ARCHIVE_BYTES >> 30} GiB; NEU-CLS is "
                            "~80 MB. Stopped."
                        )
                    f.write(chunk)
                    if progress:
                        progress.update(task, completed=size)
            if total is not None and size != total:
                raise DownloadError(f"download from {url} truncated: got {size} of {total} bytes")
    except urllib.error.HTTPError as e:
        raise DownloadError(f"HTTP {e.code} {e.reason} from {url}") from None
    except urllib.error.URLError as e:
        raise DownloadError(
            f"cannot reach {url} ({e.reason}). Check the network connection, or pass --url "
            "with a reachable copy of the archive."
        ) from None
    except http.client.IncompleteRead as e:
        raise DownloadError(
            f"download from {url} truncated: the connection closed after "
            f"{size + len(e.partial)} bytes ({e.expected} more were announced)"
        ) from None
    except (TimeoutError, ConnectionError, http.client.HTTPException) as e:
        raise DownloadError(
            f"download from {url} failed after {size} bytes ({type(e).__name__}: {e})"
        ) from None
    return size


def _progress():
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    return (
        Progress(
            TextColumn("{task.description:>11}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
        ),
        Progress(TextColumn("{task.description:>11}"), BarColumn(), MofNCompleteColumn()),
    )


def download(
    dest: str | os.PathLike = DEFAULT_DEST,
    *,
    url: str = DEFAULT_URL,
    hashes: dict[str, str] | None = None,
    console=None,
    show_progress: bool = True,
) -> Path:
    """Download, verify and place NEU-CLS flat in `dest`. Returns `dest`.

    Raises FileExistsError when `dest` exists (never overwritten) and DownloadError for
    anything that goes wrong on the way; in both cases nothing new is left on disk.
    """
    from rich.console import Console

    console = console or Console(highlight=False, stderr=True, soft_wrap=True)
    hashes = hashes if hashes is not None else expected_hashes()
    dest = Path(dest).expanduser()
    if dest.exists() or dest.is_symlink():
        raise FileExistsError(dest)
    parent = dest.parent
    # Folders this call creates (e.g. data/) are removed again if it fails.
    created = [p for p in (parent, *parent.parents) if not p.exists()]
    parent.mkdir(parents=True, exist_ok=True)
    # Beside dest, on the same filesystem, so the final rename is atomic.
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.download-", dir=parent))
    done = False
    try:
        staged = tmp / dest.name
        staged.mkdir()
        _fetch_and_extract(url, tmp / "archive.zip", staged, hashes, console, show_progress)
        if dest.exists():  # appeared while we downloaded: still never clobber it
            raise FileExistsError(dest)
        os.rename(staged, dest)
        done = True
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if not done:
            for folder in created:  # deepest first
                with contextlib.suppress(OSError):
                    folder.rmdir()
    return dest


def _fetch_and_extract(
    url: str, archive: Path, staged: Path, hashes: dict[str, str], console, show_progress: bool
) -> None:
    """Fetch the zip to `archive`, extract and verify the expected files into `staged`, then
    delete the archive."""
    bytes_bar, files_bar = _progress() if show_progress else (None, None)
    console.print(f"downloading NEU-CLS from {url}", markup=False)
    if bytes_bar:
        with bytes_bar:
            size = fetch(url, archive, progress=bytes_bar)
    else:
        size = fetch(url, archive)
    try:
        zf = zipfile.ZipFile(archive)
    except zipfile.BadZipFile as e:
        raise DownloadError(
            f"the {size} bytes from {url} are not a zip archive ({e}); the download is "
            "truncated or corrupted, or the URL serves something else"
        ) from None
    with zf:
        if files_bar:
            with files_bar:
                extract_verified(zf, staged, hashes, source=url, progress=files_bar)
        else:
            extract_verified(zf, staged, hashes, source=url)
    archive.unlink()


def existing_status(dest: Path, hashes: dict[str, str] | None = None) -> tuple[int, int]:
    """(files that match their hash, expected files) for an existing folder."""
    hashes = hashes if hashes is not None else expected_hashes()
    return len(hashes) - len(verify_folder(dest, hashes)), len(hashes)


def licence_text() -> str:
    return f"Licence: {LICENCE}\nCite: {CITATION}"


__all__ = [
    "CITATION",
    "DEFAULT_DEST",
    "DEFAULT_URL",
    "DownloadError",
    "LICENCE",
    "download",
    "download_command",
    "existing_status",
    "expected_hashes",
    "extract_verified",
    "fetch",
    "licence_text",
    "parse_hash_list",
    "unsafe_entry",
    "verify_folder",
]
