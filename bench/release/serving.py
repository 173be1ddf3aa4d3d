"""After export: raw-pixel copies (--embed-preprocessing) and the model repository
(--export-repository DIR) of every exported file, proven on the same test images."""

from __future__ import annotations

from pathlib import Path


def serve_exports(results: dict, out: Path, ctx, opts, reporter, contexts=None) -> None:
    """For each export entry that passed parity: its FP32 file and the recommended ONNX
    variant. Raw-pixel parity is checked on every image the entry's parity used (uint8, as
    decoded) and recorded in the entry; a failure marks the entry's parity as failed."""
    from exports.rawpixel import embed_preprocessing, raw_path_for
    from exports.repository import add_model, serving_from_rows

    repo = Path(opts.export_repository) if opts.export_repository else None
    if repo is not None:
        results["repository"] = {"path": str(repo), "models": []}
    gpu = ctx.device.type == "cuda"
    for entry in results.get("exports") or []:
        if entry.get("error") or not entry.get("parity_passed"):
            continue
        rctx = (contexts or {}).get(entry.get("fold"), ctx)
        pixels, source = _pixels(rctx, entry)
        targets = [(entry, out / entry["path"], "fp32")]
        rec = entry.get("recommended") or {}
        if rec.get("kind") == "onnx" and rec["path"] != entry["path"]:
            targets.append((rec, out / rec["path"], rec.get("precision", "fp32")))
        for record, path, precision in targets:
            name = f"[{entry['model']}] {path.name}"
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
                    serving = serving_from_rows(
                        results.get("speed") or [], model=entry["model"], precision=precision,
                        gpu=gpu,
                    )  # fmt: skip
                    written = add_model(repo, served, serving=serving, pixels=pixels,
                                        pixels_source=source, gpu=gpu)  # fmt: skip
                    results["repository"]["models"].append(written)
                    reporter.log(f"{name}: served as {written['path']}")
            except Exception as e:  # recorded; the run's exit code says the export failed
                record["raw_pixel_error"] = f"{type(e).__name__}: {e}"
                entry["parity_passed"] = False
                reporter.warn(f"{name}: raw-pixel / repository step failed: {e}")


def _pixels(rctx, entry: dict):
    """The uint8 (N, C, S, S) images the entry's parity ran on, or None (synthetic)."""
    split = entry.get("images", "val")
    idx = rctx.test_idx if split == "test" else rctx.val_idx
    raw = rctx.gather(idx).cpu().numpy()
    size = rctx.recipe.image_size
    if raw.shape[-2:] != (size, size):  # the cache holds another size: no pixel-exact feed
        return None, ""
    return raw, f"{split} split"
