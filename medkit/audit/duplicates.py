"""Exact and near duplicates: clusters of files with the same pixels, or with close perceptual hashes whose
thumbnails correlate (`medkit.audit.phash` finds the candidate pairs without comparing all pairs).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np

from medkit.audit.report import Finding

__all__ = ["groups", "thumb_corr", "duplicate_clusters", "duplicate_findings"]

_CORR_BLOCK = 1 << 20  # thumbnail pairs correlated at a time (bounds the temporary arrays)


def groups(labels: np.ndarray) -> dict[int, list[int]]:
    """Indices per cluster label, in index order (clusters in order of their first member)."""
    out: dict[int, list[int]] = defaultdict(list)
    for k, c in enumerate(labels.tolist()):
        out[c].append(k)
    return out


def thumb_corr(thumbs: np.ndarray, i: np.ndarray, j: np.ndarray, family: np.ndarray) -> np.ndarray:
    """Pearson correlation of thumbnail pairs; two flat thumbnails (blank images) of one family count as identical.

    Args:
        thumbs: (N, 256) uint8 thumbnails, one per image.
        i: First image of each pair.
        j: Second image of each pair.
        family: Per image, what its intensities mean (a DICOM modality, or ``image``).

    Returns:
        The correlation per pair, float32.
    """
    t = thumbs.astype(np.float32)
    t -= t.mean(axis=1, keepdims=True)
    norm = np.linalg.norm(t, axis=1)
    flat = norm < 1e-6
    t /= np.where(flat, 1.0, norm)[:, None]
    out = np.empty(len(i), dtype=np.float32)
    for lo in range(0, len(i), _CORR_BLOCK):
        a, b = i[lo : lo + _CORR_BLOCK], j[lo : lo + _CORR_BLOCK]
        out[lo : lo + len(a)] = np.einsum("ij,ij->i", t[a], t[b])
    both_flat = flat[i] & flat[j] & (family[i] == family[j])
    out[both_flat] = 1.0
    return out


def _exact_clusters(records: Sequence[dict[str, Any]], ok: list[int]) -> np.ndarray:
    """Exact cluster per file: one per pixel digest; every unreadable file is a cluster of its own."""
    n = len(records)
    digest_ids: dict[str, int] = {}
    exact_key = np.arange(n, dtype=np.int64) + n
    for k in ok:
        exact_key[k] = digest_ids.setdefault(records[k]["digest"], len(digest_ids))
    _, exact = np.unique(exact_key, return_inverse=True)
    return exact.ravel()


def _confirmed_pairs(
    records: Sequence[dict[str, Any]], ok: list[int], i: np.ndarray, j: np.ndarray, min_corr: float
) -> tuple[np.ndarray, np.ndarray]:
    """The pHash candidate pairs (indices into ``ok``) that are copies: thumbnails correlate, not one series."""
    # pHash alone joins look-alike radiographs of different patients; the thumbnail check keeps copies only.
    thumbs = np.frombuffer(b"".join(records[k]["thumb"] for k in ok), dtype=np.uint8).reshape(len(ok), 256)
    heads = [records[k].get("dicom") or {} for k in ok]
    # A blank CT slice in HU and a black PNG both have flat thumbnails but are not copies of each other.
    family = np.array(
        [
            h.get("modality", "?") if records[k].get("dicom") is not None else "image"
            for k, h in zip(ok, heads, strict=True)
        ],
        dtype=object,
    )
    keep = thumb_corr(thumbs, i, j, family) >= min_corr
    # Neighbouring slices of one CT/MR series look alike by nature; only exact copies count there.
    series = np.array([h.get("series") or f"#{k}" for k, h in zip(ok, heads, strict=True)], dtype=object)
    keep &= series[i] != series[j]
    return i[keep], j[keep]


def duplicate_clusters(
    records: Sequence[dict[str, Any]], threshold: int, min_corr: float = 0.99, align: float | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Near and exact duplicate clusters of the scanned files.

    Args:
        records: The scan's summaries.
        threshold: Largest pHash Hamming distance of a candidate pair.
        min_corr: Smallest thumbnail correlation of a near duplicate.
        align: Crops and shifts (`medkit.audit.align`): smallest correlation after alignment of an image and one
            of its nearest neighbours (None: `medkit.audit.align.DEFAULT_ALIGN`; 0: no alignment stage).

    Returns:
        ``(near, exact)``: a cluster label per file; unreadable files get clusters of their own. Exact duplicates
        are always in one near cluster.
    """
    from medkit.audit.phash import clusters, near_pairs

    n = len(records)
    ok = [k for k, r in enumerate(records) if r.get("ok")]
    exact = _exact_clusters(records, ok)
    hashes = np.array([records[k]["phash"] for k in ok], dtype=np.uint64)
    i, j, _ = near_pairs(hashes, threshold, max_group=64) if len(ok) > 1 else (np.empty(0, int), np.empty(0, int), None)
    if len(i):
        i, j = _confirmed_pairs(records, ok, i, j, min_corr)
    ok_arr = np.asarray(ok, dtype=np.int64)
    # Exact duplicates belong together even when their hashes are far apart (it cannot happen for one hash
    # function, but grey/RGB variants of one picture are hashed from the same grey plane anyway).
    order = np.argsort(exact, kind="stable")
    same = exact[order][1:] == exact[order][:-1]
    ei, ej = order[:-1][same], order[1:][same]
    near = clusters(n, np.r_[ok_arr[i] if len(i) else [], ei], np.r_[ok_arr[j] if len(j) else [], ej])
    ai, aj = _aligned(records, ok, near, align)
    if len(ai):
        near = clusters(n, np.r_[np.arange(n), ok_arr[ai]], np.r_[near_roots(near), ok_arr[aj]])
    return near, exact


