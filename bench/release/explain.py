"""Grad-CAM overlays: where in the image the model looked for the class it predicted.

`bench run` draws one for every misclassified test image and one correct image per class of
each model's shipped checkpoint (PNGs under <out>/explain/<model>/, embedded in the report);
`bench explain RUN_DIR --model M [--images ...]` does the same for any image. Each PNG is
titled with the true class, the prediction and its calibrated probability (softmax of
logits / the model's temperature). Uses the `grad-cam` package (pytorch_grad_cam); the
torch-free deployment needs none of this.
"""

from __future__ import annotations

import fnmatch
import re
from pathlib import Path

import numpy as np
import torch

from bench.release.section import assign

# Grad-CAM layer per architecture: the last block with a spatial map (grad-cam's own advice
# for these families). Anything else: the last Conv2d of the network.
TARGET_LAYERS = {
    "resnet*": "layer4",
    "resnext*": "layer4",
    "wide_resnet*": "layer4",
    "densenet*": "features",
    "vgg*": "features",
    "shufflenet*": "conv5",
    "mobilenet*": "features",
    "efficientnet*": "features",
    "regnet*": "trunk_output",
    "convnext*": "features",
}


def target_layer(model: torch.nn.Module, name: str) -> tuple[torch.nn.Module, str]:
    """(layer, its dotted name) Grad-CAM reads the activations and gradients of."""
    for pattern, attr in TARGET_LAYERS.items():
        if fnmatch.fnmatch(name, pattern) and hasattr(model, attr):
            return getattr(model, attr), attr
    convs = [(n, m) for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)]
    if not convs:
        raise ValueError(
            f"{name} has no convolutional layer: Grad-CAM needs a spatial feature map "
            "(transformers such as ViT are not supported here)"
        )
    return convs[-1][1], convs[-1][0]


def _rgb(pixels: np.ndarray) -> np.ndarray:
    """uint8 (C, S, S) -> float32 (S, S, 3) in [0, 1] for the overlay."""
    x = pixels.astype(np.float32).transpose(1, 2, 0) / 255.0
    return np.repeat(x, 3, axis=2) if x.shape[2] == 1 else x


def _png_name(file: str, used: set[str]) -> str:
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(file).stem) or "image"
    name, k = f"{stem}.png", 1
    while name in used:
        k += 1
        name = f"{stem}_{k}.png"
    used.add(name)
    return name


def explain(
    model, name, inputs, pixels, files, classes, *, labels, temperature, out_dir, batch_size=16
) -> list[dict]:
    """Grad-CAM of the predicted class for each image; one titled PNG per image in out_dir.

    inputs: float32 (N, 3, S, S) preprocessed; pixels: uint8 (N, C, S, S) as decoded; labels:
    true class indices, or None where unknown. Returns one record per image.
    """
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.image import show_cam_on_image
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    from exports.calibration import softmax_t

    model = model.float().eval()
    layer, layer_name = target_layer(model, name)
    x = torch.as_tensor(np.asarray(inputs), dtype=torch.float32)
    with torch.no_grad():
        logits = torch.cat([model(x[i : i + batch_size]) for i in range(0, len(x), batch_size)])
    probs = softmax_t(logits.numpy(), temperature)
    preds = probs.argmax(1)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    records, used = [], set()
    with GradCAM(model=model, target_layers=[layer]) as cam:
        for start in range(0, len(x), batch_size):
            sl = slice(start, start + batch_size)
            targets = [ClassifierOutputTarget(int(k)) for k in preds[sl]]
            maps = cam(input_tensor=x[sl], targets=targets)
            for j, heat in enumerate(maps):
                i = start + j
                overlay = show_cam_on_image(_rgb(np.asarray(pixels[i])), heat, use_rgb=True)
                true = None if labels is None or labels[i] is None else classes[int(labels[i])]
                rec = {
                    "file": str(files[i]),
                    "true": true or "unknown",
                    "predicted": classes[int(preds[i])],
                    "probability": float(probs[i, preds[i]]),
                    "kind": "unlabelled"
                    if true is None
                    else ("correct" if int(labels[i]) == int(preds[i]) else "misclassified"),
                    "png": _png_name(files[i], used),
                    "layer": layer_name,
                }
                _draw(overlay, rec, out_dir / rec["png"], temperature)
                records.append(rec)
    return records


