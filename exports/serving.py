"""`python -m exports repository` and `python -m exports client`: run the parsed command."""

from __future__ import annotations

import json
import sys


def main(args) -> int:
    return repository(args) if args.command == "repository" else client(args)


def repository(args) -> int:
    from exports.rawpixel import RawParityError
    from exports.repository import RepositoryError, write_repository
    from exports.runtime import ModelFormatError

    gpu = {"auto": None, "cpu": False, "gpu": True}[args.instance_kind]
    try:
        written = write_repository(args.sources, args.out, raw=not args.plain_input, gpu=gpu)
    except (RepositoryError, ModelFormatError, RawParityError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for w in written:
        if args.json:
            print(json.dumps(w, sort_keys=True))
            continue
        again = " (same file: latest version kept)" if w["reused_version"] else ""
        print(
            f"{w['path']}: {w['input_kind']} input, {w['precision']}, max_batch_size "
            f"{w['max_batch_size']}, queue delay {w['max_queue_delay_microseconds']} us, "
            f"{w['instance_kind']}{again}"
        )
    return 0


def client(args) -> int:
    from exports.client import ServerError, connect, describe, iter_classify
    from exports.console import print_table
    from exports.runtime import collect_images

    images, skipped = collect_images(args.images)
    if skipped:
        print(f"skipped {len(skipped)} non-image files in folders", file=sys.stderr)
    if not images:
        print(f"error: no images found in {' '.join(args.images)}", file=sys.stderr)
        return 1
    try:
        conn = connect(args.url, timeout=args.timeout)
        served = describe(conn, args.model, url=args.url, labels=args.labels)
        results = iter_classify(conn, served, images, batch_size=args.batch_size)
        failed = 0
        if args.json:
            for r in results:
                failed += "error" in r
                print(json.dumps(r), flush=True)
        else:
            failed = print_table(f"{served.name} (at {args.url}, {served.platform})", results)
    except ServerError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # the server refused a request: its message says why
        print(f"error: {args.url} answered {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    if failed:
        print(f"{failed} of {len(images)} images could not be classified", file=sys.stderr)
    return 1 if failed else 0
