"""Near duplicates that are crops, shifts or rescales of each other: the second stage of the duplicate search.

The first stage (`medkit.audit.duplicates`) joins images whose perceptual hashes are close and whose 16x16
thumbnails correlate at 0.99 or more: resized and re-compressed copies. A crop of a few percent, or a shift of a few
pixels, moves every thumbnail pixel, so its correlation drops to 0.8-0.97 and the pHash drifts. Here each image's
nearest neighbours by a blurred 8x8 thumbnail (a handful per image, found in blocks: never all pairs at once) are
compared after alignment: the two aspect-preserving 64-pixel thumbnails are brought to one scale (the same pixel
size, for a crop; the same field of view, for a rescale), the shift between them is found by phase correlation, and
the images are near duplicates when the overlapping parts correlate at ``align`` or more and cover most of the
smaller image.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["DEFAULT_ALIGN", "ALIGN_SIDE", "align_thumb", "aligned_corr", "candidate_pairs", "aligned_pairs"]

#: Smallest correlation after alignment for a near duplicate (`medkit audit --near-align`). Crops, shifts, rescales
#: and JPEG copies of CT slices and radiographs mostly score above 0.85 (the detail of the picture is compared, not
#: its outline); distinct radiographs below 0.8 (docs/audit.md has the table).
DEFAULT_ALIGN = 0.8
#: Longest side of the aspect-preserving thumbnail each image keeps for the alignment (64 x 64 bytes at most).
ALIGN_SIDE = 64
#: Neighbours per image compared after alignment.
NEIGHBOURS = 5
#: Smallest correlation of the blurred 8x8 thumbnails for a pair to be worth aligning: copies made by crops of up to
#: 10%, shifts, rescales and JPEG score 0.94 or more on real CT slices and radiographs; half of all unrelated pairs
#: score below 0.53 and 90% below 0.83, so most never reach the (costlier) alignment.
_GATE = 0.85
#: Smallest share of the smaller image the aligned overlap must cover.
_MIN_OVERLAP = 0.6
_DETAIL_SIGMA = 2.0  # thumbnail pixels: what is coarser than this is shape, not detail
_BLOCK = 2048  # rows of the exact neighbour search at a time (bounds the similarity block to _BLOCK x N floats)
#: Above this many images the neighbours come from a k-d tree on 16 principal components of the features (about
#: N log N) instead of the exact block search (N x N similarities).
_TREE_MIN = 4096


def align_thumb(gray: np.ndarray) -> tuple[bytes, int, int]:
    """The aspect-preserving thumbnail (longest side `ALIGN_SIDE`) of a 2-D image on its own range, as bytes.

    Resized in the image's own dtype where OpenCV can (no float copy of a large image).

    Returns:
        ``(pixels, height, width)`` of the uint8 thumbnail.
    """
    import cv2

    g = np.asarray(gray)
    if g.dtype not in (np.uint8, np.uint16, np.int16, np.float32, np.float64):
        g = g.astype(np.float32)
    h, w = g.shape
    scale = ALIGN_SIDE / max(h, w)
    th, tw = max(1, round(h * scale)), max(1, round(w * scale))
    small = cv2.resize(g, (tw, th), interpolation=cv2.INTER_AREA) if (th, tw) != (h, w) else g
    small = np.nan_to_num(small.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    lo, hi = float(small.min()), float(small.max())
    out = np.zeros((th, tw), np.uint8) if hi <= lo else np.round((small - lo) * (255.0 / (hi - lo))).astype(np.uint8)
    return out.tobytes(), th, tw


def _thumb(rec: dict[str, Any]) -> np.ndarray:
    data, h, w = rec["align"]
    return np.frombuffer(data, dtype=np.uint8).reshape(h, w).astype(np.float32)


def _prepared(rec: dict[str, Any], cache: dict[int, Any] | None) -> tuple[np.ndarray, np.ndarray]:
    """The float thumbnail and its detail, computed once per image when a ``cache`` is given."""
    got = cache.get(id(rec)) if cache is not None else None
    if got is None:
        t = _thumb(rec)
        got = (t, _detail(t))
        if cache is not None:
            cache[id(rec)] = got
    return got


def _ncc(a: np.ndarray, b: np.ndarray) -> float:
    a = a - a.mean()
    b = b - b.mean()
    den = float(np.sqrt((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / den) if den > 1e-6 else 0.0


def _overlap_corr(a: np.ndarray, b: np.ndarray, dx: float, dy: float) -> tuple[float, float]:
    """Correlation of ``a`` and ``b`` where they overlap when ``b`` is moved by (dx, dy) (sub-pixel), and the
    overlap's share of the smaller image."""
    import cv2

    ha, wa = a.shape
    m = np.float32([[1, 0, dx], [0, 1, dy]])
    moved = cv2.warpAffine(b, m, (wa, ha), flags=cv2.INTER_LINEAR, borderValue=0)
    inside = cv2.warpAffine(np.ones_like(b), m, (wa, ha), flags=cv2.INTER_LINEAR, borderValue=0) > 0.999
    n = int(inside.sum())
    if n < 16:
        return 0.0, 0.0
    return _ncc(a[inside], moved[inside]), n / min(a.size, b.size)


