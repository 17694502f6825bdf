"""medkit tile: slide readers, tissue scoring, tile selection, masks, resume and the CLI, on slides written here."""

from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import tifffile
from typer.testing import CliRunner

from medkit.cli.main import app
from medkit.errors import DataError, UsageError
from medkit.io.slide import TiffSlide, choose_level, open_slide
from medkit.tile import (
    TileOptions,
    find_slides,
    make_grid,
    make_mosaic,
    score_slide_level,
    score_tiles,
    select_tiles,
    tile_slide,
    tile_slides,
    tile_sums,
)

runner = CliRunner()
S = 32  # tile size used throughout: small slides, fast tests


def write_pyramid(path: Path, level1: np.ndarray, tile: int = 32, mpp0: float | None = None, **kw: object) -> Path:
    """A 3-level pyramidal TIFF whose level 1 is exactly ``level1`` (level 0 = 2x pixel repeat, level 2 = 2x stride)."""
    level0 = np.repeat(np.repeat(level1, 2, axis=0), 2, axis=1)
    level2 = np.ascontiguousarray(level1[::2, ::2])
    extra = {}
    if mpp0 is not None:
        extra = {"resolution": (1e4 / mpp0, 1e4 / mpp0), "resolutionunit": "CENTIMETER"}
    with tifffile.TiffWriter(path) as tw:
        tw.write(level0, tile=(tile, tile), subifds=2, **extra, **kw)
        tw.write(level1, tile=(tile, tile), subfiletype=1, **kw)
        tw.write(level2, tile=(tile, tile), subfiletype=1, **kw)
    return path


def planted(h: int = 150, w: int = 130, seed: int = 0) -> tuple[np.ndarray, dict[tuple[int, int], int]]:
    """White-ish slide (values 235..255) with dark blocks planted on grid cells of darkness 40, 60, 80, ..."""
    rng = np.random.default_rng(seed)
    img = rng.integers(235, 256, size=(h, w, 3), dtype=np.uint8)
    grid = make_grid(h, w, S)
    cells = [(1, 1), (2, 3), (0, 2), (3, 0), (4, 2)]  # (row, col) of the grid, the last ones are edge cells
    plants: dict[tuple[int, int], int] = {}
    for k, (r, c) in enumerate(cells):
        y, x = grid.top + r * S, grid.left + c * S
        y0, x0 = max(y, 0), max(x, 0)
        value = 40 + 20 * k
        img[y0 : y + S, x0 : x + S] = value
        plants[(r, c)] = value
    return img, plants


