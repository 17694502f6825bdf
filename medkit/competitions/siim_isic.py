"""SIIM-ISIC Melanoma Classification (2020): one melanoma probability per dermoscopy image, scored by ROC AUC.

A file competition: the 10,982 test images came with the data, so the submission is a CSV (``image_name,
target``) uploaded to Kaggle. Its ``train.csv`` already follows the dataset table convention closely enough for
``medkit train binary --image-col image_name --label-cols target``. This module imports nothing heavy.
"""

from __future__ import annotations

from medkit.competitions._base import Competition
from medkit.registries import COMPETITIONS

__all__ = ["siim_isic"]


@COMPETITIONS.register("siim-isic", task="binary", submission="file", aliases=("siim-isic-melanoma-classification",))
def siim_isic() -> Competition:
    """SIIM-ISIC Melanoma Classification (2020): melanoma probability per lesion image, ROC AUC."""
    return Competition(
        name="siim-isic",
        slug="siim-isic-melanoma-classification",
        title="SIIM-ISIC Melanoma Classification",
        task="binary",
        id_column="image_name",
        target_columns=("target",),
        metric="auc",
        submission="file",
        id_pattern=r"^ISIC_[0-9]{7}$",
        test_dir="jpeg/test",
        test_table="test.csv",
    )
