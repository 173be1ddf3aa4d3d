"""The checkpoint format: what `bench run` saves as best.pt, and how a model is rebuilt from it.

One module owns the format so that its writer (bench.train.loop) and its readers (`bench speed
--checkpoint`, the export step, `python -m exports verify --checkpoint`) cannot drift apart,
and so that exports/ rebuilds a trained network without importing the bench harness: data
flows neu -> exports -> bench, never back. The torch-free deployment runtime
(exports.runtime) never imports this module; it imports torch.

A checkpoint is a plain dict saved with torch.save and read back with weights_only=True:
`format`, `model` (architecture name), `classes`, `num_classes`, `state_dict`, and the
preprocessing and provenance an export must carry (image_size, channels, mean, std,
val_accuracy, dataset_hash, split_hash, split, weights, seed, epoch).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
import torchvision
from torch import nn

FORMAT = 1

# Keys every checkpoint carries besides the weights; an export's metadata is built from them.
META_KEYS = (
    "model", "classes", "num_classes", "image_size", "channels", "mean", "std",
    "val_accuracy", "dataset_hash", "split_hash", "split", "weights", "seed", "epoch",
)  # fmt: skip

# GoogLeNet and Inception v3 add auxiliary classifiers in train mode: their forward then
# returns a tuple, not logits, and their heads have ImageNet's 1000 outputs. neu-bench trains
# one head with one loss, so they are built without (as torchvision's pretrained models are
# used for inference); init_weights=True keeps torchvision's initialisation, stated to
# silence its warning.
NO_AUX = {"googlenet": {"aux_logits": False, "init_weights": True},
          "inception_v3": {"aux_logits": False, "init_weights": True}}  # fmt: skip


def torchvision_model(name: str, weights=None) -> nn.Module:
    """torchvision's `name` as neu-bench builds it (no auxiliary heads), ImageNet's head."""
    return torchvision.models.get_model(name, weights=weights, **NO_AUX.get(name, {}))


def classifier_head(model: nn.Module) -> tuple[str, nn.Linear]:
    """The classifier: the last nn.Linear registered in the model.

    That covers torchvision's conventions: `fc` (ResNet, ShuffleNet), `classifier` as a Linear
    (DenseNet) or a Sequential ending in one (VGG, MobileNet, EfficientNet), `heads.head` (ViT).
    """
    last = None
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            last = (name, module)
    if last is None:
        raise ValueError(
            f"{type(model).__name__} has no nn.Linear classifier head to replace; "
            "pick a model with a Linear head (e.g. resnet50, vgg16_bn, densenet121)"
        )
    return last


def head_parameter_names(model: nn.Module) -> set[str]:
    name, head = classifier_head(model)
    return {f"{name}.{p}" for p, _ in head.named_parameters()}


def replace_head(model: nn.Module, num_classes: int) -> nn.Module:
    """A fresh nn.Linear with one output per class in place of the classifier head."""
    name, old = classifier_head(model)
    parent = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
    setattr(parent, name.rsplit(".", 1)[-1], nn.Linear(old.in_features, num_classes))
    return model


def build_architecture(name: str, *, num_classes: int) -> nn.Module:
    """The untrained torchvision network `name` with a `num_classes` head (weights to load)."""
    return replace_head(torchvision_model(name), num_classes)


def make_checkpoint(network: nn.Module, /, **meta) -> dict:
    """The dict `bench run` saves as best.pt: the weights (on CPU) plus every META_KEYS entry."""
    missing = [k for k in META_KEYS if k not in meta]
    unknown = [k for k in meta if k not in META_KEYS]
    if missing or unknown:
        raise TypeError(f"checkpoint metadata: missing {missing}, unknown {unknown}")
    state = {k: v.detach().cpu().clone() for k, v in network.state_dict().items()}
    return {"format": FORMAT, **meta, "state_dict": state}


def read_checkpoint(path: str | Path, *, map_location="cpu") -> dict:
    """The checkpoint dict at `path`, checked to be one (weights_only: no code runs)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found; pass the best.pt of a bench run")
    blob = torch.load(path, map_location=map_location, weights_only=True)
    if not isinstance(blob, dict) or blob.get("format") != FORMAT or "state_dict" not in blob:
        raise ValueError(
            f"{path} is not a neu-bench checkpoint (format {FORMAT}); pass the best.pt that "
            "`python -m bench run` wrote under <out>/<model>/seed<N>/"
        )
    missing = [k for k in ("model", "num_classes") if k not in blob]
    if missing:
        raise ValueError(f"{path}: neu-bench checkpoint without {missing}; it cannot be rebuilt")
    return blob


def load_checkpoint(
    path: str | Path,
    *,
    map_location="cpu",
    build: Callable[[str, int], nn.Module] | None = None,
) -> tuple[nn.Module, dict]:
    """A best.pt -> (model in eval mode, its metadata without the weights).

    `build(name, num_classes)` makes the empty network; the default is torchvision's
    architecture (what bench's registry builds). bench passes its registry so that a model
    registered with `register_model` is rebuilt by its own builder.
    """
    blob = read_checkpoint(path, map_location=map_location)
    make = build or (lambda name, n: build_architecture(name, num_classes=n))
    model = make(blob["model"], blob["num_classes"])
    model.load_state_dict(blob["state_dict"])
    return model.eval(), {k: v for k, v in blob.items() if k != "state_dict"}


def export_metadata(meta: dict, **figures) -> dict[str, str]:
    """The neu_bench.* metadata of an ONNX export of the checkpoint whose metadata is `meta`.

    Preprocessing and provenance come from the checkpoint itself (never defaults), so the
    export preprocesses exactly as the network was trained. `figures` adds or overrides what
    the checkpoint cannot know: test_accuracy / test_images (measured after it was saved),
    val_accuracy of the row, or `weights` naming the file it came from.
    """
    from exports.export import build_metadata

    fields = {
        "model_name": meta["model"],
        **{k: meta[k] for k in ("classes", "image_size", "channels", "mean", "std")},
        **{k: meta[k] for k in ("dataset_hash", "split_hash", "split", "weights")},
        "val_accuracy": meta.get("val_accuracy"),
    }
    return build_metadata(**{**fields, **figures})
