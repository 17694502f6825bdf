"""What a split balances: label, class and stratum columns as 0/1 indicators.

This module imports numpy (and pandas inside functions), not torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from medkit.errors import UsageError

__all__ = ["MAX_CLASSES", "LabelMatrix", "expand_separated", "joint_parts", "label_matrix"]

# A label or stratum column with more distinct values than this is refused (or skipped by auto label choice).
MAX_CLASSES = 50


@dataclass
class LabelMatrix:
    """Per-row 0/1 indicators that the split balances.

    Attributes:
        values: ``(rows, columns)`` float array of 0/1 indicators.
        names: One name per column: a label, ``column=value`` for a class or a stratum.
        sources: The table column each indicator comes from.
    """

    values: np.ndarray
    names: list[str]
    sources: list[str]


def expand_separated(series: Any, sep: str = "|") -> Any:
    """Turn a column of separated labels (NIH ``"Effusion|Mass"``) into multi-hot columns named by the labels.

    Every distinct token becomes a column, including tokens such as ``No Finding``; empty cells give all zeros.
    Columns are sorted by name so the result does not depend on row order.
    """
    import pandas as pd

    text = series.fillna("").astype(str)
    dummies = text.str.get_dummies(sep=sep)
    dummies.columns = [str(c).strip() for c in dummies.columns]
    dummies = dummies.T.groupby(level=0).max().T if dummies.columns.duplicated().any() else dummies
    dummies = dummies.loc[:, [c for c in dummies.columns if c]]
    return pd.DataFrame(dummies[sorted(dummies.columns)].to_numpy(dtype=np.int8), columns=sorted(dummies.columns))


def _indicators(df: Any, column: str, as_stratum: bool, strict: bool) -> tuple[np.ndarray, list[str]] | None:
    """0/1 indicator columns for one table column: itself when binary, one per class or stratum value otherwise."""
    import pandas as pd

    s = df[column]
    numeric = pd.api.types.is_numeric_dtype(s) and not pd.api.types.is_bool_dtype(s)
    if pd.api.types.is_bool_dtype(s):
        return s.to_numpy(dtype=np.float64)[:, None], [column]
    present = s.dropna()
    if not as_stratum and numeric and present.isin([0, 1]).all():
        return s.fillna(0).to_numpy(dtype=np.float64)[:, None], [column]
    values = np.unique(present.to_numpy() if numeric else present.astype(str).to_numpy())
    if len(values) > MAX_CLASSES:
        if strict:
            kind = "stratum" if as_stratum else "label"
            raise UsageError(
                f"{kind} column '{column}' has {len(values)} distinct values (more than {MAX_CLASSES})",
                hint="pass a binary, class or grade column, or bin a continuous one before splitting",
            )
        return None
    key = s.to_numpy() if numeric else s.astype(str).where(s.notna(), None).to_numpy()
    cols = np.stack([(key == v) for v in values], axis=1).astype(np.float64)
    names = [f"{column}={v.item() if hasattr(v, 'item') else v}" for v in values]
    return cols, names


def joint_parts(column: str) -> list[str]:
    """The table columns of a stratum: ``"isup_grade*data_provider"`` -> both, a plain name -> itself."""
    return [c.strip() for c in column.split("*")] if "*" in column else [column]


def _with_joint(df: Any, column: str) -> Any:
    """``df`` with a joint stratum column ``a*b`` added (values ``"3|radboud"``; missing when a part is missing)."""
    parts = joint_parts(column)
    if len(parts) == 1:
        return df
    sub = df[parts]
    joint = sub.astype(str).agg("|".join, axis=1).where(sub.notna().all(axis=1), None)
    return df.assign(**{column: joint})


def label_matrix(
    df: Any, labels: Sequence[str] = (), strata: Sequence[str] = (), strict: bool = True
) -> tuple[LabelMatrix, list[str]]:
    """Indicators to balance: binary label columns as they are, class/grade columns and strata one-hot.

    Args:
        df: The table.
        labels: Label columns (0/1 multi-hot, a class index, an ordinal grade).
        strata: Extra columns to balance (data provider, scanner, sex), one-hot whatever their type; ``a*b``
            balances every combination of the values of ``a`` and ``b`` (grade x data provider).
        strict: Raise on a column with too many distinct values; otherwise skip it and name it in the return.

    Returns:
        The indicators and the label columns that were skipped.

    Raises:
        UsageError: (strict) When a column has more than 50 distinct values.
    """
    blocks: list[np.ndarray] = []
    names: list[str] = []
    sources: list[str] = []
    skipped: list[str] = []
    for col, as_stratum in [*((c, False) for c in labels), *((c, True) for c in strata)]:
        got = _indicators(_with_joint(df, col) if as_stratum else df, col, as_stratum, strict)
        if got is None:
            skipped.append(col)
            continue
        blocks.append(got[0])
        names.extend(got[1])
        sources.extend([col] * len(got[1]))
    values = np.concatenate(blocks, axis=1) if blocks else np.zeros((len(df), 0))
    return LabelMatrix(values, names, sources), skipped
