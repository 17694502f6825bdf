"""Competition presets: every preset writes a valid submission from predictions; RSNA ids, wide column order, the
Gleason -> ISUP table, bare slugs, plugins, and the RSNA metric on a written submission against a hand value."""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from _factories import COMPETITION_IMAGES, write_prediction_table

from medkit.competitions import (
    Competition,
    Values,
    generic_competition,
    image_stem,
    resolve_competition,
)
from medkit.competitions.panda import gleason_to_isup
from medkit.competitions.rsna import RSNA_SUBTYPES, from_rsna_long, rsna_image_id
from medkit.errors import DataError, UnknownNameError, UsageError
from medkit.registries import COMPETITIONS, METRICS
from medkit.submit import prepare_submission

PRESETS = [e.name for e in COMPETITIONS.entries() if "alias_of" not in e.flags]


def _predictions(tmp_path: Path, comp: Competition) -> tuple[Path, list[str]]:
    """A prediction table for a preset, as `medkit predict` writes it, and the submission ids of its images."""
    images, ids = zip(*COMPETITION_IMAGES[comp.name], strict=True)
    if comp.values.kind == "integer":
        path = write_prediction_table(tmp_path / "preds.csv", images, [">0", ">1", ">2", ">3", ">4"], grades=[0, 3, 5])
    else:
        path = write_prediction_table(tmp_path / "preds.csv", images, comp.target_columns)
    return path, list(ids)


def test_the_four_presets_are_registered_with_their_slugs() -> None:
    assert set(PRESETS) >= {"rsna", "ranzcr", "panda", "siim-isic"}
    for name, slug, metric, kind in [
        ("rsna", "rsna-intracranial-hemorrhage-detection", "rsna_logloss", "file"),
        ("ranzcr", "ranzcr-clip-catheter-line-classification", "auc", "code"),
        ("panda", "prostate-cancer-grade-assessment", "qwk", "code"),
        ("siim-isic", "siim-isic-melanoma-classification", "auc", "file"),
    ]:
        comp = COMPETITIONS.create(name)
        assert (comp.slug, comp.metric, comp.submission) == (slug, metric, kind)
        assert COMPETITIONS.create(slug) == comp  # the slug is an alias
        assert comp.metric in METRICS  # the named metric exists


@pytest.mark.parametrize("name", PRESETS)
def test_every_preset_writes_a_valid_submission_from_predictions(name: str, tmp_path: Path) -> None:
    comp = COMPETITIONS.create(name)
    preds, ids = _predictions(tmp_path, comp)
    done = prepare_submission(preds, comp, tmp_path / "submission.csv")
    assert done.report.ok, done.report.problems
    written = pd.read_csv(tmp_path / "submission.csv", dtype=str)
    assert tuple(written.columns) == comp.columns
    if comp.long_format:
        assert written[comp.id_column].tolist() == [f"{i}_{t}" for i in ids for t in comp.target_columns]
    else:
        assert written[comp.id_column].tolist() == ids
    # and with the competition's sample submission: same rows, in the sample's order
    sample = pd.read_csv(tmp_path / "submission.csv", dtype=str).iloc[::-1]
    sample.to_csv(tmp_path / "sample.csv", index=False)
    again = prepare_submission(preds, comp, tmp_path / "s2.csv", sample_path=tmp_path / "sample.csv")
    assert again.report.ok and again.report.expected_rows == len(sample)
    assert pd.read_csv(tmp_path / "s2.csv", dtype=str)[comp.id_column].tolist() == sample[comp.id_column].tolist()


def test_panda_grades_are_written_as_integers(tmp_path: Path) -> None:
    comp = COMPETITIONS.create("panda")
    preds, ids = _predictions(tmp_path, comp)
    prepare_submission(preds, comp, tmp_path / "s.csv")
    assert (tmp_path / "s.csv").read_text().splitlines() == ["image_id,isup_grade"] + [
        f"{i},{g}" for i, g in zip(ids, [0, 3, 5], strict=True)
    ]


