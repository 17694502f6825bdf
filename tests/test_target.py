"""Target kinds: how labels are stored, named, activated, trained and scored, checked by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medkit.errors import DataError, UsageError
from medkit.target import BINARY, MULTICLASS, MULTILABEL, ORDINAL, TARGETS, cumulative_targets, target_kind


def test_names_and_lookup_with_a_suggestion() -> None:
    assert list(TARGETS) == ["binary", "multilabel", "multiclass", "ordinal"]
    assert target_kind("ordinal") is ORDINAL and target_kind(MULTICLASS) is MULTICLASS
    with pytest.raises(UsageError, match="did you mean 'multiclass'"):
        target_kind("multiclas")


def test_outputs_and_their_names() -> None:
    assert BINARY.for_columns(3) is MULTILABEL and BINARY.for_columns(1) is BINARY
    assert MULTICLASS.for_columns(3) is MULTICLASS
    assert MULTILABEL.output_names(["a", "b"], 0) == ["a", "b"] and MULTILABEL.num_outputs(2, 0) == 2
    assert MULTICLASS.output_names(["y"], 3) == ["class0", "class1", "class2"] and MULTICLASS.num_outputs(1, 3) == 3
    assert ORDINAL.output_names(["g"], 4) == [">0", ">1", ">2"] and ORDINAL.num_outputs(1, 4) == 3
    assert BINARY.multi_hot and not ORDINAL.multi_hot


def test_encode_checks_the_labels() -> None:
    y = BINARY.encode(np.array([0, 1, 1]), "t.csv")
    assert y.dtype == np.float32 and y.shape == (3, 1)
    assert MULTICLASS.encode(np.array([[2], [0]]), "t.csv").tolist() == [2, 0]
    with pytest.raises(DataError, match="t.csv: a multiclass task needs one integer label column"):
        MULTICLASS.encode(np.zeros((2, 2)), "t.csv")
    with pytest.raises(DataError, match="integers >= 0"):
        ORDINAL.encode(np.array([0.5, 1.0]), "t.csv")
    with pytest.raises(DataError, match="missing values"):
        MULTILABEL.encode(np.array([[0.0, np.nan]]), "t.csv")


def test_probabilities_loss_targets_and_metric_inputs() -> None:
    logits = torch.tensor([[0.0, np.log(3.0)]])
    assert torch.allclose(MULTICLASS.probabilities(logits), torch.tensor([[0.25, 0.75]]))
    assert torch.allclose(MULTILABEL.probabilities(logits), torch.tensor([[0.5, 0.75]]))
    grades = torch.tensor([0, 2, 5])
    assert ORDINAL.loss_target(grades, 6).tolist() == cumulative_targets(grades, 6).tolist()
    assert cumulative_targets(grades, 6).tolist() == [[0, 0, 0, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 1, 1]]
    assert ORDINAL.loss_target(grades, 6, grades_as_is=True).dtype == torch.long
    assert MULTICLASS.loss_target(torch.tensor([1.0]), 3).dtype == torch.long
    y, p = ORDINAL.metric_inputs(np.array([2]), np.array([[0.9, 0.8, 0.1]]))
    assert p.tolist() == pytest.approx([1.8])  # the expected grade
    y, p = BINARY.metric_inputs(np.array([[1.0], [0.0]]), np.array([[0.7], [0.2]]))
    assert y.shape == (2,) and p.shape == (2,)


def test_loss_compatibility() -> None:
    ORDINAL.check_loss("ordinal", {"ordinal": True})
    ORDINAL.check_loss("bce", {"multilabel": True})
    with pytest.raises(UsageError, match="does not fit ordinal grades"):
        ORDINAL.check_loss("ce", {"multiclass": True})
    with pytest.raises(UsageError, match="not a multiclass loss"):
        MULTICLASS.check_loss("bce", {"multilabel": True})