def _draw(overlay: np.ndarray, rec: dict, path: Path, temperature: float) -> None:
    from bench.report.plots import _figure, _save

    fig = _figure(3.0, 3.4)
    ax = fig.add_axes((0.02, 0.02, 0.96, 0.78))
    ax.imshow(overlay, interpolation="nearest")
    ax.set_axis_off()
    mark = "" if rec["kind"] != "misclassified" else "  (WRONG)"
    fig.text(
        0.5, 0.97,
        f"true: {rec['true']}\npredicted: {rec['predicted']}{mark}\n"
        f"p = {rec['probability']:.3f} (calibrated, T = {temperature:.2f})",
        ha="center", va="top", fontsize=8,
        color="#b00020" if rec["kind"] == "misclassified" else "black",
    )  # fmt: skip
    _save(fig, path)


# A model that has barely trained misclassifies hundreds of test images: an overlay for each
# would fill the report and hold every selected image in memory at once. The first this many
# (in split order) are drawn, and the report says how many more there were.
MAX_MISCLASSIFIED = 48


def default_selection(
    labels: np.ndarray, preds: np.ndarray, num_classes: int, max_wrong: int = MAX_MISCLASSIFIED
) -> list[int]:
    """The misclassified images (the first `max_wrong`, by position), then the first correct
    image of each class."""
    wrong = [int(i) for i in np.flatnonzero(labels != preds)][:max_wrong]
    correct = []
    for k in range(num_classes):
        hits = np.flatnonzero((labels == k) & (preds == k))
        if len(hits):
            correct.append(int(hits[0]))
    return wrong + correct


_INSTALL = "pip install grad-cam (the package pytorch_grad_cam)"


def _check_installed() -> None:
    try:
        import pytorch_grad_cam  # noqa: F401
    except ImportError as e:
        raise RuntimeError(f"Grad-CAM needs the grad-cam package: {_INSTALL} ({e})") from None


def explain_row(results: dict, out: Path, row: dict, ctx, out_dir: Path) -> tuple[list[dict], int]:
    """The default set (misclassified + one correct per class) of one trained row, and how
    many images it misclassifies in all (the set draws at most MAX_MISCLASSIFIED of them)."""
    from bench.registry import load_checkpoint
    from bench.release.calibrate import row_logits
    from bench.report.calibration import shipped_record

    _check_installed()
    name = row["model"]
    rec = shipped_record(results, name)
    t = rec["temperature"] if rec else 1.0
    d = row_logits(row, out, ctx)
    labels = d["eval_labels"]
    preds = d["eval_logits"].argmax(1)
    sel = default_selection(labels, preds, len(ctx.classes))
    index = d["eval_index"][sel]
    idx = torch.as_tensor(index, device=ctx.test_idx.device)
    raw = ctx.gather(idx)
    model, _ = load_checkpoint(Path(out) / row["checkpoint"])
    items = explain(
        model, name,
        ctx.eval_transform(raw).float().cpu().numpy(), raw.cpu().numpy(),
        [ctx.dataset.files[i] for i in index], list(ctx.classes),
        labels=labels[sel], temperature=t, out_dir=out_dir,
    )  # fmt: skip
    return items, int((labels != preds).sum())


def explain_into(results: dict, out: Path, contexts: dict, reporter) -> dict:
    """`bench run` and `bench calibrate`: the explanation step's section
    (explanations_section), assigned into results; returns the section."""
    return assign(results, explanations_section(results, out, contexts, reporter))


def explanations_section(results: dict, out: Path, contexts: dict, reporter) -> dict:
    """The explanation step's results.json section; results itself is only read (the
    calibration's temperatures title the PNGs).

    Owns: explanations (per shipped model, the records of its PNGs, paths relative to the
    run folder as the report embeds them, and how many images it misclassified)."""
    from bench.summary import best_rows

    out = Path(out)
    ex: dict = {"models": {}}
    for name, row in best_rows(results).items():
        ctx = contexts.get(row.get("fold")) or next(iter(contexts.values()))
        ex["split"] = "test" if len(ctx.test_idx) else "validation"
        try:
            items, wrong = explain_row(results, out, row, ctx, out / "explain" / name)
            for it in items:
                it["png"] = f"explain/{name}/{it['png']}"
            ex["models"][name] = items
            ex.setdefault("misclassified_total", {})[name] = wrong
            if items:
                ex["layer_note"] = "each model's last convolutional block (`layer` per image)"
            reporter.log(f"[{name}] Grad-CAM: {len(items)} overlays in {out / 'explain' / name}")
        except Exception as e:  # explanations must never cost the run its numbers and exports
            ex["models"][name] = {"error": f"{type(e).__name__}: {e}"}
            reporter.warn(f"[{name}] Grad-CAM failed: {type(e).__name__}: {e}")
    return {"explanations": ex}
