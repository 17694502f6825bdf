"""Tile selection: the best N tiles of a scored grid in rank order, ties broken by position.

This module imports numpy, not torch.
"""

from __future__ import annotations

import numpy as np

__all__ = ["select_tiles"]


def select_tiles(
    score: np.ndarray, tissue: np.ndarray, n: int, method: str = "white", min_tissue: float = 0.0, size: int = 1
) -> np.ndarray:
    """Row-major positions of the best ``n`` tiles in rank order (fewer when fewer tiles qualify).

    White rule: lowest score first; otsu rule: most tissue first; ties go to the earlier position.
    Tiles with a tissue fraction below ``min_tissue`` (tissue pixels / ``size**2``) are left out.
    """
    positions = np.arange(score.size, dtype=np.int64)
    if min_tissue > 0:
        positions = positions[tissue >= min_tissue * size * size]
    if positions.size == 0 or n <= 0:
        return positions[:0]
    primary = score[positions] if method == "white" else -tissue[positions]
    # One int64 key (primary, position) makes argpartition + sort exact and tie-stable.
    key = (primary - primary.min()) * np.int64(score.size) + positions
    k = min(n, key.size)
    top = np.argpartition(key, k - 1)[:k] if k < key.size else np.arange(key.size)
    return positions[top[np.argsort(key[top])]]
