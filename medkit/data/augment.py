"""Batched augmentation on the training device: one random draw per batch, one warp, then normalisation.

`BatchAugment` takes a uint8 (or float in [0, 1]) batch ``(B, C, H, W)`` on any device and returns a normalised
float batch ``(B, C, h, w)`` on the same device. All random parameters of the batch come from ONE call
``torch.rand(B, K, generator=g)`` on the CPU; only these small parameter tensors move to the device, so the CPU
and the GPU give the same result for the same generator seed (up to float rounding of the kernels). Every channel of
a sample gets the same parameters (CT windows, image + mask channels stay aligned).

Geometry: flips, rotation, scale, shear, translation and the crop (from a margin, or a random resized crop) are
folded into one 2x3 matrix per sample and applied by ``F.affine_grid`` + ``F.grid_sample``. When nothing needs
resampling (only flips and integer crops), an exact gather is used instead, so pixels are copied, not interpolated.
Then per-sample brightness and contrast, Gaussian blur (a grouped convolution with one kernel per sample), cutout,
and ``(x - mean) / std``. Eval mode: center crop and normalisation only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from medkit.errors import UsageError

__all__ = ["AugmentConfig", "BatchAugment", "mixup", "cutmix", "NORMALIZATIONS"]

NORMALIZATIONS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "half": ((0.5,), (0.5,)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "none": ((0.0,), (1.0,)),
}
_PADDING = ("zeros", "border", "reflection")

# Columns of the one uniform draw per sample; cutout holes take two more columns each (centre y, x).
_HFLIP, _VFLIP, _AFF, _ROT, _SCALE, _SHX, _SHY, _TX, _TY, _CROP_A, _CROP_R, _CROP_Y, _CROP_X = range(13)
_BRIGHT, _CONTRAST, _BLUR, _SIGMA, _CUT_P = range(13, 18)
_N_FIXED = 18


def _range(value: float | Sequence[float], name: str, symmetric_around: float = 0.0) -> tuple[float, float]:
    if isinstance(value, (int, float)):
        v = abs(float(value))
        return symmetric_around - v, symmetric_around + v
    lo, hi = (float(v) for v in value)
    if lo > hi:
        raise UsageError(f"augmentation {name}: range ({lo}, {hi}) has low > high", hint="give (low, high)")
    return lo, hi


@dataclass(frozen=True)
class AugmentConfig:
    """Augmentation parameters; the defaults do nothing except normalisation with mean 0.5 / std 0.5.

    Args:
        hflip: Probability of a horizontal flip.
        vflip: Probability of a vertical flip.
        affine_p: Probability of applying the affine part (rotate, scale, shear, translate) to a sample.
        rotate: Degrees: a number d for uniform(-d, d), or a (low, high) range; positive = counter-clockwise.
        scale: Zoom range (low, high); > 1 enlarges the content.
        shear: Degrees: d for uniform(-d, d) on each axis, or a (low, high) range.
        translate: Fraction of the output size: t for uniform(-t, t) on each axis.
        crop_scale: Random resized crop area range (low, high) as a fraction of the input; None = no random
            resized crop (a random ``h x w`` crop from the margin instead, if the input is larger).
        crop_ratio: Aspect ratio range of the random resized crop.
        brightness: b for a per-sample factor uniform(1 - b, 1 + b).
        contrast: c for a per-sample factor uniform(1 - c, 1 + c) around the sample's mean.
        blur_p: Probability of a Gaussian blur.
        blur_sigma: Blur sigma range in pixels.
        cutout: Number of holes per sample (0 = off).
        cutout_size: Hole side as a fraction of the output size.
        cutout_p: Probability that a sample gets its holes.
        padding: ``zeros``, ``border`` or ``reflection``: what fills pixels sampled from outside the image.
        normalize: ``half`` (mean 0.5, std 0.5 per channel, like MedMNIST), ``imagenet`` or ``none``.
        mean: Explicit per-channel mean (overrides ``normalize``).
        std: Explicit per-channel std (overrides ``normalize``).
        image_channels: Photometric changes (brightness, contrast, blur) touch only the first N channels; the
            channels after them (a label mask stacked as an input channel) are only moved geometrically and
            cut out. None: every channel is an image channel.
    """

    hflip: float = 0.0
    vflip: float = 0.0
    affine_p: float = 0.0
    rotate: float | tuple[float, float] = 0.0
    scale: tuple[float, float] = (1.0, 1.0)
    shear: float | tuple[float, float] = 0.0
    translate: float = 0.0
    crop_scale: tuple[float, float] | None = None
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    brightness: float = 0.0
    contrast: float = 0.0
    blur_p: float = 0.0
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    cutout: int = 0
    cutout_size: float = 0.1
    cutout_p: float = 1.0
    padding: str = "zeros"
    normalize: str = "half"
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    image_channels: int | None = None

    def __post_init__(self) -> None:
        for name in ("hflip", "vflip", "affine_p", "blur_p", "cutout_p"):
            p = getattr(self, name)
            if not 0.0 <= p <= 1.0:
                raise UsageError(f"augmentation {name} must be a probability in [0, 1], got {p}")
        if self.padding not in _PADDING:
            raise UsageError(f"unknown padding mode '{self.padding}'", hint=f"use one of: {', '.join(_PADDING)}")
        if self.mean is None and self.normalize not in NORMALIZATIONS:
            raise UsageError(
                f"unknown normalisation '{self.normalize}'", hint=f"use one of: {', '.join(NORMALIZATIONS)}"
            )
        if self.scale[0] <= 0 or self.scale[0] > self.scale[1]:
            raise UsageError(f"augmentation scale must be 0 < low <= high, got {self.scale}")
        if self.crop_scale is not None and not 0 < self.crop_scale[0] <= self.crop_scale[1] <= 1:
            raise UsageError(f"crop_scale must satisfy 0 < low <= high <= 1, got {self.crop_scale}")
        if self.cutout < 0:
            raise UsageError(f"cutout must be >= 0 holes, got {self.cutout}")

    @property
    def needs_warp(self) -> bool:
        """Whether any sample may need resampling (an affine part or a random resized crop)."""
        return self.affine_p > 0 or self.crop_scale is not None

    def mean_std(self, channels: int) -> tuple[list[float], list[float]]:
        """Per-channel mean and std for ``channels`` channels."""
        mean, std = (self.mean, self.std) if self.mean is not None else NORMALIZATIONS[self.normalize]
        std = std if std is not None else (1.0,)

        def fit(v: Sequence[float], what: str) -> list[float]:
            if len(v) == 1:
                return [float(v[0])] * channels
            if len(v) != channels:
                raise UsageError(f"normalisation {what} has {len(v)} values but the images have {channels} channels")
            return [float(x) for x in v]

        return fit(mean, "mean"), fit(std, "std")


class BatchAugment(torch.nn.Module):
    """Batched, device-agnostic augmentation and normalisation: uint8 (B, C, H, W) -> float (B, C, h, w).

    Args:
        config: The augmentation parameters.
        size: Output (h, w) or an int; None = the input size (no crop).
    """

    def __init__(self, config: AugmentConfig | None = None, size: int | tuple[int, int] | None = None) -> None:
        super().__init__()
        self.config = config or AugmentConfig()
        self.size = (size, size) if isinstance(size, int) else (tuple(size) if size is not None else None)
        self._rot = _range(self.config.rotate, "rotate")
        self._shear = _range(self.config.shear, "shear")
        self._norm: dict[tuple[Any, ...], tuple[torch.Tensor, torch.Tensor] | None] = {}

    def n_params(self) -> int:
        """Columns of the per-sample uniform draw."""
        return _N_FIXED + 2 * self.config.cutout

    def draw(self, batch: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """The batch's uniforms: ONE ``torch.rand(B, K)`` call on the CPU (the same on every device)."""
        return torch.rand(batch, self.n_params(), generator=generator, dtype=torch.float64)

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None, train: bool = True) -> torch.Tensor:
        """Augment (train) or center-crop (eval) and normalise a batch.

        Args:
            x: uint8 (B, C, H, W) in 0..255, or float in [0, 1]; any device.
            generator: CPU generator for the random parameters (None = torch's global generator).
            train: False for evaluation: center crop and normalisation only.

        Returns:
            float32 (B, C, h, w) on x's device, normalised.
        """
        if x.ndim != 4:
            raise UsageError(f"BatchAugment expects (B, C, H, W), got shape {tuple(x.shape)}")
        b, c, h_in, w_in = x.shape
        h, w = self.size or (h_in, w_in)
        if h > h_in or w > w_in:
            raise UsageError(f"output size {(h, w)} is larger than the input {(h_in, w_in)}")
        cfg = self.config
        if not train or b == 0:
            top, left = (h_in - h) // 2, (w_in - w) // 2
            out = _to_unit(x[:, :, top : top + h, left : left + w])
            return self._normalize(out)
        u = self.draw(b, generator)
        if cfg.needs_warp:
            theta = self._theta(u, (h_in, w_in), (h, w))
            xf = _to_unit(x)
            grid = F.affine_grid(_to(theta, x.device, xf.dtype), [b, c, h, w], align_corners=False)
            out = F.grid_sample(xf, grid, mode="bilinear", padding_mode=cfg.padding, align_corners=False)
        else:
            out = _to_unit(self._gather(x, u, (h, w)))
        n = cfg.image_channels if cfg.image_channels is not None else c
        if n >= c:
            out = self._blur(self._color(out, u), u)
        elif n > 0:  # label-mask channels keep their values: no brightness, contrast or blur
            out = torch.cat([self._blur(self._color(out[:, :n], u), u), out[:, n:]], dim=1)
        out = self._cutout(out, u)
        return self._normalize(out)

    def _normalize(self, x: torch.Tensor) -> torch.Tensor:
        key = (x.device, x.dtype, x.shape[1])
        if key not in self._norm:
            mean, std = self.config.mean_std(x.shape[1])
            if all(m == 0.0 for m in mean) and all(s == 1.0 for s in std):
                self._norm[key] = None
            else:
                m = _to(torch.tensor(mean, dtype=torch.float64).view(1, -1, 1, 1), x.device, x.dtype)
                s = _to(torch.tensor(std, dtype=torch.float64).view(1, -1, 1, 1), x.device, x.dtype)
                self._norm[key] = (m, s)
        ms = self._norm[key]
        return x if ms is None else (x - ms[0]) / ms[1]

    def _gather(self, x: torch.Tensor, u: torch.Tensor, out_hw: tuple[int, int]) -> torch.Tensor:
        """Exact per-sample integer crop and flips by indexing (no interpolation)."""
        cfg = self.config
        b, _, h_in, w_in = x.shape
        h, w = out_hw
        top = torch.floor(u[:, _CROP_Y] * (h_in - h + 1)).long().clamp_(max=h_in - h)
        left = torch.floor(u[:, _CROP_X] * (w_in - w + 1)).long().clamp_(max=w_in - w)
        ar_h, ar_w = torch.arange(h), torch.arange(w)
        vflip = (u[:, _VFLIP] < cfg.vflip).unsqueeze(1)
        hflip = (u[:, _HFLIP] < cfg.hflip).unsqueeze(1)
        rows = top.unsqueeze(1) + torch.where(vflip, h - 1 - ar_h, ar_h)
        cols = left.unsqueeze(1) + torch.where(hflip, w - 1 - ar_w, ar_w)
        if (top == 0).all() and (left == 0).all() and h == h_in and w == w_in and not vflip.any() and not hflip.any():
            return x
        dev = x.device
        bi = torch.arange(b, device=dev).view(b, 1, 1)
        # Advanced indexing around the channel slice puts the indexed dims first: (B, h, w, C).
        out = x[bi, :, _to(rows, dev).view(b, h, 1), _to(cols, dev).view(b, 1, w)]
        return out.permute(0, 3, 1, 2)

    def _theta(self, u: torch.Tensor, in_hw: tuple[int, int], out_hw: tuple[int, int]) -> torch.Tensor:
        """Per-sample 2x3 matrices mapping output to input normalised coordinates (float64, CPU)."""
        cfg = self.config
        b = u.shape[0]
        h_in, w_in = in_hw
        h, w = out_hw
        # Crop window in input pixels: random resized crop, or an (h, w) window inside the margin.
        if cfg.crop_scale is not None:
            lo, hi = cfg.crop_scale
            area = (lo + (hi - lo) * u[:, _CROP_A]) * h_in * w_in
            lr = math.log(cfg.crop_ratio[0]), math.log(cfg.crop_ratio[1])
            ratio = torch.exp(lr[0] + (lr[1] - lr[0]) * u[:, _CROP_R])
            cw = torch.sqrt(area * ratio).clamp(max=w_in)
            ch = torch.sqrt(area / ratio).clamp(max=h_in)
        else:
            cw = torch.full((b,), float(w), dtype=torch.float64)
            ch = torch.full((b,), float(h), dtype=torch.float64)
        top = u[:, _CROP_Y] * (h_in - ch)
        left = u[:, _CROP_X] * (w_in - cw)
        if cfg.crop_scale is None:  # integer offsets, as the exact path would take
            top = torch.floor(u[:, _CROP_Y] * (h_in - h + 1)).clamp(max=h_in - h)
            left = torch.floor(u[:, _CROP_X] * (w_in - w + 1)).clamp(max=w_in - w)
        cy = (top + ch / 2) / h_in * 2 - 1
        cx = (left + cw / 2) / w_in * 2 - 1
        sy, sx = ch / h_in, cw / w_in

        # Inverse affine in output pixel units (centred), so rotation stays a rotation on non-square outputs.
        apply = (u[:, _AFF] < cfg.affine_p).double()
        angle = torch.deg2rad(self._rot[0] + (self._rot[1] - self._rot[0]) * u[:, _ROT]) * apply
        s_lo, s_hi = cfg.scale
        scale = 1 + (s_lo + (s_hi - s_lo) * u[:, _SCALE] - 1) * apply
        shx = torch.deg2rad(self._shear[0] + (self._shear[1] - self._shear[0]) * u[:, _SHX]) * apply
        shy = torch.deg2rad(self._shear[0] + (self._shear[1] - self._shear[0]) * u[:, _SHY]) * apply
        tx = (2 * u[:, _TX] - 1) * cfg.translate * apply * 2  # fraction of the size -> normalised units
        ty = (2 * u[:, _TY] - 1) * cfg.translate * apply * 2
        fx = torch.where(u[:, _HFLIP] < cfg.hflip, -1.0, 1.0).double()
        fy = torch.where(u[:, _VFLIP] < cfg.vflip, -1.0, 1.0).double()

        # Forward map of the content: A = R(angle) @ Shear @ S(scale); sampling needs A^-1.
        cos, sin = torch.cos(angle), torch.sin(angle)
        rot = torch.stack([torch.stack([cos, sin], -1), torch.stack([-sin, cos], -1)], -2)
        shear = torch.stack(
            [
                torch.stack([torch.ones_like(shx), torch.tan(shx)], -1),
                torch.stack([torch.tan(shy), torch.ones_like(shy)], -1),
            ],
            -2,
        )
        fwd = rot @ shear * scale.view(b, 1, 1)
        inv = torch.linalg.inv(fwd)
        half = torch.tensor([w / 2, h / 2], dtype=torch.float64)
        d = torch.diag_embed(half.expand(b, 2))
        d_inv = torch.diag_embed((1 / half).expand(b, 2))
        flip = torch.diag_embed(torch.stack([fx, fy], -1))
        lin = d_inv @ inv @ d @ flip  # output normalised -> crop normalised (before translation)
        crop = torch.diag_embed(torch.stack([sx, sy], -1))
        t = torch.stack([tx, ty], -1).unsqueeze(-1)
        a = crop @ lin
        shift = crop @ (-(d_inv @ inv @ d) @ t) + torch.stack([cx, cy], -1).unsqueeze(-1)
        return torch.cat([a, shift], -1).float()

    def _color(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        if cfg.brightness <= 0 and cfg.contrast <= 0:
            return x
        b = x.shape[0]
        bright = _to(1 + cfg.brightness * (2 * u[:, _BRIGHT] - 1), x.device, x.dtype).view(b, 1, 1, 1)
        contrast = _to(1 + cfg.contrast * (2 * u[:, _CONTRAST] - 1), x.device, x.dtype).view(b, 1, 1, 1)
        x = x * bright
        if cfg.contrast > 0:
            mean = x.mean(dim=(1, 2, 3), keepdim=True)
            x = (x - mean) * contrast + mean
        return x.clamp_(0.0, 1.0)

    def _blur(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        if cfg.blur_p <= 0:
            return x
        b, c, h, w = x.shape
        on = u[:, _BLUR] < cfg.blur_p
        if not on.any():
            return x
        s_lo, s_hi = cfg.blur_sigma
        sigma = (s_lo + (s_hi - s_lo) * u[:, _SIGMA]).clamp(min=1e-3)
        radius = max(1, math.ceil(3 * s_hi))
        k = torch.arange(-radius, radius + 1, dtype=torch.float64)
        kern = torch.exp(-(k.view(1, -1) ** 2) / (2 * sigma.view(-1, 1) ** 2))
        kern = kern / kern.sum(1, keepdim=True)
        delta = (k == 0).double().expand(b, -1)
        kern = _to(torch.where(on.view(-1, 1), kern, delta), x.device, x.dtype)
        # One separable kernel per sample, shared by its channels: a grouped convolution over B*C groups.
        weight = kern.repeat_interleave(c, dim=0)
        pad_mode = "reflect" if min(h, w) > radius else "replicate"
        y = x.reshape(1, b * c, h, w)
        y = F.conv2d(F.pad(y, (radius, radius, 0, 0), mode=pad_mode), weight.view(b * c, 1, 1, -1), groups=b * c)
        y = F.conv2d(F.pad(y, (0, 0, radius, radius), mode=pad_mode), weight.view(b * c, 1, -1, 1), groups=b * c)
        return y.view(b, c, h, w)

    def _cutout(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        if cfg.cutout <= 0:
            return x
        b, _, h, w = x.shape
        n = cfg.cutout
        centres = _to(u[:, _N_FIXED : _N_FIXED + 2 * n].reshape(b, n, 2), x.device, torch.float32)
        half_h, half_w = cfg.cutout_size * h / 2, cfg.cutout_size * w / 2
        yy = torch.arange(h, device=x.device, dtype=torch.float32).view(1, 1, h, 1) + 0.5
        xx = torch.arange(w, device=x.device, dtype=torch.float32).view(1, 1, 1, w) + 0.5
        cy = (centres[..., 0] * h).view(b, n, 1, 1)
        cx = (centres[..., 1] * w).view(b, n, 1, 1)
        holes = ((yy - cy).abs() < half_h) & ((xx - cx).abs() < half_w)
        on = _to(u[:, _CUT_P] < cfg.cutout_p, x.device).view(b, 1, 1, 1)
        mask = holes.any(dim=1, keepdim=True) & on
        return x.masked_fill(mask, 0.0)


def _to(t: torch.Tensor, device: torch.device, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Move a small CPU parameter tensor to ``device`` without making the CPU wait for the GPU.

    A copy from pageable memory blocks until the GPU has finished the queued work; from pinned memory it is
    queued like a kernel, so the CPU keeps launching ahead.
    """
    if dtype is not None:
        t = t.to(dtype)
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def _to_unit(x: torch.Tensor) -> torch.Tensor:
    """uint8 0..255 -> float32 0..1; float input is taken as already in [0, 1]."""
    if x.dtype == torch.uint8:
        return x.float().div_(255.0)
    return x.float()


def _one_hot_float(y: torch.Tensor, num_classes: int | None) -> torch.Tensor:
    if y.dtype.is_floating_point:
        return y if y.ndim > 1 else y.unsqueeze(1)
    if num_classes is None:
        raise UsageError("mixing class-index targets needs num_classes", hint="pass num_classes=K")
    return F.one_hot(y.long(), num_classes).float()


def _beta(alpha: float, size: int, generator: torch.Generator | None) -> torch.Tensor:
    """Beta(alpha, alpha) samples, seeded from the torch generator (torch's Beta takes no generator)."""
    if alpha <= 0:
        raise UsageError(f"mixup/cutmix alpha must be > 0, got {alpha}")
    seed = int(torch.randint(0, 2**62, (1,), generator=generator).item())
    return torch.from_numpy(np.random.default_rng(seed).beta(alpha, alpha, size=size)).float()


def mixup(
    x: torch.Tensor,
    y: torch.Tensor,
    alpha: float = 0.4,
    generator: torch.Generator | None = None,
    num_classes: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mixup: each sample is blended with a random partner, ``lam ~ Beta(alpha, alpha)`` per sample.

    Args:
        x: float (B, C, H, W) (after `BatchAugment`).
        y: float targets (B,) or (B, K) (multi-hot or probabilities), or long class indices (B,) with
            ``num_classes``.
        alpha: Beta distribution parameter.
        generator: CPU generator for lam and the partner permutation.
        num_classes: Needed for class-index targets (they become one-hot).

    Returns:
        The mixed images and the mixed float targets (convex combinations of two rows).
    """
    b = x.shape[0]
    lam = _beta(alpha, b, generator)
    perm = torch.randperm(b, generator=generator)
    yf = _one_hot_float(y, num_classes)
    lam_x = _to(lam, x.device, x.dtype).view(b, *([1] * (x.ndim - 1)))
    lam_y = _to(lam, yf.device, yf.dtype).view(b, *([1] * (yf.ndim - 1)))
    perm_x, perm_y = _to(perm, x.device), _to(perm, yf.device)
    xm = lam_x * x + (1 - lam_x) * x[perm_x]
    ym = lam_y * yf + (1 - lam_y) * yf[perm_y]
    return xm, (ym.squeeze(1) if y.ndim == 1 and y.dtype.is_floating_point else ym)


def cutmix(
    x: torch.Tensor,
    y: torch.Tensor,
    alpha: float = 1.0,
    generator: torch.Generator | None = None,
    num_classes: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """CutMix: a random box of a partner sample is pasted in; targets mix by the box's area share.

    Args:
        x: float (B, C, H, W).
        y: float targets (B,) or (B, K), or long class indices (B,) with ``num_classes``.
        alpha: Beta distribution parameter of the kept area fraction.
        generator: CPU generator for the boxes and the partner permutation.
        num_classes: Needed for class-index targets.

    Returns:
        The mixed images and the mixed float targets (weights = exact pixel share of each sample).
    """
    b, _, h, w = x.shape
    lam = _beta(alpha, b, generator).double()
    perm = torch.randperm(b, generator=generator)
    centre = torch.rand(b, 2, generator=generator, dtype=torch.float64)
    cut = torch.sqrt(1 - lam)
    ch, cw = (cut * h).round(), (cut * w).round()
    y0 = (centre[:, 0] * h - ch / 2).round().clamp(0, h)
    x0 = (centre[:, 1] * w - cw / 2).round().clamp(0, w)
    y1 = (y0 + ch).clamp(max=h)
    x1 = (x0 + cw).clamp(max=w)
    yy = torch.arange(h, dtype=torch.float64).view(1, h, 1)
    xx = torch.arange(w, dtype=torch.float64).view(1, 1, w)
    box = (yy >= y0.view(b, 1, 1)) & (yy < y1.view(b, 1, 1)) & (xx >= x0.view(b, 1, 1)) & (xx < x1.view(b, 1, 1))
    kept = 1 - box.flatten(1).double().mean(1)  # exact share after clipping the box at the border
    box = _to(box, x.device).unsqueeze(1)
    xm = torch.where(box, x[_to(perm, x.device)], x)
    yf = _one_hot_float(y, num_classes)
    k = _to(kept, yf.device, yf.dtype).view(b, *([1] * (yf.ndim - 1)))
    ym = k * yf + (1 - k) * yf[_to(perm, yf.device)]
    return xm, (ym.squeeze(1) if y.ndim == 1 and y.dtype.is_floating_point else ym)
