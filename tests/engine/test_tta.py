"""Test-time augmentation: each view and its inverse pixel by pixel, parsing ``--tta``, and view averaging."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from medkit.data.dataset import Split
from medkit.engine.components import InputTransforms
from medkit.engine.feed import make_feeder
from medkit.engine.predict import gather, predict
from medkit.engine.runtime import Runtime
from medkit.engine.tta import SHIFT_FRACTION, TTA_TRANSFORMS, average_views, parse_tta, shift
from medkit.errors import UsageError
from medkit.target import BINARY

CPU = Runtime(torch.device("cpu"))


def _batch(dtype: torch.dtype = torch.uint8, shape: tuple[int, ...] = (2, 3, 5, 7)) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, shape, generator=g)
    return x.to(dtype)


def _view(name: str):  # noqa: ANN202
    return next(v for _, views in TTA_TRANSFORMS.values() for v in views if v.name == name)


def test_hflip_and_vflip_move_every_pixel_to_its_mirror_and_back() -> None:
    x = _batch()
    b, c, h, w = x.shape
    hf, vf = _view("hflip"), _view("vflip")
    yh, yv = hf.apply(x), vf.apply(x)
    for i in range(b):
        for ch in range(c):
            for r in range(h):
                for col in range(w):
                    assert yh[i, ch, r, col] == x[i, ch, r, w - 1 - col]
                    assert yv[i, ch, r, col] == x[i, ch, h - 1 - r, col]
    assert yh.dtype == torch.uint8 and yh.shape == x.shape
    assert torch.equal(hf.invert(yh), x) and torch.equal(vf.invert(yv), x)


def _shift_reference(x: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """Plain loops: out[y, x] = in[clamp(y - dy), clamp(x - dx)]."""
    h, w = x.shape[-2:]
    out = torch.empty_like(x)
    for r in range(h):
        for c in range(w):
            out[..., r, c] = x[..., min(max(r - dy, 0), h - 1), min(max(c - dx, 0), w - 1)]
    return out


@pytest.mark.parametrize(
    ("name", "sy", "sx"), [("shift+x", 0, 1), ("shift-x", 0, -1), ("shift+y", 1, 0), ("shift-y", -1, 0)]
)
def test_shift_views_repeat_the_edge_and_invert_exactly_on_the_interior(name: str, sy: int, sx: int) -> None:
    x = _batch(torch.float32, (2, 2, 30, 20))
    dy, dx = sy * round(SHIFT_FRACTION * 30), sx * round(SHIFT_FRACTION * 20)  # 2 and 1 pixels
    view = _view(name)
    y = view.apply(x)
    assert torch.equal(y, _shift_reference(x, dy, dx))
    back = view.invert(y)
    # Exact except on the |d| rows / columns the shift filled by repeating the edge.
    rows = slice(0, 30 - dy) if dy > 0 else slice(-dy, 30)
    cols = slice(0, 20 - dx) if dx > 0 else slice(-dx, 20)
    assert torch.equal(back[..., rows, cols], x[..., rows, cols])
    assert not torch.equal(back, x)  # the filled edge is lost, as documented


def test_shift_of_a_tiny_image_moves_at_least_one_pixel_and_keeps_uint8() -> None:
    x = _batch(torch.uint8, (1, 1, 4, 4))
    y = _view("shift+x").apply(x)
    assert y.dtype == torch.uint8
    assert torch.equal(y, _shift_reference(x, 0, 1))
    assert torch.equal(shift(x, 0, 0), x) and shift(x, 0, 0) is not x


def test_parse_tta_keeps_the_identity_first_and_each_view_once() -> None:
    names = [v.name for v in parse_tta("hflip, vflip,shift,hflip")]
    assert names == ["identity", "hflip", "vflip", "shift+x", "shift-x", "shift+y", "shift-y"]
    assert [v.name for v in parse_tta(None)] == ["identity"]
    assert [v.name for v in parse_tta("none")] == ["identity"]
    assert [v.name for v in parse_tta(["vflip"])] == ["identity", "vflip"]
    assert set(TTA_TRANSFORMS) == {"hflip", "vflip", "shift"}


def test_parse_tta_suggests_the_closest_name() -> None:
    with pytest.raises(UsageError, match="unknown TTA transform 'hfilp' \\(did you mean 'hflip'\\?\\)"):
        parse_tta("hfilp")


def test_average_views_is_the_mean() -> None:
    a, b = np.array([[0.2, 0.4]], np.float32), np.array([[0.6, 0.9]], np.float32)
    np.testing.assert_allclose(average_views([a, b]), [[0.4, 0.65]], rtol=1e-6)
    assert average_views([a]).dtype == np.float32
    with pytest.raises(UsageError):
        average_views([])


class _MeanPool(nn.Module):
    """Logit = weighted mean of each channel: invariant to flips, not to shifts (the repeated edge)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 1)
        with torch.no_grad():
            self.fc.weight.copy_(torch.tensor([[3.0, -2.0, 1.5]]))
            self.fc.bias.fill_(0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.mean(dim=(2, 3)))


def _tta_probs(model: nn.Module, images: np.ndarray, spec: str) -> np.ndarray:
    n = len(images)
    split = Split(_Array(images), np.arange(n), np.zeros((n, 0), np.float32), [str(i) for i in range(n)])
    norm = InputTransforms((0.5,), (0.25,), images.shape[1]).eval
    out = []
    for view in parse_tta(spec):
        feed = make_feeder(split, 4, CPU, train=False)
        preds = predict(model, feed, CPU, BINARY, lambda x, view=view: norm(view.apply(x)))
        out.append(gather(preds, CPU.dist, split).probs)
    return average_views(out)


class _Array:
    def __init__(self, images: np.ndarray) -> None:
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def get_batch(self, rows, out=None):  # noqa: ANN001, ANN201
        return self.images[np.asarray(rows)]


def test_tta_of_a_flip_invariant_model_equals_the_plain_prediction() -> None:
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (10, 16, 16, 3), dtype=np.uint8)
    model = _MeanPool()
    plain = _tta_probs(model, images, "none")
    np.testing.assert_allclose(_tta_probs(model, images, "hflip,vflip"), plain, atol=1e-6)
    assert np.abs(_tta_probs(model, images, "shift") - plain).max() > 1e-4  # shifts do change this model's input
