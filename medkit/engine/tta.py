"""Test-time augmentation: views of a batch that a classifier should score alike, and their inverses.

A `View` changes a ``(B, C, H, W)`` batch (uint8 or float, any device) with ``apply`` and maps a spatial output of
the viewed batch (a Grad-CAM map, a segmentation) back onto the original pixels with ``invert``. `TTA_TRANSFORMS`
names the transforms ``--tta`` takes; each gives one or more views:

- ``hflip``: mirror left-right; its own inverse (exact).
- ``vflip``: mirror top-bottom; its own inverse (exact).
- ``shift``: four views, translated by ``SHIFT_FRACTION`` of the side (at least 1 px) left, right, up and down, the
  edge row or column repeated into the gap; the inverse is the opposite translation, exact except on the pixels
  along the edge the shift had filled.

`parse_tta` turns ``"hflip,vflip,shift"`` into the identity plus the views of each transform (a union, not every
combination: hflip,vflip gives 3 views, not 4); `average_views` averages the probabilities of the views. All spatial
changes are integer index gathers, so a view of a uint8 batch is still uint8 and commutes with the per-channel
normalisation.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from medkit.errors import UsageError, did_you_mean

__all__ = ["View", "TTA_TRANSFORMS", "SHIFT_FRACTION", "IDENTITY", "parse_tta", "shift", "average_views"]

#: Translation of the ``shift`` views, as a fraction of the image side.
SHIFT_FRACTION = 0.06


@dataclass(frozen=True)
class View:
    """One test-time view of a batch.

    Attributes:
        name: Shown in logs and recorded in the prediction sidecar (``hflip``, ``shift+x``, ...).
        apply: ``(B, C, H, W)`` batch -> the viewed batch (same shape, dtype and device).
        invert: A spatial output of the viewed batch ``(B, C, H, W)`` -> the same output on the original pixels.
    """

    name: str
    apply: Callable[[Any], Any]
    invert: Callable[[Any], Any]


def _same(x: Any) -> Any:
    return x


def _hflip(x: Any) -> Any:
    return x.flip(-1)


def _vflip(x: Any) -> Any:
    return x.flip(-2)


def shift(x: Any, dy: int, dx: int) -> Any:
    """Translate a ``(B, C, H, W)`` batch by ``dy`` rows and ``dx`` columns, repeating the edge into the gap.

    ``out[..., y, x] = x[..., clamp(y - dy), clamp(x - dx)]``: content moves down by ``dy`` and right by ``dx``
    (negative values move it up / left). Any dtype; the result is a new tensor.
    """
    import torch

    h, w = x.shape[-2], x.shape[-1]
    out = x
    if dy:
        rows = (torch.arange(h, device=x.device) - dy).clamp_(0, h - 1)
        out = out.index_select(-2, rows)
    if dx:
        cols = (torch.arange(w, device=x.device) - dx).clamp_(0, w - 1)
        out = out.index_select(-1, cols)
    return out if out is not x else x.clone()


def _shift_px(x: Any, fraction: float, axis: int) -> int:
    return max(1, round(fraction * int(x.shape[axis])))


def _shift_view(name: str, sy: int, sx: int, fraction: float = SHIFT_FRACTION) -> View:
    """A translation by ``fraction`` of the side in the direction (sy, sx) (each -1, 0 or 1)."""

    def apply(x: Any) -> Any:
        return shift(x, sy * _shift_px(x, fraction, -2), sx * _shift_px(x, fraction, -1))

    def invert(x: Any) -> Any:
        return shift(x, -sy * _shift_px(x, fraction, -2), -sx * _shift_px(x, fraction, -1))

    return View(name, apply, invert)


IDENTITY = View("identity", _same, _same)

#: ``--tta`` name -> (one-line description, its views).
TTA_TRANSFORMS: dict[str, tuple[str, tuple[View, ...]]] = {
    "hflip": ("mirror left-right", (View("hflip", _hflip, _hflip),)),
    "vflip": ("mirror top-bottom", (View("vflip", _vflip, _vflip),)),
    "shift": (
        f"translate by {SHIFT_FRACTION:.0%} of the side in 4 directions, edges repeated",
        (
            _shift_view("shift+x", 0, 1),
            _shift_view("shift-x", 0, -1),
            _shift_view("shift+y", 1, 0),
            _shift_view("shift-y", -1, 0),
        ),
    ),
}


def parse_tta(spec: str | Sequence[str] | None) -> tuple[View, ...]:
    """The views of a ``--tta`` value: the identity first, then the views of each named transform once.

    Args:
        spec: ``"hflip,vflip,shift"``, a list of names, or None / ``""`` / ``"none"`` for the identity alone.

    Raises:
        UsageError: An unknown name, with the closest known one.
    """
    names = [s.strip() for s in spec.split(",")] if isinstance(spec, str) else list(spec or ())
    names = [n for n in names if n and n.lower() != "none"]
    views = [IDENTITY]
    for name in dict.fromkeys(names):
        if name not in TTA_TRANSFORMS:
            raise UsageError(
                f"unknown TTA transform '{name}'{did_you_mean(name, TTA_TRANSFORMS)}",
                hint=f"use a comma-separated list of: {', '.join(TTA_TRANSFORMS)}",
            )
        views.extend(TTA_TRANSFORMS[name][1])
    return tuple(views)


def average_views(probs: Sequence[Any]) -> Any:
    """The mean of the views' probabilities (numpy arrays of one shape), in float64 then back to float32."""
    import numpy as np

    if not probs:
        raise UsageError("no views to average", hint="this is a bug; please report it")
    return np.mean(np.stack([np.asarray(p, dtype=np.float64) for p in probs]), axis=0).astype(np.float32)
