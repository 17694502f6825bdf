"""Slides that are cut short (a truncated SVS must fail, not be tiled at the wrong level) and 16-bit slides (scored on
their real range: the padding is background, not the most tissue-rich tile)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
from typer.testing import CliRunner

from medkit.cli.main import app
from medkit.errors import DataError
from medkit.io.slide import open_slide

runner = CliRunner()


def write_svs(path: Path, img: np.ndarray, compression: str | None = "jpeg") -> Path:
    """An Aperio-like pyramid written by tifffile: level 0, then 4x and 16x reductions as further pages."""
    with tifffile.TiffWriter(path) as tw:
        desc = "Aperio Image Library v12\n1024x1024 |AppMag = 20|MPP = 0.5"
        kw = {"photometric": "rgb" if img.ndim == 3 else "minisblack", "compression": compression}
        tw.write(img, tile=(128, 128), description=desc, **kw)
        tw.write(np.ascontiguousarray(img[::4, ::4]), tile=(128, 128), subfiletype=1, **kw)
        tw.write(np.ascontiguousarray(img[::16, ::16]), tile=(32, 32), subfiletype=1, **kw)
    return path


def _rgb(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = np.full((512, 512, 3), 240, np.uint8)
    img[128:384, 128:384] = rng.integers(60, 200, (256, 256, 3), dtype=np.uint8)
    return img


@pytest.mark.parametrize("keep", [0.95, 0.999])
def test_a_truncated_svs_is_an_error_naming_what_is_missing(tmp_path: Path, keep: float, capfd) -> None:
    whole = write_svs(tmp_path / "whole.svs", _rgb())
    data = whole.read_bytes()
    cut = tmp_path / "cut.svs"
    cut.write_bytes(data[: int(len(data) * keep)])
    with open_slide(whole) as s:
        assert [lv.width for lv in s.levels] == [512, 128, 32]
    with pytest.raises(DataError, match="slide file is incomplete") as err:
        open_slide(cut)
    assert "page chain breaks" in err.value.message or "end past the end of the file" in err.value.message
    assert "tifffile" not in capfd.readouterr().err  # tifffile's own log line is not shown


def test_tile_fails_a_truncated_slide_and_tiles_the_complete_one(tmp_path: Path) -> None:
    slides = tmp_path / "slides"
    slides.mkdir()
    data = write_svs(slides / "good.svs", _rgb()).read_bytes()
    (slides / "cut.svs").write_bytes(data[: int(len(data) * 0.97)])
    res = runner.invoke(app, ["tile", str(slides), "--out", str(tmp_path / "out"), "--size", "32", "--n", "4"])
    assert res.exit_code == 1, res.output
    assert "cut.svs: the slide file is incomplete" in res.stderr
    assert not list((tmp_path / "out").glob("**/cut*.png"))


def test_a_16bit_slide_ranks_tissue_above_the_padding(tmp_path: Path) -> None:
    from medkit.tile._grid import make_grid
    from medkit.tile._score import score_slide_level
    from medkit.tile._select import select_tiles

    # A 12-bit scan in a 16-bit TIFF: background 4000 (white), tissue about 1500; 200x200 does not fill 64 px tiles,
    # so the corner tiles are mostly padding.
    rng = np.random.default_rng(2)
    img = np.full((200, 200), 4000, np.uint16)
    img[70:130, 70:130] = rng.integers(1200, 1800, (60, 60)).astype(np.uint16)
    path = tmp_path / "s16.tiff"
    tifffile.imwrite(path, img, tile=(64, 64), photometric="minisblack")
    with open_slide(path) as slide:
        for max_bytes in (2 << 30, 100):  # whole level, and band by band
            grid, score, tissue, _, _ = score_slide_level(slide, 0, 64, "white", max_level_bytes=max_bytes)
            best = select_tiles(score, tissue, 1)[0]
            r, c = divmod(int(best), grid.cols)
            y, x = grid.top + r * 64, grid.left + c * 64
            assert 70 - 64 < y < 130 and 70 - 64 < x < 130, (y, x)  # the tile with the tissue comes first
            assert tissue[best] > 0
    assert make_grid(200, 200, 64).top < 0  # there is padding to rank
