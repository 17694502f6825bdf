"""Task presets: every preset builds, fields override one by one, unknown fields and names fail with a hint."""

from __future__ import annotations

import pytest

from medkit.errors import UnknownNameError, UsageError
from medkit.registries import METRICS, MODELS, TASKS
from medkit.tasks import Task


@pytest.mark.parametrize("name", ["ct", "cxr", "wsi", "scan", "binary", "multiclass", "multilabel"])
def test_every_preset_builds_and_names_registered_components(name: str) -> None:
    task = TASKS.create(name)
    assert isinstance(task, Task)
    assert task.name == name
    # The preset's model and metric must exist in their registries, or `medkit train NAME` fails out of the box.
    assert task.model in MODELS
    assert task.metric in METRICS
    assert TASKS.get(name).description == task.description


def test_ct_preset_is_three_windows_six_labels_rsna_metric() -> None:
    ct = TASKS.create("ct")
    assert ct.windows == ("brain", "subdural", "soft_tissue")
    assert ct.in_chans == 3
    assert ct.labels[-1] == "any" and len(ct.labels) == 6
    assert ct.metric == "rsna_logloss" and ct.loss == "bce"
    assert ct.group_aware


def test_cxr_groups_match_ranzcr_table_groups() -> None:
    from medkit.competitions.ranzcr import RANZCR_GROUPS

    assert TASKS.create("cxr").label_groups == RANZCR_GROUPS


def test_wsi_is_ordinal_with_six_grades_and_qwk() -> None:
    wsi = TASKS.create("wsi")
    assert (wsi.target, wsi.num_classes, wsi.metric, wsi.loss) == ("ordinal", 6, "qwk", "ordinal")


def test_overrides_apply_and_none_keeps_the_preset() -> None:
    base = TASKS.create("cxr")
    t = TASKS.create("cxr", model="resnet18", lr=0.1, epochs=None, windows="brain,bone", mean=[0.5], std=[0.25])
    assert t.model == "resnet18" and t.lr == 0.1
    assert t.epochs == base.epochs
    assert t.windows == ("brain", "bone")
    assert t.mean == (0.5,) and t.std == (0.25,)
    assert base.model == "efficientnet_b2"  # the preset itself is not mutated


def test_unknown_field_and_bad_values_raise_usage_errors() -> None:
    with pytest.raises(UsageError, match="no field 'modle'"):
        TASKS.create("binary", modle="resnet18")
    with pytest.raises(UsageError, match="heads"):
        TASKS.create("binary", heads="many")
    with pytest.raises(UsageError, match="target"):
        TASKS.create("binary", target="regression")


def test_unknown_task_suggests_the_closest() -> None:
    with pytest.raises(UnknownNameError, match="did you mean 'cxr'"):
        TASKS.create("cxrr")


def test_round_trip_through_dict() -> None:
    t = TASKS.create("cxr", lr=0.01)
    back = Task.from_dict(t.to_dict())
    assert back == t
