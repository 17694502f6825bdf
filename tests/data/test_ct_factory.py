"""The generated CT set of the series tests: look-alikes on one slice, labelled negative, lesions unchanged."""

from __future__ import annotations

from pathlib import Path

import cv2
import pandas as pd
from _ct_factory import make_ct_dataset


def test_mimics_are_isolated_negative_slices_and_leave_the_lesions_alone(tmp_path: Path) -> None:
    plain = pd.read_csv(make_ct_dataset(tmp_path / "plain", n_series=6, n_slices=10, size=32, seed=3))
    mimic = pd.read_csv(make_ct_dataset(tmp_path / "mimic", n_series=6, n_slices=10, size=32, seed=3, mimics=3.0))
    pd.testing.assert_frame_equal(plain, mimic)  # same names, same labels
    changed = []
    for row in mimic.itertuples():
        a = cv2.imread(str(tmp_path / "plain" / row.image), cv2.IMREAD_UNCHANGED).astype(int)
        b = cv2.imread(str(tmp_path / "mimic" / row.image), cv2.IMREAD_UNCHANGED).astype(int)
        if (a != b).any():
            assert (b >= a).all()  # a bright blob added, nothing darkened
            changed.append(row.Index)
    assert len(changed) >= 6
    for i in changed:
        row = mimic.loc[i]
        series = mimic[mimic.series_id == row.series_id].set_index("slice_index")["any"]
        near = [series.get(z, 0) for z in (row.slice_index - 1, row.slice_index, row.slice_index + 1)]
        assert near == [0, 0, 0]  # a look-alike never touches a finding