def classic_get_tiles(img: np.ndarray, sz: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The PANDA kernel's get_tiles in plain numpy (stable argsort so ties go to the earlier tile)."""
    h, w = img.shape[:2]
    pad0, pad1 = (sz - h % sz) % sz, (sz - w % sz) % sz
    img = np.pad(img, [[pad0 // 2, pad0 - pad0 // 2], [pad1 // 2, pad1 - pad1 // 2], [0, 0]], constant_values=255)
    img = img.reshape(img.shape[0] // sz, sz, img.shape[1] // sz, sz, 3).transpose(0, 2, 1, 3, 4).reshape(-1, sz, sz, 3)
    if len(img) < n:
        img = np.pad(img, [[0, n - len(img)], [0, 0], [0, 0], [0, 0]], constant_values=255)
    idx = np.argsort(img.reshape(img.shape[0], -1).sum(-1), kind="stable")[:n]
    return idx, img[idx]


def region_ref(img: np.ndarray, y: int, x: int, h: int, w: int, fill: int) -> np.ndarray:
    """Reference crop through an explicitly padded copy (the rectangle may stick out of the image)."""
    p = max(h, w) + abs(y) + abs(x)
    pad = [(p, p), (p, p)] + [(0, 0)] * (img.ndim - 2)
    return np.pad(img, pad, constant_values=fill)[y + p : y + p + h, x + p : x + p + w]


def padded_cut(img: np.ndarray, y: int, x: int, s: int, fill: int) -> np.ndarray:
    """Reference ``s x s`` tile at ``(y, x)``."""
    return region_ref(img, y, x, s, s, fill)


# ---------------------------------------------------------------------------------------------------- readers


def test_reader_levels_mpp_and_regions(tmp_path: Path) -> None:
    img, _ = planted()
    path = write_pyramid(tmp_path / "a.tiff", img, mpp0=0.5, compression="zlib")
    with open_slide(path) as slide:
        assert [(lv.height, lv.width) for lv in slide.levels] == [(300, 260), (150, 130), (75, 65)]
        assert [lv.downsample for lv in slide.levels] == [1.0, 2.0, 4.0]
        assert slide.mpp == pytest.approx(0.5)
        assert [lv.mpp for lv in slide.levels] == pytest.approx([0.5, 1.0, 2.0])
        np.testing.assert_array_equal(slide.read_level(1), img)
        # A region across the top-left and bottom-right edges reads only some tiles and fills the outside.
        for y, x, h, w in [(-7, -5, 50, 70), (120, 100, 60, 60), (40, 33, 31, 64), (200, 0, 10, 10)]:
            np.testing.assert_array_equal(slide.read_region(1, y, x, h, w, fill=255), region_ref(img, y, x, h, w, 255))
        assert choose_level(slide) == 1
        assert choose_level(slide, mpp=1.7) == 2  # |log(2/1.7)| < |log(1/1.7)|
        assert choose_level(slide, mpp=0.6) == 0
        with pytest.raises(DataError, match="no pyramid level 3"):
            choose_level(slide, level=3)


@pytest.mark.parametrize("compression", [None, "zlib"])
def test_reader_regions_of_strip_and_gray_pages(tmp_path: Path, compression: str | None) -> None:
    rgb = np.random.default_rng(5).integers(0, 256, size=(150, 70, 3), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "strips.tif", rgb, rowsperstrip=16, compression=compression)  # last strip: 6 rows
    tifffile.imwrite(tmp_path / "gray.tif", rgb[..., 1], tile=(32, 32), compression=compression)
    with open_slide(tmp_path / "strips.tif") as a, open_slide(tmp_path / "gray.tif") as g:
        for y, x, h, w in [(-3, -4, 30, 20), (140, 60, 20, 20), (17, 0, 15, 70), (0, 0, 150, 70)]:
            np.testing.assert_array_equal(a.read_region(0, y, x, h, w, fill=9), region_ref(rgb, y, x, h, w, 9))
            np.testing.assert_array_equal(g.read_region(0, y, x, h, w, fill=9), region_ref(rgb[..., 1], y, x, h, w, 9))


def test_reader_aperio_mpp_and_missing_mpp(tmp_path: Path) -> None:
    gray = np.full((64, 48), 200, np.uint8)
    with tifffile.TiffWriter(tmp_path / "s.svs") as tw:
        tw.write(gray, description="Aperio Image Library v12\n48x64 |AppMag = 20|MPP = 0.2520|Left = 1", tile=(16, 16))
    with open_slide(tmp_path / "s.svs") as slide:
        assert slide.mpp == pytest.approx(0.252)
        np.testing.assert_array_equal(slide.read_region(0, -2, -2, 4, 4, fill=7)[:2], 7)
    write_pyramid(tmp_path / "nompp.tiff", planted()[0])
    with open_slide(tmp_path / "nompp.tiff") as slide:
        assert slide.mpp is None
        with pytest.raises(DataError, match="microns per pixel"):
            choose_level(slide, mpp=1.0)


def test_reader_rejects_broken_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.tiff"
    bad.write_bytes(b"II*\x00garbage" * 10)
    with pytest.raises(DataError, match="bad.tiff"):
        TiffSlide(bad)


# ---------------------------------------------------------------------------------------------------- scoring


def test_grid_splits_padding_like_the_panda_kernel() -> None:
    grid = make_grid(70, 45, 16)
    # pad 10 rows (5 above) and 3 columns (1 left)
    assert (grid.rows, grid.cols, grid.top, grid.left) == (5, 3, -5, -1)
    exact = make_grid(64, 32, 16)
    assert (exact.rows, exact.cols, exact.top, exact.left) == (4, 2, 0, 0)
    assert grid.origin(4) == (-5 + 16, -1 + 16)


@pytest.mark.parametrize(("h", "w", "size"), [(70, 45, 16), (40, 64, 16), (650, 610, 300)])
def test_tile_sums_match_plain_loops(h: int, w: int, size: int) -> None:
    # 300 px tiles: 300 * 255 overflows uint16 band sums, so this covers the uint32 branch
    img = np.random.default_rng(size).integers(200, 256, size=(h, w, 3), dtype=np.uint8)
    grid = make_grid(h, w, size)
    sums = tile_sums(img, grid)
    score, _, _ = score_tiles(img, grid)
    for r in range(grid.rows):
        for c in range(grid.cols):
            y, x = grid.top + r * size, grid.left + c * size
            assert sums[r, c] == sum(int(v) for v in padded_cut(img, y, x, size, 0).reshape(-1))
            assert score[r * grid.cols + c] == int(padded_cut(img, y, x, size, 255).astype(np.int64).sum())


def test_selection_matches_classic_get_tiles_and_planted_order(tmp_path: Path) -> None:
    img, plants = planted()
    grid = make_grid(*img.shape[:2], S)
    score, tissue, _ = score_tiles(img, grid)
    chosen = select_tiles(score, tissue, n=12)
    ref_idx, ref_tiles = classic_get_tiles(img, S, 12)
    np.testing.assert_array_equal(chosen, ref_idx)
    # The planted dark cells come first; edge cells are part white padding, so rank them by their padded sums.
    planted_pos = [r * grid.cols + c for (r, c) in plants]
    ref_sum = {p: int(padded_cut(img, *grid.origin(p), S, 255).astype(np.int64).sum()) for p in planted_pos}
    assert chosen[:5].tolist() == sorted(planted_pos, key=lambda p: (ref_sum[p], p))


def test_ties_are_broken_by_position() -> None:
    score = np.array([5, 3, 3, 9, 3, 1], np.int64)
    tissue = np.array([0, 2, 2, 0, 2, 1], np.int64)
    assert select_tiles(score, tissue, 4).tolist() == [5, 1, 2, 4]
    assert select_tiles(score, tissue, 2, method="otsu").tolist() == [1, 2]
    assert select_tiles(score, tissue, 10, min_tissue=2 / 4, size=2).tolist() == [1, 2, 4]
    assert select_tiles(score, tissue, 0).size == 0


@pytest.mark.parametrize(("size", "method", "threads"), [(S, "white", 1), (40, "white", 2), (24, "otsu", 2)])
def test_threaded_read_and_banded_scoring_match(
    tmp_path: Path, size: int, method: str, threads: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("medkit.tile._score.THREADED_MIN_PIXELS", 0)  # thread even this small level
    img, _ = planted(seed=3)
    img[100:140, 10:50] = (200, 80, 160)  # some saturated tissue for the otsu rule
    path = write_pyramid(tmp_path / "b.tiff", img)  # TIFF tiles of 32 px: misaligned with grids of 40 or 24 px
    with open_slide(path) as slide:
        small = slide.read_level(2)
        g1, s1, t1, thr1, im = score_slide_level(slide, 1, size, method, threads=threads)
        g2, s2, t2, thr2, none = score_slide_level(slide, 1, size, method, max_level_bytes=1000)
    assert im is not None and none is None
    np.testing.assert_array_equal(im, img)
    grid = make_grid(*img.shape[:2], size)
    otsu = None if method == "white" else score_tiles(small, make_grid(*small.shape[:2], size), "otsu")[2]
    s3, t3, thr3 = score_tiles(img, grid, method, otsu_threshold=otsu)  # whole level in memory, one pass
    assert g1 == g2 == grid and thr1 == thr2 == thr3
    for s, t in ((s1, t1), (s2, t2)):
        np.testing.assert_array_equal(s, s3)
        np.testing.assert_array_equal(t, t3)
    assert t3.sum() > 0


@pytest.mark.parametrize(("h", "w", "size"), [(1000, 777, 256), (513, 300, 256), (256, 256, 256), (45, 37, 4)])
@pytest.mark.parametrize("threads", [2, 3, 64])
def test_scoring_in_thread_bands_is_identical(h: int, w: int, size: int, threads: int) -> None:
    img = np.random.default_rng(h).integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    grid = make_grid(h, w, size)
    for method, thr in (("white", None), ("otsu", 40.0)):
        one = score_tiles(img, grid, method, otsu_threshold=thr)
        many = score_tiles(img, grid, method, otsu_threshold=thr, threads=threads)
        np.testing.assert_array_equal(many[0], one[0])
        np.testing.assert_array_equal(many[1], one[1])
        assert many[2] == one[2]
        assert one[1].sum() > 0 and len(one[0]) == grid.n


def test_otsu_picks_saturated_tissue_on_dark_background() -> None:
    img = np.full((96, 96, 3), 60, np.uint8)  # dark gray background, no saturation
    img[32:64, 64:96] = (200, 80, 160)  # pink tissue (saturated, but brighter than the background)
    grid = make_grid(96, 96, S)
    score, tissue, thr = score_tiles(img, grid, method="otsu")
    assert select_tiles(score, tissue, 1, method="otsu").tolist() == [1 * 3 + 2]
    assert tissue[5] == S * S and tissue[0] == 0 and thr >= 20
    # the white rule ranks the dark background first: the reason otsu exists
    assert select_tiles(score, tissue, 1, method="white").tolist() == [0]


def test_mosaic_layout() -> None:
    tiles = np.stack([np.full((4, 4, 3), k, np.uint8) for k in range(6)])
    m = make_mosaic(tiles, 2, 3)
    assert m.shape == (8, 12, 3)
    for k in range(6):
        r, c = divmod(k, 3)
        assert (m[r * 4 : (r + 1) * 4, c * 4 : (c + 1) * 4] == k).all()


# ---------------------------------------------------------------------------------------------------- tile_slide


def _mask_for(img: np.ndarray) -> np.ndarray:
    """A label mask in the PANDA layout (label in the red channel): label = darkness class of the pixel."""
    gray = img[..., 0]
    label = np.where(gray < 70, 5, np.where(gray < 130, 3, np.where(gray < 230, 1, 0))).astype(np.uint8)
    return np.stack([label, np.zeros_like(label), np.zeros_like(label)], axis=-1)


def test_tile_slide_tiles_masks_padding_and_index(tmp_path: Path) -> None:
    img, _ = planted()
    write_pyramid(tmp_path / "s1.tiff", img)
    (tmp_path / "masks").mkdir()
    write_pyramid(tmp_path / "masks" / "s1_mask.tiff", _mask_for(img))
    opts = TileOptions(
        out=str(tmp_path / "out"), n=9, size=S, fmt="npz", mosaic=(3, 3), masks_dir=str(tmp_path / "masks")
    )
    res = tile_slide(tmp_path / "s1.tiff", opts)
    assert res.status == "done", res.message
    z = np.load(tmp_path / "out" / "tiles" / "s1.npz")
    ref_idx, ref_tiles = classic_get_tiles(img, S, 9)
    np.testing.assert_array_equal(z["tiles"], ref_tiles)
    mask = _mask_for(img)[..., 0]
    grid = make_grid(*img.shape[:2], S)
    for k, pos in enumerate(ref_idx):
        y, x = grid.origin(pos)
        assert tuple(z["coords"][k]) == (y, x)
        np.testing.assert_array_equal(z["masks"][k], padded_cut(mask, y, x, S, 0))  # mask padding is 0
        np.testing.assert_array_equal(z["tiles"][k], padded_cut(img, y, x, S, 255))  # image padding is 255
    edge = [k for k, pos in enumerate(ref_idx) if pos // grid.cols == grid.rows - 1]
    assert edge, "the planted bottom-row cell must be selected"
    assert (z["tiles"][edge[0]][-3:] == 255).all() and (z["masks"][edge[0]][-3:] == 0).all()
    mosaic = cv2.cvtColor(cv2.imread(str(tmp_path / "out" / "mosaics" / "s1.png")), cv2.COLOR_BGR2RGB)
    np.testing.assert_array_equal(mosaic, make_mosaic(ref_tiles, 3, 3))
    mmosaic = cv2.imread(str(tmp_path / "out" / "mosaics" / "s1_mask.png"), cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(mmosaic, make_mosaic(z["masks"], 3, 3))
    index = json.loads((tmp_path / "out" / "index" / "s1.json").read_text())
    assert len(index["score"]) == grid.n and index["level"] == 1 and index["downsample"] == 2.0
    assert res.rows == [
        {"image": "mosaics/s1.png", "slide_id": "s1", "level": 1, "n_tissue_tiles": 9, "mask": "mosaics/s1_mask.png"}
    ]


def test_rgba_slide_gives_rgb_tiles(tmp_path: Path) -> None:
    img, _ = planted()
    rgba = np.concatenate([img, np.full(img.shape[:2] + (1,), 255, np.uint8)], axis=-1)
    write_pyramid(tmp_path / "rgba.tiff", rgba, extrasamples=[2])
    res = tile_slide(tmp_path / "rgba.tiff", TileOptions(out=str(tmp_path / "o"), n=4, size=S, fmt="npz"))
    assert res.status == "done", res.message
    np.testing.assert_array_equal(
        np.load(tmp_path / "o" / "tiles" / "rgba.npz")["tiles"], classic_get_tiles(img, S, 4)[1]
    )


def test_fewer_tissue_tiles_than_n_are_padded_with_background(tmp_path: Path) -> None:
    img, plants = planted()
    write_pyramid(tmp_path / "s.tiff", img)
    (tmp_path / "m").mkdir()
    write_pyramid(tmp_path / "m" / "s_mask.tiff", _mask_for(img))
    opts = TileOptions(out=str(tmp_path / "o"), n=8, size=S, fmt="png", min_tissue=0.5, masks_dir=str(tmp_path / "m"))
    res = tile_slide(tmp_path / "s.tiff", opts)
    assert res.status == "done", res.message
    # Only the planted cells hold >= 50% dark pixels; the edge cells of the last row are part padding.
    grid = make_grid(*img.shape[:2], S)
    real = {
        (r, c)
        for (r, c) in plants
        if np.mean(padded_cut(img, grid.top + r * S, grid.left + c * S, S, 255)[..., 0] < 230) >= 0.5
    }
    assert res.n_tissue == len(real) < 8
    assert [row["padding"] for row in res.rows] == [0] * len(real) + [1] * (8 - len(real))
    for row in res.rows[len(real) :]:
        tile = cv2.imread(str(tmp_path / "o" / row["image"]))
        mtile = cv2.imread(str(tmp_path / "o" / row["mask"]), cv2.IMREAD_UNCHANGED)
        assert (tile == 255).all() and (mtile == 0).all() and row["y"] is None
    assert sorted(os.listdir(tmp_path / "o" / "tiles" / "s")) == [f"{k:03d}.png" for k in range(8)]


def test_index_reuse_reads_only_regions(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    img, _ = planted()
    write_pyramid(tmp_path / "s.tiff", img)
    out = str(tmp_path / "o")
    first = tile_slide(tmp_path / "s.tiff", TileOptions(out=out, n=4, size=S, fmt="npz"))
    assert first.status == "done" and not first.reused_index

    def no_level(*a: object, **k: object) -> None:
        raise AssertionError("the level must not be decoded again")

    monkeypatch.setattr(TiffSlide, "read_level", no_level)
    again = tile_slide(tmp_path / "s.tiff", TileOptions(out=out, n=4, size=S, fmt="npz"))
    assert again.status == "skipped"
    more = tile_slide(tmp_path / "s.tiff", TileOptions(out=out, n=12, size=S, fmt="npz"))
    assert more.status == "done" and more.reused_index
    np.testing.assert_array_equal(np.load(Path(out) / "tiles" / "s.npz")["tiles"], classic_get_tiles(img, S, 12)[1])
    # another tile size cannot use the index: it must score again (and here fails on purpose)
    other = tile_slide(tmp_path / "s.tiff", TileOptions(out=out, n=4, size=16, fmt="npz"))
    assert other.status == "failed" and "must not be decoded" in other.message


# ---------------------------------------------------------------------------------------------------- CLI


def _two_slides_and_a_broken_one(tmp_path: Path) -> Path:
    d = tmp_path / "slides"
    d.mkdir()
    write_pyramid(d / "a1.tiff", planted(seed=1)[0], compression="jpeg")
    write_pyramid(d / "b2.tiff", planted(seed=2)[0])
    (d / "zz.tiff").write_bytes(b"II*\x00" + b"\x00" * 64)
    return d


def test_cli_end_to_end_labels_broken_slide_and_resume(tmp_path: Path) -> None:
    d = _two_slides_and_a_broken_one(tmp_path)
    labels = tmp_path / "train.csv"
    pd.DataFrame(
        {
            "image_id": ["a1", "b2", "zz"],
            "data_provider": ["radboud", "karolinska", "radboud"],
            "isup_grade": [3, 0, 1],
            "gleason_score": ["4+3", "0+0", "3+3"],
        }
    ).to_csv(labels, index=False)
    out = tmp_path / "out"
    args = [
        "tile",
        str(d),
        "--labels",
        str(labels),
        "--n",
        "4",
        "--size",
        str(S),
        "--mosaic",
        "2x2",
        "--workers",
        "1",
        "--out",
        str(out),
        "--json",
    ]
    res = runner.invoke(app, args)
    assert res.exit_code == 1, res.stderr
    summary = json.loads(res.stdout)
    assert (summary["tiled"], summary["skipped"], len(summary["failed"])) == (2, 0, 1)
    assert "zz.tiff" in res.stderr and "1 of 3 slide(s) failed: zz" in res.stderr
    table = pd.read_csv(out / "tiles.csv")
    assert table["slide_id"].tolist() == ["a1", "b2"]
    assert table["image"].tolist() == ["mosaics/a1.png", "mosaics/b2.png"]
    assert table["isup_grade"].tolist() == [3, 0] and table["gleason_score"].tolist() == ["4+3", "0+0"]
    assert all((out / p).is_file() for p in table["image"])
    stamp = (out / "mosaics" / "a1.png").stat().st_mtime_ns

    (d / "zz.tiff").unlink()
    res2 = runner.invoke(app, args)
    assert res2.exit_code == 0, res2.stderr
    s2 = json.loads(res2.stdout)
    assert (s2["tiled"], s2["skipped"]) == (0, 2)
    assert (out / "mosaics" / "a1.png").stat().st_mtime_ns == stamp
    pd.testing.assert_frame_equal(pd.read_csv(out / "tiles.csv"), table)

    # an interrupted run (done marker missing) redoes only that slide, from its index
    (out / "index" / "b2.done.json").unlink()
    res3 = runner.invoke(app, args[:-1])
    assert res3.exit_code == 0
    assert "b2" in res3.stdout and "index reused" in res3.stdout and "skipped" in res3.stdout


def test_cli_per_tile_table_png_and_process_pool(tmp_path: Path) -> None:
    d = tmp_path / "s"
    d.mkdir()
    for k in range(2):
        write_pyramid(d / f"x{k}.tiff", planted(seed=k)[0])
    out = tmp_path / "o"
    res = runner.invoke(
        app, ["tile", str(d), "--n", "3", "--size", str(S), "--level", "1", "--workers", "2", "--out", str(out)]
    )
    assert res.exit_code == 0, res.stderr
    table = pd.read_csv(out / "tiles.csv")
    assert table["image"].tolist() == [f"tiles/x{k}/{t:03d}.png" for k in range(2) for t in range(3)]
    assert table["tile"].tolist() == [0, 1, 2, 0, 1, 2]
    img = planted(seed=1)[0]
    idx, tiles = classic_get_tiles(img, S, 3)
    got = cv2.cvtColor(cv2.imread(str(out / "tiles/x1/002.png")), cv2.COLOR_BGR2RGB)
    np.testing.assert_array_equal(got, tiles[2])


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--level", "1", "--mpp", "1.0"], "--level and --mpp"),
        (["--mosaic", "3x3"], "holds 9 tiles but --n is 4"),
        (["--tissue", "blue"], "unknown --tissue"),
        (["--format", "none"], "no mosaic"),
    ],
)
def test_cli_usage_errors(tmp_path: Path, extra: list[str], needle: str) -> None:
    write_pyramid(tmp_path / "a.tiff", planted()[0])
    res = runner.invoke(app, ["tile", str(tmp_path / "a.tiff"), "--n", "4", "--out", str(tmp_path / "o"), *extra])
    assert res.exit_code == 2
    assert needle in res.stderr
    assert not (tmp_path / "o").exists()


def test_openslide_backend_agrees_with_tifffile(tmp_path: Path) -> None:
    pytest.importorskip("openslide")
    img, _ = planted(h=200, w=180)
    path = tmp_path / "g.tiff"
    with tifffile.TiffWriter(path) as tw:  # generic tiled TIFF, levels as plain pages (OpenSlide "generic-tiff")
        tw.write(img, tile=(64, 64), compression="zlib")
        tw.write(np.ascontiguousarray(img[::2, ::2]), tile=(64, 64), compression="zlib", subfiletype=1)
    with open_slide(path, "tifffile") as a, open_slide(path, "openslide") as b:
        assert [(lv.height, lv.width) for lv in a.levels] == [(lv.height, lv.width) for lv in b.levels]
        for level, (y, x) in [(0, (-9, 150)), (1, (40, -3))]:
            np.testing.assert_array_equal(a.read_region(level, y, x, 70, 50), b.read_region(level, y, x, 70, 50))


def test_mask_at_another_resolution_is_resized_onto_the_image_level(tmp_path: Path) -> None:
    img, _ = planted()
    write_pyramid(tmp_path / "s.tiff", img)
    (tmp_path / "m").mkdir()
    label = _mask_for(img)[..., 0]
    small = np.ascontiguousarray(label[::2, ::2])  # a single-level mask at half the image level's resolution
    tifffile.imwrite(tmp_path / "m" / "s_mask.tiff", small, tile=(16, 16))
    opts = TileOptions(out=str(tmp_path / "o"), n=5, size=S, fmt="npz", masks_dir=str(tmp_path / "m"))
    res = tile_slide(tmp_path / "s.tiff", opts)
    assert res.status == "done", res.message
    z = np.load(tmp_path / "o" / "tiles" / "s.npz")
    expected = cv2.resize(small, (img.shape[1], img.shape[0]), interpolation=cv2.INTER_NEAREST)
    for k in range(5):
        y, x = z["coords"][k]
        np.testing.assert_array_equal(z["masks"][k], padded_cut(expected, int(y), int(x), S, 0))
    assert z["masks"][:5].max() == 5  # the planted darkest cell carries label 5


def test_cli_mpp_and_missing_level(tmp_path: Path) -> None:
    write_pyramid(tmp_path / "a.tiff", planted()[0], mpp0=0.25)  # levels at 0.25, 0.5, 1.0 um/px
    write_pyramid(tmp_path / "b.tiff", planted(seed=4)[0], mpp0=0.25)
    out = tmp_path / "o"
    res = runner.invoke(
        app,
        [
            "tile",
            str(tmp_path),
            "--mpp",
            "0.9",
            "--n",
            "2",
            "--size",
            str(S),
            "--workers",
            "1",
            "--format",
            "npz",
            "--out",
            str(out),
            "--json",
        ],
    )
    assert res.exit_code == 0, res.stderr
    assert [s["level"] for s in json.loads(res.stdout)["per_slide"]] == [2, 2]
    res = runner.invoke(app, ["tile", str(tmp_path / "a.tiff"), "--level", "5", "--n", "2", "--out", str(out)])
    assert res.exit_code == 1
    assert "no pyramid level 5" in res.stderr and "levels 0 (260x300)" in res.stderr


def test_only_the_chosen_level_is_decoded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    img, _ = planted()
    write_pyramid(tmp_path / "s.tiff", img)
    seen: list[int] = []
    real_level, real_region = TiffSlide.read_level, TiffSlide.read_region

    def spy_level(self: TiffSlide, level: int, threads: int = 1) -> np.ndarray:
        seen.append(level)
        return real_level(self, level, threads)

    def spy_region(self: TiffSlide, level: int, *args: int, **kw: int) -> np.ndarray:
        seen.append(level)
        return real_region(self, level, *args, **kw)

    monkeypatch.setattr(TiffSlide, "read_level", spy_level)
    monkeypatch.setattr(TiffSlide, "read_region", spy_region)
    res = tile_slide(tmp_path / "s.tiff", TileOptions(out=str(tmp_path / "o"), n=4, size=S, level=1, fmt="npz"))
    assert res.status == "done" and set(seen) == {1}


def test_tile_slides_orders_results_and_reports_progress(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    d = tmp_path / "s"
    d.mkdir()
    for name in ("b", "a"):
        write_pyramid(d / f"{name}.tiff", planted(seed=len(name))[0])
    (d / "c.tiff").write_bytes(b"not a tiff")
    paths = find_slides([d, d / "a.tiff"])  # a folder and a file in it: each slide once
    assert [p.name for p in paths] == ["a.tiff", "b.tiff", "c.tiff"]
    seen: list[str] = []
    opts = TileOptions(out=str(tmp_path / "o"), n=2, size=S, fmt="npz", threads=7)
    results = tile_slides(paths, opts, workers=0, on_progress=lambda r: seen.append(r.slide_id))
    assert [r.slide_id for r in results] == ["a", "b", "c"] and sorted(seen) == ["a", "b", "c"]
    assert [r.status for r in results] == ["done", "done", "failed"]
    # One slide at a time: decoder threads (at most 4) replace whatever the options said.
    monkeypatch.setattr("medkit.tile._run.usable_cores", lambda: 16)
    got: list[int] = []
    monkeypatch.setattr("medkit.tile._run.tile_slide", lambda p, o: got.append(o.threads) or results[0])
    tile_slides(paths[:1], opts, workers=1)
    assert got == [4]
    (tmp_path / "t").mkdir()
    write_pyramid(tmp_path / "t" / "a.tiff", planted()[0])
    with pytest.raises(UsageError, match="two slides share the id 'a'"):
        find_slides([d / "a.tiff", tmp_path / "t" / "a.tiff"])