# ---------------------------------------------------------------------------------------------- RSNA
@pytest.mark.parametrize(
    ("image", "expected"),
    [
        ("stage_2_test/ID_0fbf6a978.dcm", "ID_0fbf6a978"),
        ("ID_0fbf6a978", "ID_0fbf6a978"),
        ("0fbf6a978", "ID_0fbf6a978"),
        ("0fbf6a978.png", "ID_0fbf6a978"),
        (r"C:\rsna\stage_2_test\ID_0fbf6a978.dcm", "ID_0fbf6a978"),
    ],
)
def test_rsna_ids_are_never_prefixed_twice(image: str, expected: str) -> None:
    assert rsna_image_id(image) == expected
    assert rsna_image_id(rsna_image_id(image)) == expected


def test_rsna_long_rows_from_the_three_id_forms(tmp_path: Path) -> None:
    images = ["stage_2_test/ID_0fbf6a978.dcm", "ID_000000e27", "00000aa11"]
    preds = write_prediction_table(tmp_path / "p.csv", images, RSNA_SUBTYPES)
    prepare_submission(preds, COMPETITIONS.create("rsna"), tmp_path / "s.csv")
    ids = pd.read_csv(tmp_path / "s.csv")["ID"]
    assert ids.iloc[:6].tolist() == [f"ID_0fbf6a978_{s}" for s in RSNA_SUBTYPES]
    assert {i.rsplit("_", 1)[0] for i in ids} == {"ID_0fbf6a978", "ID_000000e27", "ID_00000aa11"}
    assert not ids.str.startswith("ID_ID_").any()


def test_rsna_weighted_log_loss_of_a_written_submission_matches_a_hand_value(tmp_path: Path) -> None:
    # image A: 0.9 everywhere, truth epidural + any; image B: 0.2 everywhere, truth nothing
    frame = pd.DataFrame({"image": ["ID_00000000a", "ID_00000000b"]})
    for s in RSNA_SUBTYPES:
        frame[f"{s}_prob"] = [0.9, 0.2]
    frame.to_csv(tmp_path / "p.csv", index=False)
    prepare_submission(tmp_path / "p.csv", COMPETITIONS.create("rsna"), tmp_path / "s.csv")
    wide = from_rsna_long(pd.read_csv(tmp_path / "s.csv")).set_index("image")
    truth = np.array([[1, 0, 0, 0, 0, 1], [0, 0, 0, 0, 0, 0]], dtype=float)
    score = METRICS.create("rsna_logloss")(truth, wide.loc[["ID_00000000a", "ID_00000000b"], list(RSNA_SUBTYPES)])
    # per column k the mean over the 2 images of the binary log loss; 'any' weighs 2, total weight 7
    a_pos, a_neg, b_neg = -math.log(0.9), -math.log(0.1), -math.log(0.8)
    epidural = (a_pos + b_neg) / 2
    others = (a_neg + b_neg) / 2  # intraparenchymal .. subdural
    any_ = (a_pos + b_neg) / 2
    assert score == pytest.approx((epidural + 4 * others + 2 * any_) / 7, rel=1e-12)


def test_rsna_clips_log_loss_probabilities(tmp_path: Path) -> None:
    frame = pd.DataFrame({"image": ["ID_00000000a"], **{f"{s}_prob": [0.0] for s in RSNA_SUBTYPES}})
    frame["any_prob"] = 1.0
    frame.to_csv(tmp_path / "p.csv", index=False)
    done = prepare_submission(tmp_path / "p.csv", COMPETITIONS.create("rsna"), tmp_path / "s.csv")
    labels = pd.read_csv(tmp_path / "s.csv")["Label"].tolist()
    assert labels == [1e-7] * 5 + [1 - 1e-7] and done.report.clipped == 6
    unclipped = prepare_submission(tmp_path / "p.csv", COMPETITIONS.create("rsna"), tmp_path / "u.csv", clip_eps=0)
    assert pd.read_csv(tmp_path / "u.csv")["Label"].tolist() == [0.0] * 5 + [1.0] and unclipped.report.clipped == 0


