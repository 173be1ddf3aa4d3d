"""neu.augment: batch RandomResizedCrop + flip, and eval_batch == neu.image.normalize."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from neu.augment import crop_grid, crop_params, eval_batch, train_batch
from neu.image import normalize

MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
GRAY_MEAN, GRAY_STD = (0.45,) * 3, (0.22,) * 3


def batch(b=8, c=1, s=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (b, c, s, s), generator=g, dtype=torch.uint8)


def gen(seed):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("c", [1, 3])
def test_train_batch_shape_dtype_range(c):
    x = batch(c=c)
    y = train_batch(x, image_size=20, mean=MEAN, std=STD, generator=gen(0))
    assert y.shape == (8, 3, 20, 20) and y.dtype == torch.float32
    m = torch.tensor(MEAN).view(1, 3, 1, 1)
    s = torch.tensor(STD).view(1, 3, 1, 1)
    pixels = y * s + m  # back to 0..1
    assert pixels.min() >= -1e-5 and pixels.max() <= 1 + 1e-5
    if c == 1:  # gray stays gray across the 3 model channels
        assert torch.allclose(pixels[:, 0], pixels[:, 1], atol=1e-5)


def test_train_batch_deterministic_per_generator_seed():
    x = batch()
    a = train_batch(x, image_size=24, mean=MEAN, std=STD, generator=gen(1))
    b = train_batch(x, image_size=24, mean=MEAN, std=STD, generator=gen(1))
    c = train_batch(x, image_size=24, mean=MEAN, std=STD, generator=gen(2))
    assert torch.equal(a, b) and not torch.equal(a, c)
    # successive calls on one generator advance it
    g = gen(1)
    first = train_batch(x, image_size=24, mean=MEAN, std=STD, generator=g)
    second = train_batch(x, image_size=24, mean=MEAN, std=STD, generator=g)
    assert torch.equal(first, a) and not torch.equal(first, second)


def test_full_crop_without_flip_is_identity():
    x = batch(c=3)
    y = train_batch(
        x,
        image_size=32,
        mean=MEAN,
        std=STD,
        generator=gen(0),
        scale=(1, 1),
        ratio=(1, 1),
        hflip=False,
    )
    assert torch.allclose(y, eval_batch(x, image_size=32, mean=MEAN, std=STD), atol=1e-3)


def test_flip_actually_flips():
    x = batch(b=32)
    y = train_batch(
        x, image_size=32, mean=GRAY_MEAN, std=GRAY_STD, generator=gen(3), scale=(1, 1), ratio=(1, 1)
    )
    ref = eval_batch(x, image_size=32, mean=GRAY_MEAN, std=GRAY_STD)
    same = [torch.allclose(y[i], ref[i], atol=1e-3) for i in range(32)]
    flipped = [torch.allclose(y[i], ref[i].flip(-1), atol=1e-3) for i in range(32)]
    assert all(s != f for s, f in zip(same, flipped, strict=True))  # each is one or the other
    assert 4 <= sum(flipped) <= 28


def test_crop_boxes_follow_random_resized_crop():
    h = w = 50
    boxes = crop_params(4000, h, w, generator=gen(0))
    top, left, bh, bw = boxes.unbind(1)
    assert (top >= 0).all() and (left >= 0).all()
    assert (top + bh <= h).all() and (left + bw <= w).all() and (bh > 0).all() and (bw > 0).all()
    area = (bh * bw).double() / (h * w)
    assert area.min() >= 0.08 * 0.8 and area.max() <= 1.0  # rounding of w, h
    ratio = bw.double() / bh.double()
    assert ratio.min() > 3 / 4 * 0.8 and ratio.max() < 4 / 3 * 1.25
    assert 0.4 < area.mean() < 0.7  # torchvision's mean area fraction ~0.54
    log_r = torch.log(ratio)
    assert abs(float(log_r.mean())) < 0.02  # log-uniform ratio is symmetric
    # crops land all over the image, not just one corner
    assert top.max() > h // 2 and left.max() > w // 2
    # same generator seed -> same boxes
    assert torch.equal(boxes, crop_params(4000, h, w, generator=gen(0)))


def test_crop_fallback_is_center_crop():
    # scale > 1 can never fit: every try fails -> torchvision's center crop
    boxes = crop_params(5, 40, 40, generator=gen(0), scale=(2.0, 3.0))
    assert boxes.tolist() == [[0, 0, 40, 40]] * 5
    boxes = crop_params(3, 10, 40, generator=gen(0), scale=(2.0, 3.0))  # wide: clamp to 4/3
    assert boxes.tolist() == [[0, (40 - round(10 * 4 / 3)) // 2, 10, round(10 * 4 / 3)]] * 3


def test_crop_matches_torchvision_statistics():
    # Same sampling rule as torchvision: compare the mean crop area on a large sample.
    torchvision = pytest.importorskip("torchvision")
    rrc = torchvision.transforms.RandomResizedCrop
    torch.manual_seed(0)
    img = torch.zeros(1, 60, 60)
    ref = [rrc.get_params(img, (0.08, 1.0), (3 / 4, 4 / 3)) for _ in range(3000)]
    ref_area = np.mean([h * w for _, _, h, w in ref]) / 3600
    ours = crop_params(3000, 60, 60, generator=gen(0))
    ours_area = float((ours[:, 2] * ours[:, 3]).double().mean()) / 3600
    assert math.isclose(ours_area, ref_area, abs_tol=0.03)


def test_crop_grid_is_affine_grid():
    g = gen(0)
    sx, sy = torch.rand(6, generator=g) * 2 - 1, torch.rand(6, generator=g)
    cx, cy = torch.rand(6, generator=g) - 0.5, torch.rand(6, generator=g) - 0.5
    zero = torch.zeros(6)
    theta = torch.stack([torch.stack([sx, zero, cx], 1), torch.stack([zero, sy, cy], 1)], 1)
    want = F.affine_grid(theta, [6, 1, 17, 17], align_corners=False)
    got = crop_grid(sx.double(), sy.double(), cx.double(), cy.double(), 17)
    assert got.shape == want.shape and torch.allclose(got, want, atol=1e-6)


@pytest.mark.parametrize("c,mean,std", [(1, GRAY_MEAN, GRAY_STD), (3, MEAN, STD)])
def test_eval_batch_equals_normalize(c, mean, std):
    x = batch(c=c, s=24)
    got = eval_batch(x, image_size=24, mean=mean, std=std)
    want = torch.from_numpy(normalize(x.numpy(), mean, std))
    assert got.shape == (8, 3, 24, 24)
    assert torch.equal(got, want) or torch.allclose(got, want, atol=1e-6, rtol=0)


def test_eval_batch_resizes_deterministically():
    x = batch(s=40)
    a = eval_batch(x, image_size=20, mean=MEAN, std=STD)
    assert a.shape == (8, 3, 20, 20) and torch.equal(
        a, eval_batch(x, image_size=20, mean=MEAN, std=STD)
    )
    # a constant image stays constant through the antialiased resize
    flat = torch.full((1, 1, 40, 40), 128, dtype=torch.uint8)
    out = eval_batch(flat, image_size=20, mean=GRAY_MEAN, std=GRAY_STD)
    assert torch.allclose(out, torch.full_like(out, (128 / 255 - 0.45) / 0.22), atol=1e-5)


def test_rejects_wrong_input():
    with pytest.raises(ValueError, match="uint8"):
        train_batch(batch().float(), image_size=8, mean=MEAN, std=STD, generator=gen(0))
    with pytest.raises(ValueError, match="uint8"):
        eval_batch(batch()[0], image_size=8, mean=MEAN, std=STD)


@pytest.mark.needs_cuda
def test_cuda_matches_cpu():
    x = batch(b=16, s=40)
    cpu = train_batch(x, image_size=24, mean=MEAN, std=STD, generator=gen(5))
    gpu = train_batch(x.cuda(), image_size=24, mean=MEAN, std=STD, generator=gen(5))
    assert gpu.device.type == "cuda"
    assert torch.allclose(gpu.cpu(), cpu, atol=1e-4)
    ev = eval_batch(x.cuda(), image_size=40, mean=MEAN, std=STD).cpu()
    assert torch.allclose(ev, eval_batch(x, image_size=40, mean=MEAN, std=STD), atol=1e-6)
