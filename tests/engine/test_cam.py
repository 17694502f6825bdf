"""Grad-CAM: the layer it hooks, the map against the closed form of a global-average-pooled model, the picks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from medkit.engine.cam import cam_layer, contact_sheet, grad_cam, overlay, select_cams
from medkit.errors import UsageError
from medkit.registries import MODELS
from medkit.target import BINARY, MULTILABEL, ORDINAL


def test_cam_layer_is_the_last_feature_map_with_a_spatial_extent() -> None:
    x64, x28 = torch.zeros(1, 1, 64, 64), torch.zeros(1, 1, 28, 28)
    assert cam_layer(MODELS.create("cnn_small", num_classes=2, in_chans=1).eval(), x64) == "backbone.body"
    resnet = MODELS.create("resnet18", num_classes=2, in_chans=1).eval()
    assert cam_layer(resnet, x64) == "backbone.layer4"  # 2x2 at 64 px
    assert cam_layer(resnet, x28) == "backbone.layer3"  # layer4 is 1x1 at 28 px: the stage before it
    for name in ("mlp", "lstm_rows"):  # their first module pools the image: a 4-D map, but no convolution
        with pytest.raises(UsageError, match="no convolutional feature map"):
            cam_layer(MODELS.create(name, num_classes=2, in_chans=1).eval(), x64)


class _GapNet(nn.Module):
    """conv (same size) -> ReLU -> global average pool -> linear: Grad-CAM of output k is ReLU(sum_c w[k, c] A_c)."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.conv = nn.Conv2d(2, 4, 3, padding=1)
        self.act = nn.ReLU()
        self.fc = nn.Linear(4, 3)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.act(self.conv(x)).mean(dim=(2, 3)))


def test_grad_cam_matches_the_closed_form_of_a_pooled_linear_head() -> None:
    net = _GapNet().eval()
    x = torch.randn(3, 2, 6, 5, generator=torch.Generator().manual_seed(1))
    outputs = np.array([0, 2, 1])
    got = grad_cam(net, x, outputs)
    with torch.no_grad():
        a = net.act(net.conv(x)).numpy()  # (B, 4, 6, 5)
    w = net.fc.weight.detach().numpy()
    for b, k in enumerate(outputs):
        # gradient of the logit w.r.t. A_c(i, j) is w[k, c] / (h * w): the same for every pixel
        ref = np.maximum(np.tensordot(w[k] / 30.0, a[b], axes=1), 0)
        ref = ref / ref.max()
        np.testing.assert_allclose(got[b], ref, atol=1e-5)
    assert got.shape == (3, 6, 5) and got.dtype == np.float32
    # the ordinal target explains the sum of the outputs: weights summed over k
    got_sum = grad_cam(net, x, outputs, cumulative=True)
    ref = np.maximum(np.tensordot(w.sum(axis=0) / 30.0, a[0], axes=1), 0)
    np.testing.assert_allclose(got_sum[0], ref / ref.max(), atol=1e-5)
    assert all(p.grad is None for p in net.parameters())


def test_select_cams_takes_each_labels_best_in_turn_then_negatives() -> None:
    probs = np.array(
        [
            [0.9, 0.1],
            [0.8, 0.95],
            [0.2, 0.7],
            [0.05, 0.3],
        ]
    )
    picks = select_cams(probs, ["a", "b"], MULTILABEL, 4)
    # 3 positives: b (top 0.95) row 1, a (top 0.9) row 0, then b's second (row 2); 1 negative: a's lowest (row 3)
    assert [(p.row, p.label, p.positive) for p in picks] == [
        (1, "b", True),
        (0, "a", True),
        (2, "b", True),
        (3, "a", False),
    ]
    assert picks[0].score == pytest.approx(0.95)
    grades = select_cams(np.array([[0.9, 0.8], [0.1, 0.0], [0.6, 0.2]]), [">0", ">1"], ORDINAL, 2)
    assert [(p.row, p.label, p.score) for p in grades] == [(0, "grade", pytest.approx(1.7)), (2, "grade", 0.8)]
    assert len(select_cams(np.array([[0.3]]), ["x"], BINARY, 10)) == 1
    # an image tops both labels: the second label shows its best other image
    twice = select_cams(np.array([[0.9, 0.8], [0.1, 0.2], [0.5, 0.6]]), ["a", "b"], MULTILABEL, 2)
    assert [(p.row, p.label) for p in twice] == [(0, "a"), (2, "b")]


def test_overlay_and_sheet_shapes() -> None:
    tile = overlay(np.zeros((28, 28, 1), np.uint8), np.ones((28, 28), np.float32), ["x: 0.5", "test/1"], side=64)
    assert tile.shape == (64 + 44, 2 * 64 + 4, 3) and tile.dtype == np.uint8
    assert tile[:64, 68:].mean() > tile[:64, :64].mean()  # the heat map shows over the black image
    empty = overlay(np.zeros((28, 28, 1), np.uint8), np.zeros((28, 28), np.float32), ["x", "y"], side=64)
    assert empty[:64, 68:, 0].mean() == empty[:64, 68:, 2].mean() > 0  # no colour wash; white note text
    sheet = contact_sheet([tile] * 5, columns=2, gap=4)
    assert sheet.shape == (3 * tile.shape[0] + 4 * 4, 2 * tile.shape[1] + 3 * 4, 3)
