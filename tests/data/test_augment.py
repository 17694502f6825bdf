"""BatchAugment, mixup and cutmix on small CPU tensors with fixed seeds."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medkit.data.augment import AugmentConfig, BatchAugment, cutmix, mixup
from medkit.errors import UsageError


def _batch(b: int = 4, c: int = 3, h: int = 16, w: int = 16, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (b, c, h, w), generator=g, dtype=torch.uint8)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


FULL = AugmentConfig(
    hflip=0.5, vflip=0.5, affine_p=0.8, rotate=25, scale=(0.8, 1.2), shear=8, translate=0.1,
    brightness=0.2, contrast=0.2, blur_p=0.5, blur_sigma=(0.3, 1.5), cutout=2, cutout_size=0.2,
)  # fmt: skip


def test_identity_config_returns_input_normalised_exactly() -> None:
    x = _batch()
    out = BatchAugment(AugmentConfig())(x, _gen())
    expected = (x.float() / 255.0 - 0.5) / 0.5
    assert out.dtype == torch.float32
    assert torch.equal(out, expected)


def test_imagenet_normalisation_per_channel() -> None:
    x = _batch()
    out = BatchAugment(AugmentConfig(normalize="imagenet"))(x, _gen(), train=False)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    torch.testing.assert_close(out, (x.float() / 255 - mean) / std)


def test_same_seed_same_output_and_different_seed_differs() -> None:
    x = _batch(b=8)
    aug = BatchAugment(FULL, size=12)
    a = aug(x, _gen(3))
    b = aug(x, _gen(3))
    c = aug(x, _gen(4))
    assert a.shape == (8, 3, 12, 12)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_pure_hflip_matches_torch_flip() -> None:
    x = _batch()
    out = BatchAugment(AugmentConfig(hflip=1.0, normalize="none"))(x, _gen())
    assert torch.equal(out, torch.flip(x, dims=[3]).float() / 255)
    out_v = BatchAugment(AugmentConfig(vflip=1.0, normalize="none"))(x, _gen())
    assert torch.equal(out_v, torch.flip(x, dims=[2]).float() / 255)


def test_hflip_through_the_warp_path_matches_torch_flip() -> None:
    # affine_p=1 with an identity affine forces grid_sample; only float rounding may differ.
    x = _batch()
    out = BatchAugment(AugmentConfig(hflip=1.0, affine_p=1.0, normalize="none"))(x, _gen())
    torch.testing.assert_close(out, torch.flip(x, dims=[3]).float() / 255, atol=1e-4, rtol=0)


def test_rotate_90_matches_rot90() -> None:
    x = _batch(h=15, w=15)
    aug = BatchAugment(AugmentConfig(affine_p=1.0, rotate=(90.0, 90.0), normalize="none"))
    out = aug(x, _gen())
    # Positive angles turn the content counter-clockwise, as torch.rot90(k=1) on (H, W) does.
    torch.testing.assert_close(out, torch.rot90(x, k=1, dims=(2, 3)).float() / 255, atol=1e-4, rtol=0)
    out_neg = BatchAugment(AugmentConfig(affine_p=1.0, rotate=(-90.0, -90.0), normalize="none"))(x, _gen())
    torch.testing.assert_close(out_neg, torch.rot90(x, k=-1, dims=(2, 3)).float() / 255, atol=1e-4, rtol=0)


def test_scale_2_zooms_into_the_centre() -> None:
    # Zoom x2 of a 16x16 image: output pixel (i, j) samples input (4 + i/2 - 0.25, ...): compare with a bilinear
    # upsample of the central 8x8 region computed by F.interpolate.
    x = _batch(b=2, c=1)
    out = BatchAugment(AugmentConfig(affine_p=1.0, scale=(2.0, 2.0), normalize="none"))(x, _gen())
    centre = x[:, :, 4:12, 4:12].float() / 255
    ref = torch.nn.functional.interpolate(centre, size=(16, 16), mode="bilinear", align_corners=False)
    # Border pixels of the upsample clamp to the 8x8 region while the warp reads real neighbours: compare inside.
    torch.testing.assert_close(out[:, :, 1:-1, 1:-1], ref[:, :, 1:-1, 1:-1], atol=1e-4, rtol=0)


def test_all_channels_of_a_sample_get_the_same_transform() -> None:
    one = _batch(b=6, c=1)
    x = one.repeat(1, 3, 1, 1)
    out = BatchAugment(FULL, size=12)(x, _gen(7))
    assert torch.equal(out[:, 0], out[:, 1])
    assert torch.equal(out[:, 0], out[:, 2])
    # and a 1-channel batch drawn with the same seed gets exactly the same pixels
    single = BatchAugment(FULL, size=12)(one, _gen(7))
    torch.testing.assert_close(single[:, 0], out[:, 0])


def test_samples_get_different_parameters() -> None:
    x = _batch(b=1).repeat(16, 1, 1, 1)
    out = BatchAugment(FULL)(x, _gen(1))
    distinct = {tuple(out[i].flatten()[:64].tolist()) for i in range(16)}
    assert len(distinct) > 8


def test_margin_crop_train_and_eval() -> None:
    x = _batch(h=20, w=20)
    aug = BatchAugment(AugmentConfig(normalize="none"), size=16)
    ev = aug(x, train=False)
    assert torch.equal(ev, x[:, :, 2:18, 2:18].float() / 255)
    tr = aug(x, _gen(5))
    for i in range(x.shape[0]):  # every training crop is an exact 16x16 window of its own sample
        windows = [x[i, :, t : t + 16, s : s + 16].float() / 255 for t in range(5) for s in range(5)]
        assert any(torch.equal(tr[i], win) for win in windows)


def test_random_resized_crop_shape_and_range() -> None:
    x = _batch(h=32, w=32)
    aug = BatchAugment(AugmentConfig(crop_scale=(0.3, 1.0), normalize="none"), size=24)
    out = aug(x, _gen(2))
    assert out.shape == (4, 3, 24, 24)
    assert out.min() >= 0 and out.max() <= 1


def test_brightness_is_a_per_sample_factor() -> None:
    x = torch.full((8, 2, 4, 4), 100, dtype=torch.uint8)
    out = BatchAugment(AugmentConfig(brightness=0.5, normalize="none"))(x, _gen(9))
    factors = out[:, 0, 0, 0] / (100 / 255)
    assert torch.allclose(out, factors.view(8, 1, 1, 1) * (100 / 255) * torch.ones_like(out), atol=1e-6)
    assert factors.min() >= 0.5 - 1e-6 and factors.max() <= 1.5 + 1e-6
    assert factors.std() > 0.05


def test_contrast_keeps_the_mean_and_scales_deviations() -> None:
    x = _batch(b=4, c=1, h=8, w=8)
    x = (x // 4 + 64).to(torch.uint8)  # stay away from clipping
    aug = BatchAugment(AugmentConfig(contrast=0.3, normalize="none"))
    out = aug(x, _gen(11))
    xf = x.float() / 255
    mean = xf.mean(dim=(1, 2, 3), keepdim=True)
    dev = (xf - mean).abs().flatten(1) > 1e-3
    factor = ((out - mean) / torch.where((xf - mean).abs() > 1e-3, xf - mean, 1.0)).flatten(1)
    for i in range(4):
        f = factor[i][dev[i]]
        assert f.std() < 1e-3 and 0.7 - 1e-4 <= f.mean() <= 1.3 + 1e-4
    torch.testing.assert_close(out.mean(dim=(1, 2, 3)), mean.flatten(), atol=1e-5, rtol=0)


def test_blur_matches_plain_gaussian_convolution() -> None:
    x = _batch(b=2, c=2, h=12, w=12)
    aug = BatchAugment(AugmentConfig(blur_p=1.0, blur_sigma=(1.0, 1.0), normalize="none"))
    out = aug(x, _gen())
    r = 3
    k = np.exp(-(np.arange(-r, r + 1) ** 2) / 2.0)
    k /= k.sum()
    xf = x.float().numpy() / 255
    pad = np.pad(xf, ((0, 0), (0, 0), (r, r), (r, r)), mode="reflect")
    ref = np.zeros_like(xf)
    for dy in range(2 * r + 1):  # plain loops over the separable kernel
        for dx in range(2 * r + 1):
            ref += k[dy] * k[dx] * pad[:, :, dy : dy + 12, dx : dx + 12]
    np.testing.assert_allclose(out.numpy(), ref, atol=1e-5)


def test_cutout_zeroes_square_holes_of_the_given_size() -> None:
    x = torch.full((4, 3, 20, 20), 255, dtype=torch.uint8)
    out = BatchAugment(AugmentConfig(cutout=1, cutout_size=0.2, normalize="none"))(x, _gen(1))
    for i in range(4):
        zero = out[i, 0] == 0
        assert torch.equal(zero, out[i, 1] == 0)  # the same hole on every channel
        ys, xs = torch.nonzero(zero, as_tuple=True)
        assert 0 < zero.sum() <= 16
        assert ys.max() - ys.min() < 4 and xs.max() - xs.min() < 4


def test_padding_modes_fill_outside_pixels() -> None:
    x = torch.full((2, 1, 10, 10), 200, dtype=torch.uint8)
    cfg = dict(affine_p=1.0, scale=(0.5, 0.5), normalize="none")
    zeros = BatchAugment(AugmentConfig(padding="zeros", **cfg))(x, _gen())
    border = BatchAugment(AugmentConfig(padding="border", **cfg))(x, _gen())
    assert zeros[0, 0, 0, 0] == 0
    torch.testing.assert_close(border, torch.full_like(border, 200 / 255))


def test_eval_is_deterministic_without_generator() -> None:
    x = _batch()
    aug = BatchAugment(FULL)
    assert torch.equal(aug(x, train=False), aug(x, train=False))
    assert torch.equal(aug(x, train=False), (x.float() / 255 - 0.5) / 0.5)


def test_bad_config_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="padding"):
        AugmentConfig(padding="wrap")
    with pytest.raises(UsageError, match="probability"):
        AugmentConfig(hflip=1.5)
    with pytest.raises(UsageError, match="larger than the input"):
        BatchAugment(AugmentConfig(), size=32)(_batch())


def test_mixup_targets_are_convex_combinations() -> None:
    x = torch.randn(6, 3, 8, 8, generator=_gen(1))
    y = (torch.rand(6, 4, generator=_gen(2)) > 0.5).float()
    xm, ym = mixup(x, y, alpha=0.4, generator=_gen(3))
    xm2, ym2 = mixup(x, y, alpha=0.4, generator=_gen(3))
    assert torch.equal(xm, xm2) and torch.equal(ym, ym2)
    for i in range(6):
        # find (lam, partner) from the image, then check the target with the same weights
        best = None
        for j in range(6):
            d = x[i] - x[j]
            lam = torch.tensor(1.0) if d.abs().max() < 1e-6 else ((xm[i] - x[j]) * d).sum() / (d * d).sum()
            if torch.allclose(lam * x[i] + (1 - lam) * x[j], xm[i], atol=1e-5):
                best = (lam, j)
                break
        assert best is not None
        lam, j = best
        assert -1e-6 <= lam <= 1 + 1e-6
        torch.testing.assert_close(ym[i], lam * y[i] + (1 - lam) * y[j], atol=1e-5, rtol=0)
    assert ym.min() >= 0 and ym.max() <= 1


def test_mixup_class_indices_become_one_hot_mixtures() -> None:
    x = torch.randn(5, 1, 4, 4)
    y = torch.tensor([0, 1, 2, 1, 0])
    _, ym = mixup(x, y, alpha=1.0, generator=_gen(), num_classes=3)
    assert ym.shape == (5, 3)
    torch.testing.assert_close(ym.sum(1), torch.ones(5))
    with pytest.raises(UsageError, match="num_classes"):
        mixup(x, y, alpha=1.0, generator=_gen())


def test_cutmix_weights_equal_pixel_shares() -> None:
    x = torch.stack([torch.full((1, 10, 10), float(i)) for i in range(6)])
    y = torch.eye(6)
    xm, ym = cutmix(x, y, alpha=1.0, generator=_gen(4))
    for i in range(6):
        share_own = (xm[i] == i).float().mean()
        assert torch.isclose(ym[i, i], share_own) or (ym[i] == y[i]).all()
        torch.testing.assert_close(ym[i].sum(), torch.tensor(1.0))
        others = [v for v in torch.unique(xm[i]).tolist() if v != i]
        assert len(others) <= 1
        if others:
            j = int(others[0])
            torch.testing.assert_close(ym[i, j], (xm[i] == j).float().mean())


def test_mask_channels_get_geometry_but_no_photometric_change() -> None:
    img = _batch(b=6, c=3, h=16, w=16, seed=3)
    mask = (torch.arange(16).view(1, 1, 1, 16).expand(6, 1, 16, 16) // 4).to(torch.uint8)  # labels 0..3
    x = torch.cat([img, mask], dim=1)
    cfg = dict(hflip=0.5, vflip=0.5, brightness=0.4, contrast=0.4, blur_p=1.0, normalize="none")
    out = BatchAugment(AugmentConfig(**cfg, image_channels=3))(x, _gen(5))
    # The same draw on the image alone gives the same image channels (the mask does not change the parameters).
    alone = BatchAugment(AugmentConfig(**cfg))(img, _gen(5))
    torch.testing.assert_close(out[:, :3], alone, atol=1e-6, rtol=0)
    # The mask channel only moved: it still holds the exact label values, flipped like the image.
    flips = BatchAugment(AugmentConfig(hflip=0.5, vflip=0.5, normalize="none"))(x, _gen(5))
    assert torch.equal(out[:, 3], flips[:, 3])
    assert set((out[:, 3] * 255).round().unique().tolist()) == {0.0, 1.0, 2.0, 3.0}
    # Without image_channels the photometric changes reach the mask too (what the option prevents).
    every = BatchAugment(AugmentConfig(**cfg))(x, _gen(5))
    assert not torch.equal(every[:, 3], flips[:, 3])
