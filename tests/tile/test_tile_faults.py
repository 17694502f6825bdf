"""`medkit tile` on awkward inputs and outputs: a slide name that is not UTF-8, a label table that cannot be used,
an output that cannot be written, temporary files of a killed run."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
from typer.testing import CliRunner

from medkit.cli.main import app
from medkit.tile import slide_id_of

runner = CliRunner()
ARGS = ["--n", "4", "--size", "32", "--workers", "0"]


def write_slide(path: Path | bytes, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    img = np.full((128, 128, 3), 245, np.uint8)
    img[20:90, 30:100] = rng.integers(0, 180, (70, 70, 3), dtype=np.uint8)
    tifffile.imwrite(os.fsdecode(path), img, tile=(32, 32))


def tile(*args: str | Path) -> object:
    return runner.invoke(app, ["tile", *map(str, args)])


def test_slide_ids_escape_only_bytes_that_are_not_utf8() -> None:
    assert slide_id_of("/x/café.svs") == "café"
    assert slide_id_of(os.fsdecode(b"/x/caf\xe9.ome.tiff")) == "caf\\xe9"


@pytest.mark.skipif(os.name == "nt", reason="file names are bytes on POSIX only")
def test_a_slide_name_that_is_not_utf8_tiles_and_reruns(tmp_path: Path) -> None:
    folder = tmp_path / "slides"
    folder.mkdir()
    write_slide(os.fsencode(folder) + b"/caf\xe9.tiff")
    write_slide(folder / "plain.tiff", seed=1)
    out = tmp_path / "out"
    for status in ("done", "skipped"):  # the first run, then a rerun that finds both slides done
        res = tile(folder, "--out", out, *ARGS, "--json")
        assert res.exit_code == 0, res.output
        assert "internal error" not in res.stderr
        summary = json.loads(res.stdout)
        assert [s["status"] for s in summary["per_slide"]] == [status, status]
    table = pd.read_csv(out / "tiles.csv", encoding="utf-8")  # valid UTF-8, names escaped losslessly
    assert sorted(set(table["slide_id"])) == ["caf\\xe9", "plain"]
    assert all((out / p).is_file() for p in table["image"])


def test_the_label_table_is_checked_before_any_slide_is_tiled(tmp_path: Path) -> None:
    write_slide(tmp_path / "s.tiff")
    labels = tmp_path / "labels.csv"
    labels.write_text("name,isup_grade\ns,1\n")
    res = tile(tmp_path / "s.tiff", "--out", tmp_path / "out", "--labels", labels, *ARGS)
    assert res.exit_code == 2 and "no slide id column" in res.stderr
    assert not (tmp_path / "out").exists()


def test_a_full_disk_blames_the_output_not_the_slide(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import medkit.tile._outputs as outputs

    write_slide(tmp_path / "s.tiff")

    def full(path: Path, arr: np.ndarray) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(outputs, "write_png", full)
    res = tile(tmp_path / "s.tiff", "--out", tmp_path / "out", *ARGS)
    assert res.exit_code == 2, res.output
    assert "cannot write tile output" in res.stderr and "No space left" in res.stderr and "free space" in res.stderr
    assert "check the file" not in res.stderr and "slide(s) failed" not in res.stderr


def test_temporary_files_of_a_killed_run_are_removed(tmp_path: Path) -> None:
    write_slide(tmp_path / "s.tiff")
    out = tmp_path / "out"
    (out / "tiles" / "s").mkdir(parents=True)
    stale = [out / "tiles" / "s" / ".000.png.k2j3_abc.tmp", out / "index" / ".s.json.x9zzzzzz.tmp"]
    stale[1].parent.mkdir()
    for p in stale:
        p.write_bytes(b"half")
    res = tile(tmp_path / "s.tiff", "--out", out, *ARGS)
    assert res.exit_code == 0, res.output
    assert not any(p.exists() for p in stale) and len(list((out / "tiles" / "s").glob("*.png"))) == 4
