"""Perceptual hashes and a sub-quadratic near-duplicate search over them.

`phash64` is the DCT hash (32x32 area-resized grey image, top-left 8x8 DCT block, each coefficient compared with
the block's median): it survives resizing, JPEG re-compression and brightness/contrast scaling. `near_pairs`
finds every pair of hashes within a Hamming distance without comparing all pairs (multi-index hashing: with
``t + 1`` disjoint bands, two hashes at distance <= t agree exactly on at least one band, by the pigeonhole
principle), and `clusters` joins pairs into connected components.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["phash64", "phash64_small", "resize32", "hamming", "band_slices", "near_pairs", "clusters"]

_MAX_PAIRS_PER_BLOCK = 4_000_000
_Pairs = tuple[np.ndarray, np.ndarray, np.ndarray]  # (i, j, distance) of some pairs
_POPCOUNT8 = np.array([bin(v).count("1") for v in range(256)], dtype=np.uint8)


def phash64(gray: np.ndarray) -> int:
    """64-bit DCT perceptual hash of a 2-D image (any dtype).

    Args:
        gray: (H, W) array; NaNs are treated as 0.

    Returns:
        The hash as a Python int in [0, 2**64).
    """
    return phash64_small(resize32(gray))


def resize32(gray: np.ndarray) -> np.ndarray:
    """The 32x32 float32 area-resized image `phash64_small` hashes (NaNs as 0)."""
    import cv2

    g = np.asarray(gray)
    if g.ndim != 2:
        raise ValueError(f"phash64 needs a 2-D image, got shape {g.shape}")
    integer = np.issubdtype(g.dtype, np.integer)
    if g.dtype in (np.uint8, np.uint16, np.int16) and g.shape != (32, 32):
        # Resized in its own dtype first: a float32 copy of a large image would be 4 bytes per pixel.
        return cv2.resize(g, (32, 32), interpolation=cv2.INTER_AREA).astype(np.float32)
    g = g.astype(np.float32, copy=False)
    if not integer:
        g = np.nan_to_num(g, copy=True, nan=0.0, posinf=0.0, neginf=0.0)
    return cv2.resize(g, (32, 32), interpolation=cv2.INTER_AREA) if g.shape != (32, 32) else g


def phash64_small(small: np.ndarray) -> int:
    """`phash64` of an image already resized to 32x32 float32 (see `resize32`)."""
    import cv2

    block = cv2.dct(np.ascontiguousarray(small, dtype=np.float32))[:8, :8].ravel()
    mid = np.partition(block, (31, 32))
    bits = block > (mid[31] + mid[32]) / 2  # the median of 64 values
    return int.from_bytes(np.packbits(bits).tobytes(), "big")


def hamming(a: np.ndarray | int, b: np.ndarray | int) -> np.ndarray:
    """Bit differences between uint64 hashes (element-wise)."""
    x = np.bitwise_xor(np.asarray(a, dtype=np.uint64), np.asarray(b, dtype=np.uint64))
    if hasattr(np, "bitwise_count"):  # numpy >= 2.0
        return np.bitwise_count(x).astype(np.int64)
    as_bytes = np.ascontiguousarray(x)[..., None].view(np.uint8)
    return _POPCOUNT8[as_bytes].sum(axis=-1, dtype=np.int64)


def band_slices(n_bands: int, bits: int = 64) -> list[tuple[int, int]]:
    """(shift, width) of ``n_bands`` disjoint, nearly equal bit bands covering ``bits`` bits."""
    if not 1 <= n_bands <= bits:
        raise ValueError(f"n_bands must be in 1..{bits}, got {n_bands}")
    widths = [bits // n_bands + (1 if i < bits % n_bands else 0) for i in range(n_bands)]
    out, shift = [], 0
    for w in widths:
        out.append((shift, w))
        shift += w
    return out


def _pairs_in_runs(order: np.ndarray, keys_sorted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """All pairs of positions that share a key, from an argsort and the sorted keys (work = number of pairs)."""
    n = len(keys_sorted)
    if n < 2:
        empty = np.empty(0, dtype=np.int64)
        return empty, empty
    starts = np.flatnonzero(np.r_[True, keys_sorted[1:] != keys_sorted[:-1]])
    ends = np.r_[starts[1:], n]
    lengths = ends - starts
    multi = lengths > 1
    if not multi.any():
        empty = np.empty(0, dtype=np.int64)
        return empty, empty
    run_end = np.repeat(ends[multi], lengths[multi])
    pos = np.concatenate([np.arange(s, e) for s, e in zip(starts[multi], ends[multi], strict=True)])
    left, right = [], []
    k = 1
    # Each round pairs every position with the one k places later in its run; positions whose run is used
    # up drop out, so the total work is the number of pairs, not n times the largest run.
    while len(pos):
        keep = pos + k < run_end
        pos, run_end = pos[keep], run_end[keep]
        if not len(pos):
            break
        left.append(order[pos])
        right.append(order[pos + k])
        k += 1
    return np.concatenate(left), np.concatenate(right)


def near_pairs(
    hashes: np.ndarray | list[int], threshold: int, max_group: int | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every pair of hashes at Hamming distance <= ``threshold``, without an all-pairs comparison.

    Identical hashes are collapsed first (so a thousand black images cost nothing); the distinct hashes are
    split into ``threshold + 1`` bands and only pairs that agree exactly on a band are checked.

    Args:
        hashes: N uint64 hashes.
        threshold: Largest Hamming distance counted as near (0..63).
        max_group: When set, a run of more than this many identical hashes (ten thousand black images) is joined
            by a star (its first member paired with each other one) instead of all pairs, and pairs between two
            such runs by their first members only: enough for clustering, linear in the run length.

    Returns:
        ``(i, j, d)``: indices into ``hashes`` with ``i < j`` and their distance, each pair once (every pair
        when ``max_group`` is None).
    """
    h = np.asarray(hashes, dtype=np.uint64)
    if not 0 <= threshold < 64:
        raise ValueError(f"threshold must be in 0..63, got {threshold}")
    uniq, inverse = np.unique(h, return_inverse=True)
    inverse = inverse.ravel()
    ua, ub = _distinct_pairs(uniq, threshold)
    counts = np.bincount(inverse, minlength=len(uniq))
    members = _members(inverse, len(uniq))
    parts = _identical_pairs(members, counts, max_group)
    if len(ua):
        parts += _expand_pairs(uniq, ua, ub, counts, members, max_group)
    if not parts:
        empty = np.empty(0, dtype=np.int64)
        return empty, empty, empty
    i, j, d = (np.concatenate(x) for x in zip(*parts, strict=True))
    return i, j, d