def near_roots(near: np.ndarray) -> np.ndarray:
    """Per file, the first file of its cluster (joining each file to it rebuilds the clusters)."""
    first: dict[int, int] = {}
    return np.array([first.setdefault(int(c), k) for k, c in enumerate(near.tolist())], dtype=np.int64)


def _aligned(
    records: Sequence[dict[str, Any]], ok: list[int], near: np.ndarray, align: float | None
) -> tuple[np.ndarray, np.ndarray]:
    """The second stage's pairs (indices into ``ok``): crops and shifts, not one series."""
    from medkit.audit.align import DEFAULT_ALIGN, aligned_pairs

    align = DEFAULT_ALIGN if align is None else align
    if align <= 0 or len(ok) < 2:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    i, j, _ = aligned_pairs(records, ok, align, joined=near[np.asarray(ok)])
    if not len(i):
        return i, j
    heads = [records[k].get("dicom") or {} for k in ok]
    series = np.array([h.get("series") or f"#{k}" for k, h in zip(ok, heads, strict=True)], dtype=object)
    keep = series[i] != series[j]
    return i[keep], j[keep]


def duplicate_findings(
    files: Sequence[str], records: Sequence[dict[str, Any]], near: np.ndarray, exact: np.ndarray
) -> list[Finding]:
    """One finding per exact-duplicate cluster, and per near cluster that holds more than one distinct picture.

    Args:
        files: Audit names.
        records: The scan's summaries.
        near: Near cluster per file.
        exact: Exact cluster per file.

    Returns:
        The ``exact_duplicate`` findings, then the ``near_duplicate`` ones.
    """
    from medkit.audit.phash import hamming

    findings: list[Finding] = []
    for cid, members in groups(exact).items():
        if len(members) > 1:
            shape = f"{records[members[0]]['height']}x{records[members[0]]['width']}"
            findings.append(
                Finding(
                    "exact_duplicate",
                    tuple(files[m] for m in members),
                    f"{len(members)} files with identical pixels ({shape}), exact cluster {cid}",
                )
            )
    for cid, members in groups(near).items():
        exact_ids = {int(exact[m]) for m in members}
        if len(members) > 1 and len(exact_ids) > 1:
            hs = np.array([records[m]["phash"] for m in members[:200]], dtype=np.uint64)
            worst = int(hamming(hs[:, None], hs[None, :]).max())  # capped: a cluster may hold thousands
            findings.append(
                Finding(
                    "near_duplicate",
                    tuple(files[m] for m in members),
                    f"{len(members)} files, {len(exact_ids)} distinct pictures, pHash distance "
                    f"<= {worst} within the cluster, cluster {cid}",
                )
            )
    return findings
