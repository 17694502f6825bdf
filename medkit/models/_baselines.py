"""Small feature extractors for 64x64 multi-task scans: a CNN, an LSTM over image rows and an MLP.

They reproduce the usual CNN / LSTM / MLP comparison on small scans. Each maps ``(B, C, H, W)`` of any size to
pooled features ``(B, num_features)``; `medkit.models.MedkitClassifier` puts the head on top.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["CnnSmall", "LstmRows", "Mlp"]


class CnnSmall(nn.Module):
    """Conv3x3-BN-ReLU-MaxPool blocks, then global average pooling.

    Args:
        in_chans: Input channels.
        widths: Output channels of each block (one 2x pooling per block).
    """

    def __init__(self, in_chans: int = 3, widths: Sequence[int] = (32, 64, 128)) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        prev = in_chans
        for width in widths:
            # ceil_mode keeps a 1-pixel map at 1 pixel, so inputs smaller than 2**len(widths) still work
            layers += [
                nn.Conv2d(prev, width, 3, padding=1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2, ceil_mode=True),
            ]
            prev = width
        self.body = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.num_features = prev

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.body(x)).flatten(1)


class LstmRows(nn.Module):
    """An LSTM reading the image row by row: a sequence of H rows of W*C values; last hidden state out.

    Rows are average-pooled to ``row_width`` columns first so any input width gives the same LSTM input size
    (a 64-pixel-wide image with the default is left unchanged).

    Args:
        in_chans: Input channels.
        hidden: LSTM hidden size.
        layers: Stacked LSTM layers.
        bidirectional: Read rows top-down and bottom-up (features = both last states).
        row_width: Columns per row fed to the LSTM.
    """

    def __init__(
        self, in_chans: int = 3, hidden: int = 128, layers: int = 1, bidirectional: bool = False, row_width: int = 64
    ) -> None:
        super().__init__()
        self.row_width = int(row_width)
        self.resize = nn.AdaptiveAvgPool2d((None, self.row_width))
        self.lstm = nn.LSTM(
            in_chans * self.row_width, hidden, num_layers=layers, batch_first=True, bidirectional=bidirectional
        )
        self.num_features = hidden * (2 if bidirectional else 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.resize(x)
        b, c, h, w = x.shape
        rows = x.permute(0, 2, 3, 1).reshape(b, h, w * c)  # (B, H, W*C): one time step per row
        _, (h_n, _) = self.lstm(rows)
        if self.lstm.bidirectional:
            return torch.cat([h_n[-2], h_n[-1]], dim=1)
        return h_n[-1]


class Mlp(nn.Module):
    """Image average-pooled to ``input_size`` x ``input_size``, flattened, then Linear-ReLU(-Dropout) layers.

    Args:
        in_chans: Input channels.
        hidden: Width of each hidden layer.
        input_size: Side of the pooled image that is flattened (64: a 64x64 input is left unchanged).
        dropout: Dropout after each hidden layer.
    """

    def __init__(
        self, in_chans: int = 3, hidden: Sequence[int] = (512, 256), input_size: int = 64, dropout: float = 0.0
    ) -> None:
        super().__init__()
        self.resize = nn.AdaptiveAvgPool2d(int(input_size))
        layers: list[nn.Module] = [nn.Flatten(1)]
        prev = in_chans * int(input_size) ** 2
        for width in hidden:
            layers += [nn.Linear(prev, width), nn.ReLU(inplace=True)]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            prev = width
        self.body = nn.Sequential(*layers)
        self.num_features = prev

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(self.resize(x))
