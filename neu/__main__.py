"""`python -m neu inspect PATH`: what is in a dataset folder, and is it usable?

Only parses arguments and dispatches; the work is in neu.dataset.inspect_dataset.
"""

from __future__ import annotations

import argparse
import json
import sys


def main(argv: list[str] | None = None) -> int:
    from neu.dataset import LAYOUTS

    parser = argparse.ArgumentParser(prog="python -m neu", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("inspect", help="classes, counts, sizes, duplicates, problems of a folder")
    p.add_argument("path", help="dataset folder (NEU-CLS, class folders, Kaggle or NEU-DET)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    p.add_argument("--layout", default="auto", choices=("auto", *LAYOUTS))
    p.add_argument("--exclude-bad", action="store_true", help="report bad files as excluded")
    p.add_argument("--image-size", type=int, default=200, help="decode size (default 200)")
    args = parser.parse_args(argv)

    from neu.dataset import inspect_dataset, print_inspect

    report = inspect_dataset(
        args.path, layout=args.layout, exclude_bad=args.exclude_bad, image_size=args.image_size
    )
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_inspect(report)
    return 0 if report["usable"] else 1


if __name__ == "__main__":
    sys.exit(main())
