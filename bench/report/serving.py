"""report.md's serving section: the raw-pixel copies' parity and the model repository, from results.json."""

from __future__ import annotations


def serving_markdown(results: dict) -> list[str]:
    """report.md: the raw-pixel copies' parity and the repository's models (results.json)."""
    rows = []
    for entry in results.get("exports") or []:
        for record in (entry, entry.get("recommended") or {}):
            raw = record.get("raw_pixel")
            if raw:
                rows.append(
                    f"| {raw['path']} | {raw['images']} ({raw['images_source']}) | "
                    f"{raw['max_abs_logit_diff']:.2e} | {raw['top1_disagreements']} | "
                    f"{'PASS' if raw['passed'] else 'FAIL'} |"
                )
    parts = []
    if rows:
        parts += [
            "### Raw-pixel files (uint8 in, preprocessing in the graph) vs the plain files",
            "| file | images | max \\|Δ logit\\| | top-1 flips | parity |\n|---|---|---|---|---|\n"
            + "\n".join(rows),
        ]
    repo = results.get("repository") or {}
    if repo.get("models"):
        lines = [
            f"| {m['folder']} | {m['version']} | {m['input_kind']} {m['precision']} | "
            f"{m['max_batch_size']} | {m['max_queue_delay_microseconds']} | {m['instance_kind']} |"
            for m in repo["models"]
        ]
        parts += [
            f"### Model repository `{repo['path']}` (Triton / OpenVINO Model Server)",
            "| model | version | input | max_batch_size | queue delay (us) | instances |\n"
            "|---|---|---|---|---|---|\n" + "\n".join(lines),
        ]
    return parts
