"""After export: raw-pixel copies (--embed-preprocessing) and the model repository
(--export-repository DIR) of every exported file, proven on the same test images."""

from __future__ import annotations

from pathlib import Path


def serve_exports(
    results: dict, out: Path, ctx, opts, reporter, contexts=None
) -> tuple[dict, list[dict]]:
    """For each export entry that passed parity: its FP32 file and the recommended ONNX
    variant. Raw-pixel parity is checked on every image the entry's parity used (uint8, as
    decoded). results is only read.

    Returns (section, findings). section: the results.json keys this step owns, `repository`
    (with --export-repository: the folder and every model written there). findings: one per
    file served, {"entry": index in results["exports"], "file": "fp32" | "recommended",
    "record": {"raw_pixel": figures} or {"raw_pixel_error": why}}, which the export step
    records in its own entries (an error fails the entry's parity)."""
    repo = Path(opts.export_repository) if opts.export_repository else None
    section = {"repository": {"path": str(repo), "models": []}} if repo is not None else {}
    written = section["repository"]["models"] if repo is not None else None
    gpu = ctx.device.type == "cuda"
    findings = []
    for i, entry in enumerate(results.get("exports") or []):
        if entry.get("error") or not entry.get("parity_passed"):
            continue
        pixels, source = _pixels((contexts or {}).get(entry.get("fold"), ctx), entry)
        targets = [("fp32", out / entry["path"], "fp32")]
        rec = entry.get("recommended") or {}
        if rec.get("kind") == "onnx" and rec["path"] != entry["path"]:
            targets.append(("recommended", out / rec["path"], rec.get("precision", "fp32")))
        for file, path, precision in targets:
            record = _serve_file(
                path, precision, model=entry["model"], pixels=pixels, source=source, out=out,
                opts=opts, repo=repo, written=written, speed_rows=results.get("speed") or [],
                gpu=gpu, reporter=reporter,
            )  # fmt: skip
            if record:
                findings.append({"entry": i, "file": file, "record": record})
    return section, findings


def _serve_file(path: Path, precision, *, model, pixels, source, out: Path, opts, repo,
                written, speed_rows, gpu, reporter) -> dict:  # fmt: skip
    """One file: its raw-pixel copy (--embed-preprocessing) and its model in the repository
    folder `repo` (when not None; `written` collects what add_model wrote). Returns what the
    export entry records about the file (raw_pixel, raw_pixel_error)."""
    from exports.rawpixel import embed_preprocessing, raw_path_for
    from exports.repository import add_model, serving_from_rows

    name = f"[{model}] {path.name}"
    record: dict = {}
    try:
        served = path
        if opts.embed_preprocessing:
            figures = embed_preprocessing(path, pixels=pixels, source=source)
            served = raw_path_for(path)
            figures["path"] = str(served.relative_to(out))
            record["raw_pixel"] = figures
            reporter.log(
                f"{name}: raw-pixel copy {figures['path']}, parity on {figures['images']} "
                f"{source} images: max |delta logit| {figures['max_abs_logit_diff']:.3g}, "
                f"{figures['top1_disagreements']} top-1 flips"
            )
        if repo is not None:
            config = serving_from_rows(speed_rows, model=model, precision=precision, gpu=gpu)
            w = add_model(repo, served, serving=config, pixels=pixels, pixels_source=source,
                          gpu=gpu)  # fmt: skip
            written.append(w)
            reporter.log(f"{name}: served as {w['path']}")
    except Exception as e:  # recorded; the run's exit code says the export failed
        record["raw_pixel_error"] = f"{type(e).__name__}: {e}"
        reporter.warn(f"{name}: raw-pixel / repository step failed: {e}")
    return record


def _pixels(rctx, entry: dict):
    """The uint8 (N, C, S, S) images the entry's parity ran on, or None (synthetic)."""
    split = entry.get("images", "val")
    idx = rctx.test_idx if split == "test" else rctx.val_idx
    raw = rctx.gather(idx).cpu().numpy()
    size = rctx.recipe.image_size
    if raw.shape[-2:] != (size, size):  # the cache holds another size: no pixel-exact feed
        return None, ""
    return raw, f"{split} split"
