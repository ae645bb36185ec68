"""The training input pipeline: the worker's half draws exactly what torchvision's v2 pipeline draws, and the
device's colour jitter equals torchvision's per-image functional ops (loop oracle)."""

import pytest
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from famix.data.transforms import color_jitter, jitter_params, train_transform


@pytest.mark.parametrize("h,w,crop", [(40, 56, 32), (20, 50, 32), (33, 33, 33)])
@pytest.mark.parametrize("seed", [0, 1, 7])
def test_worker_draws_what_torchvision_v2_draws(h, w, crop, seed):
    """Same crop window (with padding when a side is short), same flip, same jitter factors and order as
    ``v2.Compose([RandomCrop(pad_if_needed), ColorJitter, RandomHorizontalFlip])`` under the same seed."""
    g = torch.Generator().manual_seed(100 + seed)
    image = torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g)
    label = torch.randint(0, 19, (h, w), dtype=torch.uint8, generator=g)
    ours, our_label, params = train_transform(crop, 0.8, 0.5)(
        image, label, torch.Generator().manual_seed(seed)
    )

    fill = {tv_tensors.Image: 0, tv_tensors.Mask: 255}
    torch.manual_seed(seed)
    cropper, jitter = v2.RandomCrop(crop, pad_if_needed=True, fill=fill), v2.ColorJitter(0.8, 0.8, 0.8)
    ref, ref_label = cropper(tv_tensors.Image(image), tv_tensors.Mask(label))
    drawn = jitter.make_params([ref])
    if torch.rand(1) < 0.5:
        ref, ref_label = TF.horizontal_flip(ref), TF.horizontal_flip(ref_label)
    assert torch.equal(ours, ref.as_subclass(torch.Tensor)) and torch.equal(
        our_label, ref_label.as_subclass(torch.Tensor)
    )
    factors = [drawn["brightness_factor"], drawn["contrast_factor"], drawn["saturation_factor"]]
    order = [i for i in drawn["fn_idx"].tolist() if i < 3]
    assert params.tolist() == pytest.approx(factors + order, abs=1e-7)
    assert ours.dtype == our_label.dtype == torch.uint8


def _loop_jitter(image: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """One image, torchvision's functional ops on float, in the image's own order."""
    x = image.float() / 255
    ops = {0: TF.adjust_brightness, 1: TF.adjust_contrast, 2: TF.adjust_saturation}
    for op in params[3:].long().tolist():
        x = ops[op](x, float(params[op]))
    return x


@pytest.mark.parametrize("b,h,w", [(1, 5, 7), (4, 16, 12), (3, 9, 31)])
def test_device_color_jitter_matches_torchvision_per_image(b, h, w):
    g = torch.Generator().manual_seed(b * 31 + h)
    images = torch.randint(0, 256, (b, 3, h, w), dtype=torch.uint8, generator=g)
    params = torch.stack([jitter_params(0.8, g) for _ in range(b)])
    out = color_jitter(images, params)
    expected = torch.stack([_loop_jitter(i, p) for i, p in zip(images, params, strict=True)])
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(out, images.float() / 255, atol=1e-3)  # it did jitter


def test_no_jitter_is_the_identity():
    images = torch.randint(0, 256, (2, 3, 6, 8), dtype=torch.uint8)
    params = torch.stack([jitter_params(0.0, torch.Generator()) for _ in range(2)])
    assert torch.equal(color_jitter(images, params), images.float() / 255)
