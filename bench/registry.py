"""Model registry: the four architectures of the benchmark, plus any torchvision classifier.

Like torchvision's: `register_model`, sorted `list_models()`, `get_model(name)` that raises
`ValueError("Unknown model 'x'; choose from: ...")`. `build_model` puts a fresh head with one
output per dataset class on the network (never ImageNet's 1000, never the tutorial's 21).
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Callable
from pathlib import Path

import torch
import torchvision
from torch import nn

from exports.checkpoint import (
    NO_AUX,
    head_parameter_names,
    replace_head,
    torchvision_model,
)
from exports.checkpoint import load_checkpoint as _load_checkpoint

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}

# `--models all` means these: one classic residual net, one plain deep net, one densely
# connected net and one mobile net.
DEFAULT_MODELS = ("densenet121", "resnet50", "shufflenet_v2_x1_0", "vgg16_bn")


def register_model(name: str | None = None):
    def wrap(fn):
        key = name or fn.__name__
        if key in _REGISTRY:
            raise ValueError(f"model {key!r} registered twice")
        _REGISTRY[key] = fn
        return fn

    return wrap


def min_image_size(name: str) -> int:
    """The smallest square input side `name` accepts, from torchvision's weights metadata
    (ViTs take exactly their built size: 224 px from scratch); 32 px at least."""
    if name.startswith("vit_"):
        return 224
    weights = imagenet_weights(name)
    size = weights.meta.get("min_size") if weights is not None else None
    return max(size[0], 32) if size else 32


def _torchvision_builder(name: str) -> Callable[..., nn.Module]:
    def build(weights=None) -> nn.Module:
        return torchvision_model(name, weights=weights)

    build.__name__ = name
    build.__doc__ = f"torchvision.models.{name}"
    return build


for _name in DEFAULT_MODELS:
    register_model(_name)(_torchvision_builder(_name))


def list_models() -> list[str]:
    """The registered models, sorted."""
    return sorted(_REGISTRY)


def _torchvision_classifiers() -> list[str]:
    return sorted(torchvision.models.list_models(module=torchvision.models))


def get_model(name: str) -> Callable[..., nn.Module]:
    """The builder for `name`: a registered model or any torchvision classification model."""
    if name in _REGISTRY:
        return _REGISTRY[name]
    if name in _torchvision_classifiers():
        return _torchvision_builder(name)
    raise ValueError(
        f"Unknown model {name!r}; choose from: {', '.join(list_models())} "
        "(or any torchvision classification model, e.g. resnet18, efficientnet_b0)"
    )


def resolve_models(spec: str) -> list[str]:
    """'all', a comma list, or fnmatch patterns ('resnet*') -> model names, in given order.

    Every name is checked before any work starts, so a typo fails in a second, not after
    an hour of training the models before it.
    """
    names: list[str] = []
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        if part == "all":
            matched = list(DEFAULT_MODELS)
        elif any(c in part for c in "*?["):
            matched = fnmatch.filter(list_models(), part) or fnmatch.filter(
                _torchvision_classifiers(), part
            )
            if not matched:
                raise ValueError(
                    f"--models pattern {part!r} matches no model; choose from: "
                    f"{', '.join(list_models())} or torchvision classification models"
                )
        else:
            get_model(part)
            matched = [part]
        names += [m for m in matched if m not in names]
    if not names:
        raise ValueError("--models is empty; use 'all', a comma list or a pattern like 'resnet*'")
    return names


# --- weights ---------------------------------------------------------------------------------


class WeightsUnavailableError(RuntimeError):
    pass


def imagenet_weights(name: str):
    """torchvision's default ImageNet weights enum for `name`, or None if it has none."""
    try:
        return torchvision.models.get_model_weights(name).DEFAULT
    except (ValueError, KeyError, AttributeError):
        return None


def weights_cache_file(weights) -> Path:
    # torchvision downloads with torch.hub.load_state_dict_from_url into <hub>/checkpoints.
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights.url)


def fetch_imagenet_weights(name: str) -> dict:
    """The ImageNet state dict from the TORCH_HOME cache, downloading it if possible.

    Raises WeightsUnavailableError naming the file, the cache folder and `--weights none`.
    """
    weights = imagenet_weights(name)
    if weights is None:
        raise WeightsUnavailableError(
            f"torchvision has no ImageNet weights for {name!r}; use --weights none"
        )
    target = weights_cache_file(weights)
    try:
        return weights.get_state_dict(progress=False, check_hash=True)
    except Exception as e:  # offline, proxy, truncated download...
        raise WeightsUnavailableError(
            f"cannot obtain ImageNet weights for {name} ({type(e).__name__}: {e}). "
            f"Download {weights.url} and put it at {target} (cache folder {target.parent}, "
            "set by TORCH_HOME), or train from scratch with --weights none."
        ) from e


def build_model(name: str, *, num_classes: int, weights: str = "none") -> nn.Module:
    """`name` with a fresh `num_classes` head. weights: 'none', 'imagenet' or a .pt path.

    ImageNet weights are loaded into the 1000-class network before its head is replaced, so
    the check that every backbone tensor matched is torchvision's own strict load.
    """
    builder = get_model(name)
    model = builder(weights=None)
    if weights == "imagenet":
        state = fetch_imagenet_weights(name)
        if name in NO_AUX:  # built without the auxiliary heads: their weights have no home
            state = {
                k: v for k, v in state.items() if not k.startswith(("aux1.", "aux2.", "AuxLogits."))
            }
        model.load_state_dict(state)
        replace_head(model, num_classes)
    elif weights == "none":
        replace_head(model, num_classes)
    else:
        replace_head(model, num_classes)
        _load_weights_file(model, Path(weights), name)
    return model


def _load_weights_file(model: nn.Module, path: Path, name: str) -> None:
    if not path.is_file():
        raise WeightsUnavailableError(
            f"--weights {path}: no such file; give a checkpoint (best.pt) or state dict, "
            "or use --weights imagenet|none"
        )
    blob = torch.load(path, map_location="cpu", weights_only=True)
    state = blob.get("state_dict", blob) if isinstance(blob, dict) else None
    if not isinstance(state, dict):
        raise WeightsUnavailableError(f"--weights {path}: not a state dict or neu-bench checkpoint")
    own = model.state_dict()
    head = head_parameter_names(model)
    # A head trained for another class count is dropped: the new head starts fresh.
    state = {k: v for k, v in state.items() if not (k in head and v.shape != own[k].shape)}
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if k not in head]
    if missing or unexpected:
        raise WeightsUnavailableError(
            f"--weights {path} does not fit {name}: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}"
        )


def resolve_weights(name: str, requested: str) -> str:
    """'auto' -> 'imagenet' when obtainable, else 'none'. Other values are checked early."""
    if requested == "auto":
        try:
            fetch_imagenet_weights(name)
            return "imagenet"
        except WeightsUnavailableError:
            return "none"
    if requested == "imagenet":
        fetch_imagenet_weights(name)  # fail before training, with the fix in the message
    return requested


# --- checkpoints ---------------------------------------------------------------------------


def load_checkpoint(path: str | Path, *, map_location="cpu") -> tuple[nn.Module, dict]:
    """A `best.pt` written by `bench run` -> (model in eval mode, its metadata), rebuilt by this
    registry (so a model added with `register_model` works too). The format: exports.checkpoint."""
    return _load_checkpoint(
        path,
        map_location=map_location,
        build=lambda name, n: build_model(name, num_classes=n, weights="none"),
    )
