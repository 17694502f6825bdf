"""RSNA Intracranial Hemorrhage Detection (2019): the six subtypes, the long label format and the preset.

The competition's ``stage_2_train.csv`` is long: one row per (image, subtype) with ``ID = ID_<image>_<subtype>``
and ``Label`` 0/1. `from_rsna_long` pivots it to one row per image (the dataset table convention) and
`looks_like_rsna_long` recognises it. This module imports nothing heavy: the converters take a pandas
DataFrame but do not import pandas.
"""

from __future__ import annotations

import re
from typing import Any

from medkit.competitions._base import Competition, image_stem
from medkit.errors import DataError
from medkit.registries import COMPETITIONS

__all__ = ["RSNA_SUBTYPES", "RSNA_CLIP_EPS", "from_rsna_long", "looks_like_rsna_long", "rsna_image_id", "rsna"]

RSNA_SUBTYPES: tuple[str, ...] = (
    "epidural",
    "intraparenchymal",
    "intraventricular",
    "subarachnoid",
    "subdural",
    "any",
)
_RSNA_ID = re.compile(rf"^ID_[0-9a-fA-F]+_({'|'.join(RSNA_SUBTYPES)})$")
_BARE_HEX = re.compile(r"^[0-9a-fA-F]+$")
#: Submitted probabilities are clipped to [eps, 1 - eps]: the same eps as the `rsna_logloss` metric, so the file
#: scores as medkit scored it and never holds the exact 0 or 1 that costs without bound when wrong.
RSNA_CLIP_EPS = 1e-7


def rsna_image_id(image: str) -> str:
    """The RSNA image id (the DICOM stem, ``ID_`` + 9 hex digits) of an image named by a path, a stem or bare hex.

    ``stage_2_test/ID_0fbf6a978.dcm``, ``ID_0fbf6a978`` and ``0fbf6a978`` all give ``ID_0fbf6a978``: the prefix
    is added only to bare hex, never twice.
    """
    stem = image_stem(image)
    return f"ID_{stem}" if _BARE_HEX.match(stem) else stem


def looks_like_rsna_long(df: Any) -> bool:
    """Whether a table is the RSNA hemorrhage long format (``ID_<image>_<subtype>``, ``Label``).

    Args:
        df: A pandas DataFrame.

    Returns:
        True when it has ``ID`` and ``Label`` columns and its first 20 ids end in a known subtype.
    """
    if not {"ID", "Label"} <= set(map(str, df.columns)) or not len(df):
        return False
    head = df["ID"].astype(str).head(20)
    return bool(head.map(lambda s: bool(_RSNA_ID.match(s))).all())


def from_rsna_long(df: Any) -> Any:
    """RSNA intracranial hemorrhage ``stage_2_train.csv`` (``ID_<image>_<subtype>``, ``Label``) to one row per image.

    Args:
        df: The competition's long table (pandas DataFrame).

    Returns:
        A table with ``image`` (``ID_<image>``) and the six subtype columns in the competition's order.

    Raises:
        DataError: When the columns are not ``ID`` and ``Label`` or an ID has no known subtype suffix.
    """
    if not {"ID", "Label"} <= set(df.columns):
        raise DataError("the RSNA long table needs columns 'ID' and 'Label'", hint="pass stage_2_train.csv as is")
    ids = df["ID"].astype(str)
    parts = ids.str.rsplit("_", n=1)
    image = parts.str[0]
    subtype = parts.str[1]
    bad = ~subtype.isin(RSNA_SUBTYPES)
    if bad.any():
        raise DataError(f"unknown RSNA subtype in ID '{ids[bad].iloc[0]}'", hint=f"expected {', '.join(RSNA_SUBTYPES)}")
    wide = (
        df.assign(image=image, subtype=subtype)
        .drop_duplicates(["image", "subtype"])
        .pivot(index="image", columns="subtype", values="Label")
        .reindex(columns=list(RSNA_SUBTYPES))
        .reset_index()
    )
    wide.columns.name = None
    return wide


@COMPETITIONS.register("rsna", task="ct", submission="file", aliases=("rsna-intracranial-hemorrhage-detection",))
def rsna() -> Competition:
    """RSNA Intracranial Hemorrhage Detection (2019): 5 subtypes + any, weighted multi-label log loss."""
    return Competition(
        name="rsna",
        slug="rsna-intracranial-hemorrhage-detection",
        title="RSNA Intracranial Hemorrhage Detection",
        task="ct",
        id_column="ID",
        target_columns=RSNA_SUBTYPES,
        metric="rsna_logloss",
        submission="file",
        long_format=True,
        value_column="Label",
        clip_eps=RSNA_CLIP_EPS,
        id_pattern=rf"^ID_[0-9a-fA-F]{{9}}_({'|'.join(RSNA_SUBTYPES)})$",
        id_rule=rsna_image_id,
        sample_file="stage_2_sample_submission.csv",
        test_dir="stage_2_test",
    )