# ---------------------------------------------------------------------------------------------- wide layouts
def test_wide_columns_keep_the_order_of_the_sample(tmp_path: Path) -> None:
    comp = COMPETITIONS.create("ranzcr")
    preds, ids = _predictions(tmp_path, comp)
    order = ["StudyInstanceUID", *reversed(comp.target_columns)]
    pd.DataFrame({c: ids if c == "StudyInstanceUID" else 0.5 for c in order}).to_csv(tmp_path / "ss.csv", index=False)
    done = prepare_submission(preds, comp, tmp_path / "s.csv", sample_path=tmp_path / "ss.csv")
    written = pd.read_csv(tmp_path / "s.csv", dtype={"StudyInstanceUID": str})
    assert list(written.columns) == order and done.report.ok
    source = pd.read_csv(preds)
    assert written["CVC - Normal"].tolist() == source["CVC - Normal_prob"].tolist()


def test_a_single_probability_feeds_a_single_target_whatever_its_name(tmp_path: Path) -> None:
    comp = COMPETITIONS.create("siim-isic")
    images, ids = zip(*COMPETITION_IMAGES["siim-isic"], strict=True)
    preds = write_prediction_table(tmp_path / "p.csv", images, ["melanoma"])
    done = prepare_submission(preds, comp, tmp_path / "s.csv")
    written = pd.read_csv(tmp_path / "s.csv")
    assert done.report.ok and list(written.columns) == ["image_name", "target"]
    assert written["target"].tolist() == pd.read_csv(preds)["melanoma_prob"].tolist()


def test_predictions_that_cannot_feed_the_targets_are_a_data_error(tmp_path: Path) -> None:
    images = [i for i, _ in COMPETITION_IMAGES["ranzcr"]]
    preds = write_prediction_table(tmp_path / "p.csv", images, ["ETT - Abnormal", "Effusion"])
    with pytest.raises(DataError, match="nothing to write for ranzcr column") as info:
        prepare_submission(preds, COMPETITIONS.create("ranzcr"), tmp_path / "s.csv")
    assert "medkit train --competition ranzcr" in (info.value.hint or "")
    images = [i for i, _ in COMPETITION_IMAGES["panda"]]
    probs_only = write_prediction_table(tmp_path / "q.csv", images, ["isup_grade"])
    with pytest.raises(DataError, match="'grade'"):
        prepare_submission(probs_only, COMPETITIONS.create("panda"), tmp_path / "s.csv")


@pytest.mark.parametrize(
    ("image", "stem"),
    [
        ("test/1.2.826.0.1.3680043.8.498.1.jpg", "1.2.826.0.1.3680043.8.498.1"),
        ("1.2.826.0.1.3680043.8.498.1", "1.2.826.0.1.3680043.8.498.1"),
        ("a/b/ISIC_0052060.JPG", "ISIC_0052060"),
        ("slides/x.ome.tiff", "x.ome"),
        ("vol.nii.gz", "vol"),
    ],
)
def test_image_stem_strips_only_image_suffixes(image: str, stem: str) -> None:
    assert image_stem(image) == stem


# ---------------------------------------------------------------------------------------------- PANDA
@pytest.mark.parametrize(
    ("score", "isup"),
    [
        ("0+0", 0),
        ("negative", 0),
        ("3+3", 1),
        ("3+4", 2),
        ("4+3", 3),
        ("4+4", 4),
        ("3+5", 4),
        ("5+3", 4),
        ("4+5", 5),
        ("5+4", 5),
        ("5+5", 5),
        (" 3 + 4 ", 2),
        ((4, 3), 3),
    ],
)
def test_gleason_to_isup_hand_table(score: str | tuple[int, int], isup: int) -> None:
    assert gleason_to_isup(score) == isup


