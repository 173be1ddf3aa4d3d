"""`python -m neu {inspect,download}`: check a dataset folder, or fetch NEU-CLS.

Only parses arguments and dispatches; the work is in neu.inspect.inspect_dataset and
neu.download.download.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    from neu.layout import LAYOUTS

    parser = argparse.ArgumentParser(prog="python -m neu", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("inspect", help="classes, counts, sizes, duplicates, problems of a folder")
    p.add_argument("path", help="dataset folder (NEU-CLS, class folders, Kaggle or NEU-DET)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    p.add_argument("--layout", default="auto", choices=("auto", *LAYOUTS))
    p.add_argument("--exclude-bad", action="store_true", help="report bad files as excluded")
    p.add_argument("--image-size", type=int, default=200, help="decode size (default 200)")
    d = sub.add_parser(
        "download",
        help="fetch NEU-CLS (1,800 BMPs) from a pinned archive, verify every file's SHA-256",
    )
    d.add_argument("dest", nargs="?", default="data/NEU-CLS", help="folder to create")
    d.add_argument("--url", help="another archive (zip) holding the same images")
    args = parser.parse_args(argv)
    if args.command == "download":
        return _download(args)

    from neu.inspect import inspect_dataset, print_inspect

    report = inspect_dataset(
        args.path, layout=args.layout, exclude_bad=args.exclude_bad, image_size=args.image_size
    )
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_inspect(report)
    return 0 if report["usable"] else 1


def _download(args) -> int:
    from rich.console import Console

    from neu.download import (
        DEFAULT_URL,
        DownloadError,
        download,
        existing_status,
        expected_hashes,
        licence_text,
    )

    err = Console(stderr=True, highlight=False, soft_wrap=True)
    try:
        dest = download(args.dest, url=args.url or DEFAULT_URL, console=err)
    except FileExistsError:
        ok, total = existing_status(Path(args.dest))
        if ok == total:
            print(f"{args.dest} already holds all {total} NEU-CLS files, each verified.")
            print(licence_text())
            return 0
        err.print(
            f"error: {args.dest} already exists and is not a complete NEU-CLS copy ({ok} of "
            f"{total} files match their SHA-256); not touching it. Delete it or pick another "
            "folder.",
            style="bold red",
            markup=False,
        )
        return 2
    except DownloadError as e:
        err.print(f"error: {e}", style="bold red", markup=False)
        err.print(f"Nothing was written to {args.dest}.", markup=False)
        return 1
    except KeyboardInterrupt:
        err.print(f"interrupted: nothing was written to {args.dest}", markup=False)
        return 130
    print(f"{dest}: {len(expected_hashes()):,} NEU-CLS images, every SHA-256 verified.")
    print(licence_text())
    print(f"Next: python -m neu inspect {dest}   or   python -m bench run --data {dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