def _shift(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Phase-correlation shift (dx, dy) that moves ``b`` onto ``a``, both padded to one canvas."""
    import cv2

    h, w = max(a.shape[0], b.shape[0]), max(a.shape[1], b.shape[1])
    ca = np.zeros((h, w), np.float32)
    cb = np.zeros((h, w), np.float32)
    ca[: a.shape[0], : a.shape[1]] = a - a.mean()
    cb[: b.shape[0], : b.shape[1]] = b - b.mean()
    (dx, dy), _ = cv2.phaseCorrelate(cb, ca)
    return dx, dy


def aligned_corr(ra: dict[str, Any], rb: dict[str, Any], cache: dict[int, Any] | None = None) -> float:
    """Correlation of two images after the best alignment of a crop/shift or a rescale (0 when they do not overlap).

    Args:
        ra: Scan summary of the first image (``align``, ``height``, ``width``).
        rb: Scan summary of the second image.
        cache: Per-image prepared thumbnails, kept across calls (keyed by the summaries' ids).

    Returns:
        The highest correlation over the hypotheses whose overlap covers enough of the smaller image.
    """
    import cv2

    a, da = _prepared(ra, cache)
    b, db0 = _prepared(rb, cache)
    best = 0.0
    # Same pixel size (a crop or shift of one picture): b brought to a's scale.
    sa = a.shape[1] / ra["width"]
    sb = b.shape[1] / rb["width"]
    sizes: list[tuple[int, int]] = []
    r = sa / sb
    if 0.5 < r < 2.0:
        sizes.append((max(1, round(b.shape[1] * r)), max(1, round(b.shape[0] * r))))
    # Same field of view (a rescaled copy): b brought to a's thumbnail size.
    sizes.append(a.shape[::-1])
    for size in dict.fromkeys(sizes):  # one hypothesis when both agree (images of one size)
        same = size == b.shape[::-1]
        bb = b if same else cv2.resize(b, size, interpolation=cv2.INTER_AREA)
        dx, dy = _shift(a, bb)
        db = db0 if same else _detail(bb)
        shifts = [(dx, dy)] if abs(dx) < 0.5 and abs(dy) < 0.5 else [(dx, dy), (0.0, 0.0)]
        for sx, sy in shifts:
            corr, share = _overlap_corr(da, db, sx, sy)
            if share >= _MIN_OVERLAP:
                best = max(best, corr)
    return best


def _detail(t: np.ndarray) -> np.ndarray:
    """The thumbnail without its coarse shape (minus a blurred copy): two chest films or two CT slices share the
    anatomy's outline, only copies share the detail."""
    import cv2

    return t - cv2.GaussianBlur(t, (0, 0), _DETAIL_SIGMA)


def _features(records: Sequence[dict[str, Any]], ok: Sequence[int]) -> np.ndarray:
    """Per image a unit-norm, zero-mean blurred 8x8 thumbnail (64 values): what the neighbour search compares."""
    import cv2

    thumbs = np.frombuffer(b"".join(records[k]["thumb"] for k in ok), dtype=np.uint8).reshape(len(ok), 16, 16)
    f = np.empty((len(ok), 64), np.float32)
    for n, t in enumerate(thumbs):
        f[n] = cv2.resize(
            cv2.GaussianBlur(t.astype(np.float32), (5, 5), 1.2), (8, 8), interpolation=cv2.INTER_AREA
        ).ravel()
    f -= f.mean(axis=1, keepdims=True)
    f /= np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-6)
    return f


def candidate_pairs(records: Sequence[dict[str, Any]], ok: Sequence[int], k: int = NEIGHBOURS) -> np.ndarray:
    """Pairs ``(a, b)``, ``a < b`` (indices into ``ok``), of images among each other's ``k`` nearest neighbours
    whose features correlate at `_GATE` or more.

    Up to `_TREE_MIN` images the similarities are computed exactly, ``_BLOCK`` rows at a time; above, the
    neighbours come from a k-d tree on 16 principal components, so no step grows with the number of pairs.
    """
    n = len(ok)
    if n < 2:
        return np.empty((0, 2), np.int64)
    f = _features(records, ok)
    k = min(k, n - 1)
    nb = _neighbours_tree(f, k) if n > _TREE_MIN else _neighbours_exact(f, k)
    a = np.repeat(np.arange(n), k)
    b = nb.ravel()
    keep = (a != b) & (np.einsum("ij,ij->i", f[a], f[b]) >= _GATE)
    a, b = a[keep], b[keep]
    if not len(a):
        return np.empty((0, 2), np.int64)
    return np.unique(np.stack([np.minimum(a, b), np.maximum(a, b)], axis=1), axis=0)


def _neighbours_exact(f: np.ndarray, k: int) -> np.ndarray:
    """The ``k`` most similar other rows of each row of ``f`` (exact, in blocks of rows)."""
    n = len(f)
    out = np.empty((n, k), np.int64)
    for lo in range(0, n, _BLOCK):
        sim = f[lo : lo + _BLOCK] @ f.T
        sim[np.arange(len(sim)), np.arange(lo, lo + len(sim))] = -2.0  # not one's own neighbour
        out[lo : lo + len(sim)] = np.argpartition(-sim, k - 1, axis=1)[:, :k]
    return out


def _neighbours_tree(f: np.ndarray, k: int) -> np.ndarray:
    """The ``k`` nearest other rows of each row of ``f`` in a 16-component projection, from a k-d tree."""
    from sklearn.neighbors import KDTree

    rng = np.random.default_rng(0)
    sample = f[rng.choice(len(f), min(len(f), 5000), replace=False)]
    _, _, vt = np.linalg.svd(sample - sample.mean(axis=0), full_matrices=False)
    z = np.ascontiguousarray((f - sample.mean(axis=0)) @ vt[:16].T, dtype=np.float64)
    _, idx = KDTree(z).query(z, k=k + 1)
    return idx[:, 1:]  # the first is the row itself (or an identical one, caught by a != b)


def aligned_pairs(
    records: Sequence[dict[str, Any]], ok: Sequence[int], align: float, joined: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs of images (indices into ``ok``) whose correlation after alignment is at least ``align``.

    Args:
        records: The scan's summaries (``thumb`` and ``align`` fields).
        ok: The readable images.
        align: The correlation threshold.
        joined: A cluster label per ``ok`` image from the first stage: pairs already in one cluster are skipped.

    Returns:
        ``(i, j, corr)``.
    """
    cand = candidate_pairs(records, ok)
    if joined is not None and len(cand):
        cand = cand[joined[cand[:, 0]] != joined[cand[:, 1]]]
    keep_i, keep_j, keep_c = [], [], []
    cache: dict[int, Any] = {}
    for a, b in cand.tolist():
        ra, rb = records[ok[a]], records[ok[b]]
        if "align" not in ra or "align" not in rb:
            continue
        # The larger picture as the reference (a crop then lies inside it); a close call is checked both ways.
        big, small = (ra, rb) if ra["height"] * ra["width"] >= rb["height"] * rb["width"] else (rb, ra)
        c = aligned_corr(big, small, cache)
        if align - 0.1 <= c < align:
            c = max(c, aligned_corr(small, big, cache))
        if c >= align:
            keep_i.append(a)
            keep_j.append(b)
            keep_c.append(c)
    return np.asarray(keep_i, np.int64), np.asarray(keep_j, np.int64), np.asarray(keep_c, np.float64)
