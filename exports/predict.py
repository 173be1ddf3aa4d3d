"""`python -m exports predict`: classify image files and folders with an exported model."""

from __future__ import annotations

import json
import sys

from exports.console import print_table
from exports.runtime import Classifier, collect_images, deployment_warning


def predict(clf: Classifier, args) -> int:
    warning = deployment_warning(clf.info, clf.path)
    if warning:
        print(f"warning: {warning}", file=sys.stderr)
    images, skipped = collect_images(args.images)
    if skipped:
        names = ", ".join(str(s) for s in skipped[:5])
        more = f" (and {len(skipped) - 5} more)" if len(skipped) > 5 else ""
        print(f"skipped {len(skipped)} non-image files in folders: {names}{more}", file=sys.stderr)
    if not images:
        print(f"error: no images found in {' '.join(args.images)}", file=sys.stderr)
        return 1
    if clf.threshold is None:
        why = clf.threshold_source.removeprefix("none: ")
        print(
            f"note: no review threshold in {clf.path.name} ({why}): "
            "every image gets decision 'review'; pass --threshold T to decide automatically "
            "at and above T.",
            file=sys.stderr,
        )
    results = clf.iter_predict_files(images, batch_size=args.batch_size)
    failed = 0
    if args.json:
        decision = {"temperature": clf.temperature, "threshold": clf.threshold}
        for r in results:
            failed += "error" in r
            print(json.dumps(r if "error" in r else {**r, **decision}), flush=True)
    else:
        threshold = "none" if clf.threshold is None else f"{clf.threshold:.4f}"
        title = (
            f"{clf.info.model} ({clf.path.name}, {clf.info.precision}, {clf.provider}; "
            f"temperature {clf.temperature:.3f}, review threshold {threshold})"
        )
        failed = print_table(title, results, decisions=True)
    if failed:
        print(f"{failed} of {len(images)} images could not be classified", file=sys.stderr)
    return 1 if failed else 0