def _distinct_pairs(uniq: np.ndarray, threshold: int) -> tuple[np.ndarray, np.ndarray]:
    """Pairs ``(a, b)``, ``a < b``, of distinct hashes within ``threshold``: multi-index hashing over bands."""
    ii: list[np.ndarray] = []
    jj: list[np.ndarray] = []
    if threshold > 0 and len(uniq) > 1:
        for shift, width in band_slices(threshold + 1):
            key = (uniq >> np.uint64(shift)) & np.uint64((1 << width) - 1)
            order = np.argsort(key, kind="stable")
            a, b = _pairs_in_runs(order, key[order])
            for lo in range(0, len(a), _MAX_PAIRS_PER_BLOCK):
                sa, sb = a[lo : lo + _MAX_PAIRS_PER_BLOCK], b[lo : lo + _MAX_PAIRS_PER_BLOCK]
                ok = hamming(uniq[sa], uniq[sb]) <= threshold
                ii.append(np.minimum(sa[ok], sb[ok]))
                jj.append(np.maximum(sa[ok], sb[ok]))
    if not ii:
        empty = np.empty(0, dtype=np.int64)
        return empty, empty
    # A pair agreeing on several bands is found once per band: de-duplicate.
    code = np.unique(np.concatenate(ii).astype(np.int64) * len(uniq) + np.concatenate(jj))
    return code // len(uniq), code % len(uniq)


def _identical_pairs(members: list[np.ndarray], counts: np.ndarray, max_group: int | None) -> list[_Pairs]:
    """Pairs of original indices sharing one hash (distance 0): all pairs, or a star for a run over ``max_group``."""
    out: list[_Pairs] = []
    for u in np.flatnonzero(counts > 1).tolist():
        m = members[u]
        if max_group is not None and len(m) > max_group:
            out.append((np.full(len(m) - 1, m[0]), m[1:], np.zeros(len(m) - 1, dtype=np.int64)))
            continue
        a, b = np.triu_indices(len(m), 1)
        out.append((m[a], m[b], np.zeros(len(a), dtype=np.int64)))
    return out


def _expand_pairs(
    uniq: np.ndarray,
    ua: np.ndarray,
    ub: np.ndarray,
    counts: np.ndarray,
    members: list[np.ndarray],
    max_group: int | None,
) -> list[_Pairs]:
    """Pairs of distinct hashes expanded back to the original indices of every file carrying them."""
    rep = np.array([m[0] for m in members], dtype=np.int64)
    dist = hamming(uniq[ua], uniq[ub])
    single = (counts[ua] == 1) & (counts[ub] == 1)
    ra, rb = rep[ua[single]], rep[ub[single]]
    out: list[_Pairs] = [(np.minimum(ra, rb), np.maximum(ra, rb), dist[single])]
    for a, b, d in zip(ua[~single].tolist(), ub[~single].tolist(), dist[~single].tolist(), strict=True):
        ma, mb = members[a], members[b]
        if max_group is not None and len(ma) * len(mb) > max_group:
            ma, mb = ma[:1], mb[:1]
        grid_a, grid_b = np.meshgrid(ma, mb, indexing="ij")
        out.append(
            (
                np.minimum(grid_a, grid_b).ravel(),
                np.maximum(grid_a, grid_b).ravel(),
                np.full(grid_a.size, d, dtype=np.int64),
            )
        )
    return out


def _members(inverse: np.ndarray, n_groups: int) -> list[np.ndarray]:
    order = np.argsort(inverse, kind="stable")
    bounds = np.searchsorted(inverse[order], np.arange(n_groups + 1))
    return [order[bounds[g] : bounds[g + 1]] for g in range(n_groups)]


def clusters(n: int, i: Any, j: Any) -> np.ndarray:
    """Connected components of ``n`` items joined by the pairs ``(i, j)``: a component label per item.

    Labels are numbered in order of each component's first item, so they are stable for a given input.
    """
    parent = np.arange(n, dtype=np.int64)

    def find(x: int) -> int:
        root = x
        while parent[root] != root:
            root = parent[root]
        while parent[x] != root:  # path compression keeps later finds near O(1)
            parent[x], x = root, parent[x]
        return root

    for a, b in zip(np.asarray(i, dtype=np.int64).tolist(), np.asarray(j, dtype=np.int64).tolist(), strict=True):
        ra, rb = find(a), find(b)
        if ra != rb:
            if ra < rb:
                parent[rb] = ra
            else:
                parent[ra] = rb
    roots = np.array([find(x) for x in range(n)], dtype=np.int64)
    _, labels = np.unique(roots, return_inverse=True)
    return labels.ravel().astype(np.int64)
