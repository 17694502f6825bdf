"""Robustness of medkit on pixels: decoder chatter, worker errors, bit depth, crops, memory, contact sheets, slides.

Every case builds its own files in ``tmp_path``; each one failed before the fix it checks.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from _factories import png_table
from typer.testing import CliRunner

from medkit.cli.main import app

runner = CliRunner()


def _truncated_png(path: Path, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    ok, buf = cv2.imencode(".png", rng.integers(0, 256, (64, 64), dtype=np.uint8))
    path.write_bytes(buf.tobytes()[: len(buf) // 2])
    return path


# ------------------------------------------------------------------------------------------ decoder chatter (9)
def test_truncated_png_gives_medkits_message_and_no_libpng_line(tmp_path: Path, capfd: pytest.CaptureFixture) -> None:
    from medkit.errors import ImageReadError
    from medkit.io.readers import read_image

    bad = _truncated_png(tmp_path / "bad.png")
    with pytest.raises(ImageReadError, match="cannot decode as PNG"):
        read_image(bad)
    err = capfd.readouterr().err
    assert "libpng" not in err


def test_audit_workers_report_a_corrupt_png_once_without_libpng_lines(
    tmp_path: Path, capfd: pytest.CaptureFixture
) -> None:
    from medkit.audit import run_audit

    rng = np.random.default_rng(1)
    for i in range(10):
        cv2.imwrite(str(tmp_path / f"ok{i}.png"), rng.integers(0, 256, (32, 32), dtype=np.uint8))
    _truncated_png(tmp_path / "bad.png")
    report = run_audit(tmp_path, workers=2)
    unreadable = [f for f in report.findings if f.kind == "unreadable"]
    assert [f.files for f in unreadable] == [("bad.png",)]
    assert "libpng" not in capfd.readouterr().err


def test_train_with_a_worker_gives_medkits_message_for_a_corrupt_image(tmp_path: Path) -> None:
    table = png_table(tmp_path, {"y": [i % 2 for i in range(12)]}, 12)
    _truncated_png(tmp_path / "img" / "im003.png")
    res = runner.invoke(
        app,
        ["train", "binary", "--data", str(tmp_path), "--labels", str(table), "--label-cols", "y", "--model",
         "cnn_small", "--img-size", "32", "--batch-size", "4", "--device", "cpu", "--workers", "1", "--feed",
         "workers", "--epochs", "1", "--out", str(tmp_path / "run")],
    )  # fmt: skip
    assert res.exit_code == 2, res.output
    assert "im003.png: cannot decode as PNG" in res.stderr
    assert "hint:" in res.stderr
    assert "Caught" not in res.stderr and "Traceback" not in res.stderr


# ------------------------------------------------------------------------------------------ bit depth (6)
def _natural16(seed: int, top: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = cv2.GaussianBlur(rng.normal(0, 1, (64, 64)).astype(np.float32), (0, 0), 3)
    img = (img - img.min()) / (img.max() - img.min())
    return np.round(img * top).astype(np.uint16)


def test_12bit_images_in_16bit_pngs_are_judged_on_0_4095_and_truly_dark_16bit_images_still_are_dark(
    tmp_path: Path,
) -> None:
    from medkit.audit import run_audit

    twelve = tmp_path / "twelve"
    twelve.mkdir()
    for i in range(9):
        cv2.imwrite(str(twelve / f"x{i}.png"), _natural16(i, 4095))
    marked = _natural16(9, 4095)
    marked[:2, :2] = 65535  # a burned-in marker at the container's top value
    cv2.imwrite(str(twelve / "x9.png"), marked)
    report = run_audit(twelve, workers=0)
    assert [f.files for f in report.findings if f.kind == "dark"] == []

    sixteen = tmp_path / "sixteen"
    sixteen.mkdir()
    for i in range(9):
        cv2.imwrite(str(sixteen / f"y{i}.png"), _natural16(i, 65535))
    cv2.imwrite(str(sixteen / "dark.png"), _natural16(20, 3000))
    report = run_audit(sixteen, workers=0)
    assert [f.files for f in report.findings if f.kind == "dark"] == [("dark.png",)]


# ------------------------------------------------------------------------------------------ --out inside the data (7)
def test_out_inside_the_data_is_not_audited_and_out_equal_to_data_is_refused(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    rng = np.random.default_rng(3)
    for i in range(6):
        cv2.imwrite(str(data / f"im{i}.png"), rng.integers(0, 256, (48, 48), dtype=np.uint8))
    cv2.imwrite(str(data / "black.png"), np.zeros((48, 48), np.uint8))
    out = data / "audit"
    first = runner.invoke(app, ["audit", str(data), "--out", str(out), "--workers", "0", "--fail-on", "none"])
    assert first.exit_code == 0, first.output
    assert list(out.glob("sheet_*.png"))
    again = runner.invoke(app, ["audit", str(data), "--out", str(out), "--workers", "0", "--json", "--fail-on", "none"])
    assert again.exit_code == 0, again.output
    assert '"files": 7' in again.stdout.replace(" ", "").replace('"files":7', '"files": 7')
    # A second --out elsewhere still leaves the first audit's folder out: medkit's own files are not data.
    other = runner.invoke(app, ["audit", str(data), "--json", "--workers", "0", "--fail-on", "none"])
    assert '"files": 7' in other.stdout.replace('"files":7', '"files": 7')
    refused = runner.invoke(app, ["audit", str(data), "--out", str(data), "--workers", "0"])
    assert refused.exit_code == 2 and "is the data folder" in refused.stderr


# ------------------------------------------------------------------------------------------ mixed_channels (issue 16)
def test_grey_stored_as_rgb_with_a_few_levels_of_noise_is_grey_and_colour_is_measured(tmp_path: Path) -> None:
    from medkit.audit import run_audit

    rng = np.random.default_rng(4)
    for i in range(8):
        g = rng.integers(0, 250, (48, 48), dtype=np.uint8)
        rgb = np.repeat(g[..., None], 3, axis=-1).astype(np.int16)
        noise = np.zeros_like(g, dtype=np.int16)
        noise.flat[rng.choice(g.size, 40, replace=False)] = rng.integers(1, 7, 40)  # max 6, mean ~0.1
        rgb[..., 1] += noise
        cv2.imwrite(str(tmp_path / f"grey{i}.png"), rgb.astype(np.uint8))
    colour = rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "colour.png"), colour)
    report = run_audit(tmp_path, workers=0)
    mixed = [f for f in report.findings if f.kind == "mixed_channels"]
    assert [f.files for f in mixed] == [("colour.png",)]
    assert "differ by up to" in mixed[0].detail
    rec = report.records[report.files.index("grey0.png")]
    assert rec["eff_channels"] == 1 and rec["chan_diff"][0] <= 6 and 0 < rec["chan_diff"][1] < 0.25


# ------------------------------------------------------------------------------------------ contact sheets
def test_cluster_sheet_with_no_scanned_file_among_the_first_eight_does_not_crash(tmp_path: Path) -> None:
    from medkit.audit.report import Finding
    from medkit.audit.sheets import _cluster_rows, _Tiles

    cv2.imwrite(str(tmp_path / "real.png"), np.full((32, 32), 100, np.uint8))
    rec = {"ok": True, "dtype": "uint8"}
    t = _Tiles(root=tmp_path, records=[rec], index={"real.png": 0}, size=32)
    f = Finding("leakage", tuple(f"ghost{i}.png" for i in range(9)) + ("real.png",), "x")
    rows = _cluster_rows(t, [f], 30)
    assert len(rows) == 1 and rows[0].shape[1] == 32 * 8
    assert _cluster_rows(t, [Finding("leakage", ("ghost.png",), "x")], 30) == []


def test_caption_keeps_the_split_folder_and_notes_show_labels() -> None:
    from medkit.audit.sheets import _fit

    name = "train/1_abnormal/00000127_005.png"
    assert _fit(name, 21, keep_head=True).startswith("train/")
    assert _fit(name, 21, keep_head=True).endswith("_005.png")
    assert len(_fit(name, 21, keep_head=True)) <= 21


# ------------------------------------------------------------------------------------------ pixel cap in bytes (19)
def _png_header_only(path: Path, width: int, height: int, depth: int, colour_type: int) -> Path:
    """A PNG whose IHDR announces a size (no pixel data): what the readers check before decoding."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, depth, colour_type, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))
    return path


def test_pixel_cap_counts_channels_and_bit_depth(tmp_path: Path) -> None:
    from medkit.audit._scan import summarize_file
    from medkit.errors import ImageReadError
    from medkit.io.readers import MAX_PIXELS, read_image

    # 12000 x 12000 = 144 M pixels: under the pixel cap, but 16-bit RGBA decodes to 1.07 GiB.
    assert MAX_PIXELS > 12000 * 12000
    big = _png_header_only(tmp_path / "rgba16.png", 12000, 12000, 16, 6)
    with pytest.raises(ImageReadError, match=r"decodes to 1\.07 GiB, above the limit of 1\.00 GiB"):
        read_image(big)
    rec = summarize_file(str(big))
    assert not rec["ok"] and "decodes to" in rec["error"]
    # The same size as 8-bit grey (144 MB) passes the cap and fails only for its missing pixels.
    grey = _png_header_only(tmp_path / "grey8.png", 12000, 12000, 8, 0)
    with pytest.raises(ImageReadError, match="cannot decode as PNG"):
        read_image(grey)
    # max_pixels=None lifts both caps.
    with pytest.raises(ImageReadError, match="cannot decode as PNG"):
        read_image(big, max_pixels=None)
