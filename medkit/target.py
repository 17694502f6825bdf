"""Target kinds: what a label column means and everything that follows from it, decided in one place.

A task's ``target`` is one of four kinds. Each `TargetKind` knows how its labels are stored, how many outputs the
model has and what they are called, how logits become probabilities, what the loss is trained on, and what shape
the metrics receive. The engine asks the kind instead of comparing strings.

| kind | labels | model outputs | probabilities |
|---|---|---|---|
| ``binary`` | one 0/1 column | 1 | sigmoid |
| ``multilabel`` | several 0/1 columns | one per column | sigmoid per column |
| ``multiclass`` | one integer column 0..C-1 | C | softmax |
| ``ordinal`` | one grade column 0..G-1 | G-1 cumulative "grade > k" | sigmoid per threshold |

This module imports neither torch nor numpy at import time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from medkit.errors import DataError, UsageError, did_you_mean

__all__ = ["TargetKind", "TARGETS", "BINARY", "MULTILABEL", "MULTICLASS", "ORDINAL", "target_kind"]


@dataclass(frozen=True)
class TargetKind:
    """One kind of target.

    Attributes:
        name: ``binary``, ``multilabel``, ``multiclass`` or ``ordinal``.
        integer: Labels are one integer column (class index or grade) rather than 0/1 columns.
        softmax: Outputs are one softmax over classes (multiclass) rather than independent sigmoids.
        cumulative: Outputs are the G-1 cumulative "grade > k" logits of an ordinal grade.
    """

    name: str
    integer: bool = False
    softmax: bool = False
    cumulative: bool = False

    def __str__(self) -> str:
        return self.name

    @property
    def multi_hot(self) -> bool:
        """Labels are 0/1 columns (binary, multilabel): prevalence and ``pos_weight`` make sense."""
        return not self.integer

    def for_columns(self, n_columns: int) -> TargetKind:
        """The kind for a table with ``n_columns`` label columns: binary with several columns is multilabel."""
        return MULTILABEL if self is BINARY and n_columns > 1 else self

    def num_outputs(self, n_columns: int, num_classes: int) -> int:
        """Logits the model produces."""
        if self.softmax:
            return num_classes
        if self.cumulative:
            return num_classes - 1
        return n_columns

    def output_names(self, label_cols: Sequence[str], num_classes: int) -> list[str]:
        """Names of the model outputs: the label columns, ``class<c>``, or ``>k`` for the ordinal thresholds."""
        if self.softmax:
            return [f"class{c}" for c in range(num_classes)]
        if self.cumulative:
            return [f">{k}" for k in range(num_classes - 1)]
        return list(label_cols)

    def encode(self, values: Any, where: str) -> Any:
        """Check label values and return the target array: float32 (N, K) 0/1 columns, or int64 (N,) indices.

        Args:
            values: (N,) or (N, K) label values from a table or an archive.
            where: The file the labels came from, named in errors.

        Raises:
            DataError: Missing values, or labels that are not integers >= 0 for integer kinds.
        """
        import numpy as np

        if self.integer:
            v = np.asarray(values)
            if v.ndim == 2:
                if v.shape[1] != 1:
                    raise DataError(
                        f"{where}: a {self.name} task needs one integer label column, got {v.shape[1]}",
                        hint="pass --label-cols COL, or use the multilabel task",
                    )
                v = v[:, 0]
            if np.isnan(v.astype(np.float64)).any():
                raise DataError(f"{where}: label column has missing values", hint="fill or drop those rows")
            if (v < 0).any() or (np.round(v) != v).any():
                raise DataError(f"{where}: {self.name} labels must be integers >= 0", hint="check the label column")
            return v.astype(np.int64)
        v = np.asarray(values, dtype=np.float32)
        if v.ndim == 1:
            v = v[:, None]
        if np.isnan(v).any():
            raise DataError(f"{where}: label columns have missing values", hint="fill or drop those rows")
        return v

    def probabilities(self, logits: Any) -> Any:
        """Probabilities from a logits tensor (float32): softmax over classes, else a sigmoid per output."""
        import torch

        logits = logits.float()
        return torch.softmax(logits, dim=1) if self.softmax else torch.sigmoid(logits)

    def loss_target(self, target: Any, num_classes: int, grades_as_is: bool = False) -> Any:
        """The loader's target tensor as the loss wants it.

        Args:
            target: (B, K) float 0/1 columns, or (B,) integer labels.
            num_classes: Classes or grades.
            grades_as_is: The loss takes ordinal grades themselves (an ordinal loss) instead of the cumulative
                "grade > k" columns.
        """
        if self.cumulative and not grades_as_is:
            return cumulative_targets(target, num_classes)
        return target.long() if self.integer else target.float()

    def metric_inputs(self, y_true: Any, probs: Any) -> tuple[Any, Any]:
        """``(y_true, y_score)`` in the shapes the metrics contract expects.

        Binary outputs become (N,) vectors; the ordinal cumulative probabilities become the expected grade (their
        sum), which grade metrics such as QWK cut at 0.5, 1.5, ...
        """
        if self is BINARY:
            return y_true.reshape(-1), probs.reshape(-1)
        if self.cumulative:
            return y_true, probs.sum(axis=1)
        return y_true, probs

    def check_loss(self, loss: str, flags: dict[str, Any]) -> None:
        """Refuse a loss that cannot train this kind of target.

        Raises:
            UsageError: A non-ordinal, non-multilabel loss for grades, or a non-multiclass loss for classes.
        """
        if self.cumulative and not flags.get("ordinal") and not flags.get("multilabel"):
            raise UsageError(
                f"loss '{loss}' does not fit ordinal grades",
                hint="use --loss ordinal, or bce (on the cumulative 'grade > k' targets)",
            )
        if self.softmax and not flags.get("multiclass"):
            raise UsageError(f"loss '{loss}' is not a multiclass loss", hint="use --loss ce")


def cumulative_targets(grades: Any, num_grades: int) -> Any:
    """Grades 0..G-1 (B,) -> cumulative float targets (B, G-1): column k is 1 when grade > k."""
    import torch

    ks = torch.arange(num_grades - 1, device=grades.device)
    return (grades.long().view(-1, 1) > ks.view(1, -1)).float()


BINARY = TargetKind("binary")
MULTILABEL = TargetKind("multilabel")
MULTICLASS = TargetKind("multiclass", integer=True, softmax=True)
ORDINAL = TargetKind("ordinal", integer=True, cumulative=True)
TARGETS: dict[str, TargetKind] = {k.name: k for k in (BINARY, MULTILABEL, MULTICLASS, ORDINAL)}


def target_kind(kind: str | TargetKind) -> TargetKind:
    """The `TargetKind` named ``kind`` (a kind passes through).

    Raises:
        UsageError: For an unknown name, with a suggestion.
    """
    if isinstance(kind, TargetKind):
        return kind
    try:
        return TARGETS[str(kind)]
    except KeyError:
        raise UsageError(
            f"unknown target kind '{kind}'{did_you_mean(str(kind), TARGETS)}", hint=f"use one of {', '.join(TARGETS)}"
        ) from None
