"""Foundation helpers: console progress, atomic writes, device policy, seeding, the dataset table convention."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from medkit import console as con
from medkit._io import atomic_write, write_json
from medkit.data import table as tb
from medkit.errors import DataError, DeviceError


def test_progress_plain_lines_when_not_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    from rich.console import Console

    buf = io.StringIO()
    monkeypatch.setattr(con, "console", Console(file=buf, force_terminal=False, width=200))
    con.set_verbosity(quiet=False)
    with con.Progress(total=4, description="audit", unit="img", interval=0.0) as bar:
        for _ in range(4):
            bar.update(1, loss=0.5)
    lines = buf.getvalue().strip().splitlines()
    # one plain line per update (interval 0), the last one marked done; no control characters
    assert len(lines) == 4
    assert lines[0].startswith("audit: 1/4 (25%) loss=0.5 img/s=")
    assert lines[-1].startswith("audit: 4/4 (100%)") and lines[-1].endswith("done")
    assert "\x1b" not in buf.getvalue() and "\r" not in buf.getvalue()


def test_progress_is_silent_when_quiet(monkeypatch: pytest.MonkeyPatch) -> None:
    from rich.console import Console

    buf = io.StringIO()
    monkeypatch.setattr(con, "console", Console(file=buf, force_terminal=False))
    con.set_verbosity(quiet=True)
    try:
        assert list(con.progress(range(3), description="x")) == [0, 1, 2]
        con.info("hidden")
        con.warn("shown")
    finally:
        con.set_verbosity(quiet=False)
    assert "hidden" not in buf.getvalue()
    assert "shown" in buf.getvalue()
    assert "x:" not in buf.getvalue()


def test_atomic_write_leaves_old_file_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "out.json"
    write_json(target, {"a": np.float32(1.5), "b": np.arange(2)})
    assert target.read_text().replace(" ", "").replace("\n", "") == '{"a":1.5,"b":[0,1]}'
    with pytest.raises(RuntimeError), atomic_write(target) as fh:
        fh.write("partial")
        raise RuntimeError("crash mid-write")
    assert '"a": 1.5' in target.read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]  # no temp file left behind


def test_resolve_device_cpu_and_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from medkit.device import amp_dtype, resolve_device

    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(DeviceError, match="invalid device 'gpu0'"):
        resolve_device("gpu0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolve_device("cuda:0") == torch.device("cuda", 0)
    with pytest.raises(DeviceError) as info:
        resolve_device("cuda:1")
    assert "only 1 CUDA device(s) are visible (cuda:0)" in info.value.message
    assert amp_dtype(torch.device("cpu")) is None
    assert amp_dtype(torch.device("cpu"), "bf16") is torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    assert amp_dtype(torch.device("cuda", 0)) is torch.float16  # older GPUs: fp16 + GradScaler
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert amp_dtype(torch.device("cuda", 0)) is torch.bfloat16
    assert amp_dtype(torch.device("cuda", 0), "off") is None


def test_no_cuda_error_is_actionable(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from medkit.device import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(DeviceError) as info:
        resolve_device("cuda")
    assert "no CUDA GPU is visible" in info.value.message
    assert "--device cpu" in (info.value.hint or "")


def test_seed_everything_repeats_python_numpy_torch() -> None:
    import random

    import torch

    from medkit.device import seed_everything

    def draw() -> tuple:
        return random.random(), float(np.random.rand()), float(torch.rand(1))

    seed_everything(7)
    first = draw()
    seed_everything(7)
    assert draw() == first
    seed_everything(8)
    assert draw() != first


def test_detect_spec_and_resolve_paths(tmp_path: Path) -> None:
    (tmp_path / "imgs" / "sub").mkdir(parents=True)
    for name in ("a.png", "sub/b.dcm"):
        (tmp_path / "imgs" / name).write_bytes(b"x")
    df = pd.DataFrame(
        {
            "Image Index": ["a.png", "b"],
            "Patient ID": [1, 2],
            "Patient Age": [50, 60],
            "Effusion": [0, 1],
            "fold": [0, 1],
        }
    )
    spec = tb.detect_spec(df)
    assert spec.image == "Image Index" and spec.group == "Patient ID" and spec.fold == "fold"
    assert spec.labels == ("Effusion",)  # age is a covariate, not a label
    paths = tb.resolve_paths(df, tmp_path / "imgs", spec.image)
    assert paths == [tmp_path / "imgs" / "a.png", tmp_path / "imgs" / "sub" / "b.dcm"]
    bad = pd.DataFrame({"image": ["a.png", "missing1", "missing2"]})
    with pytest.raises(DataError, match=r"2 of 3 rows .* match no file .*missing1, missing2"):
        tb.resolve_paths(bad, tmp_path / "imgs", "image")
    assert tb.resolve_paths(bad, tmp_path / "imgs", "image", strict=False)[1:] == [None, None]
    with pytest.raises(DataError, match="label column 'nope' is not in the table"):
        tb.detect_spec(df, labels="Effusion,nope")


def test_rsna_long_to_wide() -> None:
    long = pd.DataFrame(
        {
            "ID": [f"ID_abc_{s}" for s in tb.RSNA_SUBTYPES] + [f"ID_def_{s}" for s in tb.RSNA_SUBTYPES],
            "Label": [0, 1, 0, 0, 0, 1] + [0, 0, 0, 0, 0, 0],
        }
    )
    wide = tb.from_rsna_long(long.sample(frac=1.0, random_state=0))
    assert list(wide.columns) == ["image", *tb.RSNA_SUBTYPES]
    row = wide.set_index("image").loc["ID_abc"]
    assert row["intraparenchymal"] == 1 and row["any"] == 1 and row["epidural"] == 0
    assert wide.set_index("image").loc["ID_def"].sum() == 0
    with pytest.raises(DataError, match="unknown RSNA subtype"):
        tb.from_rsna_long(pd.DataFrame({"ID": ["ID_x_bogus"], "Label": [1]}))


def test_ranzcr_and_panda_converters() -> None:
    ranzcr = pd.DataFrame({"StudyInstanceUID": ["1.2"], "PatientID": ["p"], **{c: [0] for c in tb.RANZCR_LABELS}})
    conv = tb.from_ranzcr(ranzcr)
    spec = tb.detect_spec(conv)
    assert spec.image == "image" and spec.group == "patient_id" and len(spec.labels) == 11
    assert set(spec.label_groups) == {"ETT", "NGT", "CVC", "SwanGanz"}
    panda = tb.from_panda(
        pd.DataFrame({"image_id": ["s1"], "data_provider": ["karolinska"], "isup_grade": [3], "gleason_score": ["3+4"]})
    )
    assert tb.detect_spec(panda).labels == ("isup_grade",)


def test_load_and_save_table(tmp_path: Path) -> None:
    df = pd.DataFrame({"image": ["a", "b"], "y": [0, 1]})
    out = tb.save_table(df, tmp_path / "t.csv")
    assert tb.load_table(out).equals(df)
    with pytest.raises(DataError, match="table not found"):
        tb.load_table(tmp_path / "nope.csv")
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(DataError, match="empty.csv"):
        tb.load_table(empty)


def test_atomic_write_gives_normal_permissions(tmp_path: Path) -> None:
    umask = os.umask(0o022)
    try:
        path = write_json(tmp_path / "perm.json", {})
    finally:
        os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o644


def test_disabled_progress_prints_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    from rich.console import Console

    buf = io.StringIO()
    monkeypatch.setattr(con, "console", Console(file=buf, force_terminal=False))
    con.set_verbosity(quiet=False)
    with con.Progress(total=2, description="rank1", interval=0.0, enabled=False) as bar:
        bar.update(2)
    assert bar.completed == 2
    assert buf.getvalue() == ""


def test_competition_knowledge_lives_in_competitions() -> None:
    import subprocess
    import sys

    from medkit.competitions import panda, ranzcr, rsna
    from medkit.registries import COMPETITIONS

    # medkit.data.table re-exports the converters and constants; there is one definition of each.
    assert tb.from_rsna_long is rsna.from_rsna_long and tb.RSNA_SUBTYPES is rsna.RSNA_SUBTYPES
    assert tb.from_ranzcr is ranzcr.from_ranzcr and tb.RANZCR_GROUPS is ranzcr.RANZCR_GROUPS
    assert tb.from_panda is panda.from_panda
    assert COMPETITIONS.create("rsna-intracranial-hemorrhage-detection").target_columns == rsna.RSNA_SUBTYPES
    assert COMPETITIONS.create("ranzcr").label_groups == ranzcr.RANZCR_GROUPS
    assert COMPETITIONS.create("prostate-cancer-grade-assessment").metric == "qwk"
    code = "import sys, medkit.competitions; print([m for m in ('pandas', 'numpy', 'torch') if m in sys.modules])"
    heavy = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert heavy == "[]"


def test_missing_column_suggests_the_closest() -> None:
    df = pd.DataFrame({"image": ["a"], "Effusion": [1], "patient_id": ["p"]})
    with pytest.raises(DataError, match=r"label column 'effusion' is not in the table \(did you mean 'Effusion'\?\)"):
        tb.require_columns(df.columns, ["effusion"], "label")
    with pytest.raises(DataError, match=r"t.csv: group column 'patient' .*\(did you mean 'patient_id'\?\)") as info:
        tb.require_columns(df.columns, ["image", "patient"], "group", "t.csv")
    assert "columns are: image, Effusion, patient_id" in (info.value.hint or "")
    tb.require_columns(df.columns, ["image", "Effusion"], "label")
