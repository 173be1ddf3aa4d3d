import pytest
import torch
import torchvision

from bench.registry import (
    DEFAULT_MODELS,
    WeightsUnavailableError,
    build_model,
    get_model,
    head_parameter_names,
    imagenet_weights,
    list_models,
    min_image_size,
    resolve_models,
    resolve_weights,
    weights_cache_file,
)


def test_registry_lists_the_four_architectures_sorted():
    assert list_models() == sorted(list_models())
    assert set(DEFAULT_MODELS) <= set(list_models())
    assert set(DEFAULT_MODELS) == {"resnet50", "vgg16_bn", "densenet121", "shufflenet_v2_x1_0"}


def test_unknown_model_lists_choices():
    with pytest.raises(ValueError, match=r"Unknown model 'resnet5'; choose from: densenet121"):
        get_model("resnet5")


def test_resolve_models_all_lists_and_patterns():
    assert resolve_models("all") == list(DEFAULT_MODELS)
    assert resolve_models("vgg16_bn,resnet50") == ["vgg16_bn", "resnet50"]
    assert resolve_models("resnet*") == ["resnet50"]  # registry first
    assert resolve_models("efficientnet_b[01]") == ["efficientnet_b0", "efficientnet_b1"]
    assert resolve_models("all,resnet50") == list(DEFAULT_MODELS)  # no duplicates
    with pytest.raises(ValueError, match="matches no model"):
        resolve_models("nonet*")
    with pytest.raises(ValueError, match="Unknown model"):
        resolve_models("resnet50,typo")


@pytest.mark.slow
@pytest.mark.parametrize("name", DEFAULT_MODELS)
def test_each_architecture_forward_backward_small(name):
    torch.manual_seed(0)
    model = build_model(name, num_classes=6)
    x = torch.randn(2, 3, 32, 32)
    out = model(x)
    assert out.shape == (2, 6)  # six NEU classes, not ImageNet's 1000 (nor the tutorial's 21)
    out.sum().backward()
    head = head_parameter_names(model)
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert all(grads[n] is not None for n in head)


# README: --models takes any torchvision classifier with a Linear head. Each one up to 150 M
# parameters takes a real training step here (the four defaults included); the giants
# (convnext_large, vit_l_*, vit_h_14, regnet_y_128gf: 0.2-0.65 G parameters) are built the
# same way but too heavy for a 2-core CI. SqueezeNet (a conv head) is rejected clearly.
_NO_LINEAR_HEAD = {"squeezenet1_0", "squeezenet1_1"}
_CLAIMED = [
    n
    for n in sorted(torchvision.models.list_models(module=torchvision.models))
    if n not in _NO_LINEAR_HEAD and imagenet_weights(n).meta["num_params"] <= 150e6
]


@pytest.mark.slow
@pytest.mark.parametrize("name", _CLAIMED)
def test_every_claimed_model_takes_a_training_step(name):
    from bench.config import Recipe
    from bench.train.loop import make_optimizer

    torch.manual_seed(0)
    model = build_model(name, num_classes=6).train()
    opt, _ = make_optimizer(model, Recipe(), "none")
    size = min_image_size(name)
    x, y = torch.randn(2, 3, size, size), torch.tensor([0, 5])
    out = model(x)
    # Train mode must give plain logits: googlenet/inception_v3 used to return aux tuples.
    assert isinstance(out, torch.Tensor) and out.shape == (2, 6), type(out)
    torch.nn.functional.cross_entropy(out, y).backward()
    before = model.get_submodule(sorted(head_parameter_names(model))[0].rsplit(".", 1)[0])
    w = before.weight.detach().clone()
    opt.step()
    assert not torch.equal(w, before.weight)


@pytest.mark.parametrize("name", ["googlenet", "inception_v3"])
def test_aux_models_load_imagenet_weights_without_aux_heads(name, tmp_path, monkeypatch):
    # torchvision's ImageNet files carry the 1000-class auxiliary heads: they are dropped.
    reference, _ = _plant(tmp_path, monkeypatch, name)
    assert any(k.startswith(("aux1.", "AuxLogits.")) for k in reference.state_dict())
    model = build_model(name, num_classes=6, weights="imagenet")
    ref = reference.state_dict()
    own = model.state_dict()
    assert not any(k.startswith(("aux1.", "aux2.", "AuxLogits.")) for k in own)
    assert all(torch.equal(v, ref[k]) for k, v in own.items() if not k.startswith("fc."))


@pytest.mark.parametrize(
    "name, head_name",
    [
        ("resnet18", "fc"),
        ("vgg11", "classifier.6"),
        ("densenet121", "classifier"),
        ("mobilenet_v3_small", "classifier.3"),
        ("efficientnet_b0", "classifier.1"),
    ],
)
def test_head_is_replaced_generically(name, head_name):
    model = build_model(name, num_classes=4)
    head = model.get_submodule(head_name)
    assert isinstance(head, torch.nn.Linear) and head.out_features == 4
    assert head_parameter_names(model) == {f"{head_name}.weight", f"{head_name}.bias"}


def test_model_without_linear_head_is_a_clear_error():
    with pytest.raises(ValueError, match="no nn.Linear classifier head"):
        build_model("squeezenet1_0", num_classes=6)


def _plant(tmp_path, monkeypatch, name):
    """Write a (random) 1000-class state dict where torchvision's cache would keep it."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    torch.manual_seed(123)
    extra = (
        {"aux_logits": True, "init_weights": True} if name in ("googlenet", "inception_v3") else {}
    )
    reference = torchvision.models.get_model(name, weights=None, **extra)
    target = weights_cache_file(imagenet_weights(name))
    target.parent.mkdir(parents=True)
    torch.save(reference.state_dict(), target)
    return reference, target


def test_imagenet_weights_load_from_torch_home(tmp_path, monkeypatch):
    reference, target = _plant(tmp_path, monkeypatch, "shufflenet_v2_x1_0")
    assert target.parent == tmp_path / "torch-home" / "hub" / "checkpoints"
    model = build_model("shufflenet_v2_x1_0", num_classes=6, weights="imagenet")
    ref = reference.state_dict()
    for k, v in model.state_dict().items():
        if k.startswith("fc."):
            assert v.shape[0] == 6
        else:
            assert torch.equal(v, ref[k]), k
    assert resolve_weights("shufflenet_v2_x1_0", "auto") == "imagenet"


def test_missing_imagenet_weights_fail_early_with_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    # No network here; on a machine with one, make sure we do not download.
    monkeypatch.setattr(torch.hub, "download_url_to_file", _offline)
    with pytest.raises(WeightsUnavailableError) as e:
        resolve_weights("shufflenet_v2_x1_0", "imagenet")
    text = str(e.value)
    assert "shufflenetv2_x1-5666bf0f80.pth" in text
    assert str(tmp_path / "empty" / "hub" / "checkpoints") in text
    assert "--weights none" in text
    assert resolve_weights("shufflenet_v2_x1_0", "auto") == "none"


def _offline(*args, **kwargs):
    raise OSError("network unreachable (test)")


def test_weights_from_a_file_keep_backbone_and_reset_other_heads(tmp_path):
    src = build_model("resnet18", num_classes=10)
    path = tmp_path / "w.pt"
    torch.save(src.state_dict(), path)
    model = build_model("resnet18", num_classes=6, weights=str(path))
    assert torch.equal(model.conv1.weight, src.conv1.weight)
    assert model.fc.out_features == 6
    with pytest.raises(WeightsUnavailableError, match="does not fit"):
        build_model("resnet34", num_classes=6, weights=str(path))
