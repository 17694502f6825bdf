"""Units: rows merged (union-find over image, group and duplicate cluster keys) that must share a fold.

Keys are coded by their sorted values, so units do not depend on the table's row order. This module imports
numpy (and pandas and scipy inside functions), not torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from medkit.errors import DataError

__all__ = ["Units", "DuplicateMatch", "build_units", "match_duplicates", "key_codes", "distinct_per_key"]


@dataclass
class Units:
    """Rows merged into units that must share a fold.

    Attributes:
        of_row: ``(rows,)`` unit index of every row.
        count: Number of units.
        merged_units: Units that hold more than one group because a duplicate cluster joined them.
        conflicting_clusters: Duplicate clusters whose images belong to more than one group.
    """

    of_row: np.ndarray
    count: int
    merged_units: int = 0
    conflicting_clusters: int = 0


def key_codes(values: Any) -> tuple[np.ndarray, int]:
    """Codes of sorted distinct values (-1 for missing), so codes do not depend on row order."""
    import pandas as pd

    s = pd.Series(values)
    missing = s.isna().to_numpy()
    codes, uniques = pd.factorize(s.astype(str).where(~missing, None), sort=True)
    codes = np.asarray(codes, dtype=np.int64)
    codes[missing] = -1
    return codes, len(uniques)


def distinct_per_key(key: np.ndarray, value: np.ndarray, n_keys: int) -> int:
    """How many keys occur with more than one distinct value (both non-negative integer codes)."""
    if not len(key):
        return 0
    pairs = np.unique(key.astype(np.int64) * (int(value.max()) + 1) + value)
    return int((np.bincount(pairs // (int(value.max()) + 1), minlength=n_keys) > 1).sum())


def build_units(images: Any, groups: Any = None, clusters: Any = None) -> Units:
    """Merge rows that share an image, a group or a duplicate cluster into units (connected components).

    Args:
        images: Per-row image key (the same image twice is one unit).
        groups: Per-row group key (patient, study), or None; missing values mean no group.
        clusters: Per-row duplicate cluster key, or None; missing values mean no cluster.

    Returns:
        The units, numbered in the order of the sorted image keys.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    img, n_img = key_codes(images)
    n_rows = len(img)
    # An image without a key gets a node of its own; only then does row order matter.
    lone = np.flatnonzero(img < 0)
    img[lone] = n_img + np.arange(len(lone))
    n_img += len(lone)
    offset = n_img
    src: list[np.ndarray] = []
    dst: list[np.ndarray] = []
    grp = clu = None
    n_grp = 0
    for key, name in ((groups, "group"), (clusters, "cluster")):
        if key is None:
            continue
        codes, n = key_codes(key)
        has = codes >= 0
        src.append(img[has])
        dst.append(codes[has] + offset)
        if name == "group":
            grp, n_grp = np.where(has, codes, -1), n
        else:
            clu = np.where(has, codes, -1)
        offset += n
    a = np.concatenate(src) if src else np.zeros(0, np.int64)
    b = np.concatenate(dst) if dst else np.zeros(0, np.int64)
    graph = coo_matrix((np.ones(len(a), np.int8), (a, b)), shape=(offset, offset)).tocsr()
    _, comp = connected_components(graph, directed=False)
    # Renumber components by their first image node so unit ids follow the sorted image keys.
    _, unit_of_image = np.unique(comp[:n_img], return_inverse=True)
    of_row = unit_of_image[img]
    count = int(of_row.max()) + 1 if n_rows else 0
    merged = conflicting = 0
    if grp is not None and n_grp:
        has = grp >= 0
        merged = distinct_per_key(of_row[has], grp[has], count)
        if clu is not None:
            both = has & (clu >= 0)
            conflicting = distinct_per_key(clu[both], grp[both], int(clu.max()) + 1)
    return Units(of_row, count, merged, conflicting)


@dataclass
class DuplicateMatch:
    """The duplicates table of ``medkit audit`` joined to the table being split.

    Attributes:
        cluster: Per row of the table, its duplicate cluster (object array, None where none).
        unmatched: Rows of the duplicates table whose image matches no row of the table.
        unplaced: Of those, the ones whose cluster holds two or more images (a duplicate the split cannot see).
        unplaced_examples: Up to five such images.
        notes: One line per join rule other than an exact path that was needed (``image id 7 -> 007.png ...``).
    """

    cluster: np.ndarray
    unmatched: int = 0
    unplaced: int = 0
    unplaced_examples: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def match_duplicates(images: Any, duplicates: Any) -> DuplicateMatch:
    """Per-row duplicate cluster from a duplicates table, images joined by the rules of `medkit.data.table.FileIndex`.

    The table's ids are matched to the duplicates table's images by relative path, then file name, then stem,
    then zero-padded stem (``7`` -> ``007.png``), then stem with another image suffix -- the rules every command
    joins a table to files with.

    Args:
        images: Per-row image key of the table being split.
        duplicates: DataFrame with columns ``image`` and ``cluster`` (``medkit audit`` output).

    Returns:
        The `DuplicateMatch`.

    Raises:
        DataError: When the duplicates table lacks ``image`` or ``cluster``, or an id matches two of its images.
    """
    import pandas as pd

    from medkit.data.table import FileIndex, ambiguity_error, id_text, join_ids

    for col in ("image", "cluster"):
        if col not in duplicates.columns:
            raise DataError(
                f"the duplicates table has no '{col}' column (columns: {', '.join(map(str, duplicates.columns))})",
                hint="pass the duplicates.csv written by `medkit audit --out`, with columns image and cluster",
            )
    dup = duplicates.dropna(subset=["image", "cluster"]).reset_index(drop=True)
    dup_img = [id_text(v) or "" for v in dup["image"].tolist()]
    dup_clu = [id_text(v) for v in dup["cluster"].tolist()]
    join = join_ids(pd.DataFrame({"image": list(images)}), "image", FileIndex(dup_img))
    if join.ambiguous:
        raise ambiguity_error(join, "the duplicates table")
    cluster = np.array([dup_clu[i] if i is not None else None for i in join.index], dtype=object)
    matched = np.zeros(len(dup), dtype=bool)
    matched[[i for i in join.index if i is not None]] = True
    size = pd.Series(dup_clu).map(pd.Series(dup_clu).value_counts()).to_numpy() if len(dup) else np.zeros(0)
    # Images the audit left out of labels_clean.csv on purpose (an exact duplicate's second copy, a blank image)
    # have no row to place: the copy that has one is placed, and nothing of the cluster can reach another fold.
    if "audit_reason" in dup.columns:
        left_out = dup["audit_reason"].fillna("").astype(str).str.strip().to_numpy() != ""
    else:
        left_out = np.zeros(len(dup), dtype=bool)
    lost = np.flatnonzero(~matched & (size > 1) & ~left_out)
    notes = join.notes(dup_img)
    if (n_out := int((~matched & left_out).sum())) > 0:
        notes.append(f"{n_out} image(s) the audit left out of the clean table (column audit_reason) are not asked for")
    return DuplicateMatch(
        cluster=cluster,
        unmatched=int((~matched & ~left_out).sum()),
        unplaced=len(lost),
        unplaced_examples=[dup_img[i] for i in lost[:5]],
        notes=notes,
    )