@pytest.mark.parametrize("score", ["3+6", "2+3", "3", "benign", "a+b", (0, 3)])
def test_gleason_scores_panda_never_uses_are_errors(score: str | tuple[int, int]) -> None:
    with pytest.raises(DataError, match="not a Gleason score"):
        gleason_to_isup(score)


# ---------------------------------------------------------------------------------------------- slugs and plugins
def test_bare_slug_takes_its_layout_from_the_sample(tmp_path: Path) -> None:
    comp = resolve_competition("digit-recognizer")
    assert comp.slug == "digit-recognizer" and comp.target_columns == () and comp.values.kind == "number"
    pd.DataFrame({"ImageId": ["1", "2"], "Label": [0, 0]}).to_csv(tmp_path / "sample.csv", index=False)
    preds = write_prediction_table(tmp_path / "p.csv", ["test/1.png", "test/2.png"], ["Label"])
    done = prepare_submission(preds, comp, tmp_path / "s.csv", sample_path=tmp_path / "sample.csv")
    assert done.report.ok and done.competition.columns == ("ImageId", "Label")
    with pytest.raises(UsageError, match="pass the competition's sample submission with --sample"):
        prepare_submission(preds, comp, tmp_path / "s.csv")


def test_near_misses_and_non_slugs_are_errors() -> None:
    with pytest.raises(UnknownNameError, match="did you mean 'ranzcr'"):
        resolve_competition("ranzrc")
    with pytest.raises(UsageError, match="neither a competition preset nor a Kaggle slug"):
        generic_competition("Not A Slug!")
    with pytest.raises(UsageError, match="kind"):
        Values("percent")


def test_a_sample_that_does_not_fit_the_preset_is_rejected(tmp_path: Path) -> None:
    pd.DataFrame({"image_name": ["ISIC_0052060"], "benign": [0.5]}).to_csv(tmp_path / "bad.csv", index=False)
    preds = write_prediction_table(tmp_path / "p.csv", ["ISIC_0052060"], ["target"])
    with pytest.raises(DataError, match="bad.csv: sample submission does not fit siim-isic"):
        prepare_submission(
            preds, COMPETITIONS.create("siim-isic"), tmp_path / "s.csv", sample_path=tmp_path / "bad.csv"
        )


PLUGIN = """
from medkit.competitions import Competition, Values

def _writer(competition, predictions, sample):
    out = predictions[["image"]].rename(columns={"image": "case"})
    out["score"] = (predictions["positive_prob"] * 100).round().astype(int)
    return out

def private_comp():
    '''A private hospital challenge (plugin).'''
    return Competition(
        name="hospital-x", slug="hospital-x-challenge", title="Hospital X", task="binary", id_column="case",
        target_columns=("score",), metric="auc", values=Values("integer", 0, 100), writer=_writer,
    )
"""


def test_a_private_competition_plugin_with_its_own_writer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "medkit_private_comp.py").write_text(textwrap.dedent(PLUGIN))
    info = tmp_path / "medkit_private_comp-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: medkit-private-comp\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[medkit.competitions]\nhospital-x = medkit_private_comp:private_comp\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv("MEDKIT_DISABLE_PLUGINS")
    monkeypatch.setattr(COMPETITIONS, "_plugins", None)
    monkeypatch.setattr(COMPETITIONS, "_entries", dict(COMPETITIONS._entries))
    comp = resolve_competition("hospital-x")
    assert comp.slug == "hospital-x-challenge" and COMPETITIONS.get("hospital-x").source == "medkit-private-comp"
    preds = write_prediction_table(tmp_path / "p.csv", ["c1", "c2"], ["positive"])
    done = prepare_submission(preds, comp, tmp_path / "s.csv", clip_eps=0)
    expected = (pd.read_csv(preds)["positive_prob"] * 100).round().astype(int).tolist()
    assert done.report.ok and pd.read_csv(tmp_path / "s.csv")["score"].tolist() == expected
