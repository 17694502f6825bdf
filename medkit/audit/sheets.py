"""Contact sheets: one PNG per finding kind, a grid of the flagged images or one row per duplicate cluster, each
image shown on the scale it was judged on (a dark image stays dark, CT in a fixed HU window).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medkit.audit.files import archive_member
from medkit.audit.quality import bits_for
from medkit.audit.report import AuditReport, Finding

__all__ = ["contact_sheets"]

_BACKGROUND = 40  # grey of a tile's empty border
_CT_WINDOW = (-1000.0, 1000.0)  # HU shown on a CT tile: air black, bone white


def _load(root: Path, rel: str) -> np.ndarray:
    """The pixels of an audit name (a file, or an image of a MedMNIST archive)."""
    from medkit.audit._scan import archive_array
    from medkit.io.readers import read_image

    member = archive_member(root, rel)
    return archive_array(*member[:2])[member[2]] if member else read_image(root / rel)


def _crossed(size: int) -> np.ndarray:
    """The tile of an image that cannot be shown: a cross on the background."""
    import cv2

    tile = np.full((size, size), _BACKGROUND, dtype=np.uint8)
    cv2.line(tile, (0, 0), (size - 1, size - 1), 200, 2)
    cv2.line(tile, (0, size - 1), (size - 1, 0), 200, 2)
    return tile


def _grey_2d(arr: np.ndarray) -> np.ndarray:
    """A 2-D grey view: the middle frame of a stack, the mean of the colour channels."""
    if arr.ndim == 4 or (arr.ndim == 3 and arr.shape[-1] not in (1, 2, 3, 4)):
        arr = arr[arr.shape[0] // 2]
    if arr.ndim == 3:
        arr = arr[..., :3].mean(axis=-1) if arr.shape[-1] >= 3 else arr[..., 0]
    return arr


def _display_range(arr: np.ndarray, a: np.ndarray, rec: dict[str, Any]) -> tuple[float, float]:
    """The intensities mapped to black and white: as the image was judged (its dtype's range, HU for CT)."""
    dicom = rec.get("dicom") or {}
    if dicom.get("modality") == "CT":
        return _CT_WINDOW
    if arr.dtype == np.uint8:
        return 0.0, 255.0
    if arr.dtype == np.uint16:
        return 0.0, float((1 << bits_for(float(a.max()) if a.size else 0)) - 1)
    return float(np.nanmin(a)), float(np.nanmax(a))


def _thumb(root: Path, rel: str, rec: dict[str, Any], size: int) -> np.ndarray:
    """A uint8 (size, size) display of an image on the scale it was judged on (dark stays dark)."""
    import cv2

    try:
        arr = _load(root, rel)
    except Exception:
        return _crossed(size)
    arr = _grey_2d(arr)
    a = arr.astype(np.float32)
    lo, hi = _display_range(arr, a, rec)
    img = np.clip((a - lo) / max(hi - lo, 1e-6) * 255.0, 0, 255).astype(np.uint8)
    h, w = img.shape
    scale = size / max(h, w)
    small = cv2.resize(img, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    tile = np.full((size, size), _BACKGROUND, dtype=np.uint8)
    y, x = (size - small.shape[0]) // 2, (size - small.shape[1]) // 2
    tile[y : y + small.shape[0], x : x + small.shape[1]] = small
    return tile


def _captioned(tile: np.ndarray, caption: str) -> np.ndarray:
    """The tile framed, with the end of ``caption`` written in a band below it."""
    import cv2

    size = tile.shape[1]
    tile = tile.copy()
    cv2.rectangle(tile, (0, 0), (size - 1, tile.shape[0] - 1), 110, 1)  # a black image still shows as a tile
    band = np.full((16, size), 0, dtype=np.uint8)
    text = caption if len(caption) <= size // 6 else "..." + caption[-(size // 6 - 3) :]
    cv2.putText(band, text, (2, 12), cv2.FONT_HERSHEY_PLAIN, 0.75, 255, 1, cv2.LINE_AA)
    return np.vstack([tile, band])


@dataclass
class _Tiles:
    """What every tile of a contact sheet needs: where the images are, their summaries, tile size and grid width."""

    root: Path
    records: list[dict[str, Any]]
    index: dict[str, int]
    size: int = 128
    cols: int = 8

    def tile(self, rel: str) -> np.ndarray:
        """The captioned tile of one audit name."""
        return _captioned(_thumb(self.root, rel, self.records[self.index[rel]], self.size), rel)


def _cluster_rows(t: _Tiles, items: list[Finding], max_items: int) -> list[np.ndarray]:
    """One row per finding (a cluster, a patient...): its first images, padded to the grid width."""
    rows = []
    for f in items[: max_items // 3 or 1]:
        tiles = [t.tile(x) for x in f.files[: t.cols] if x in t.index]
        while len(tiles) < t.cols:
            tiles.append(np.zeros_like(tiles[0]))
        rows.append(np.hstack(tiles))
    return rows


def _grid_rows(t: _Tiles, items: list[Finding], max_items: int) -> list[np.ndarray]:
    """The flagged images of one-file findings, ``cols`` to a row."""
    tiles = [t.tile(f.files[0]) for f in items[:max_items] if f.files[0] in t.index]
    while len(tiles) % t.cols:
        tiles.append(np.zeros_like(tiles[0]))
    return [np.hstack(tiles[i : i + t.cols]) for i in range(0, len(tiles), t.cols)]


def _stack(rows: list[np.ndarray]) -> np.ndarray:
    """The rows one above the other, a grey line between two."""
    sep = np.full((4, rows[0].shape[1]), 90, dtype=np.uint8)
    return np.vstack([x for r in rows for x in (r, sep)][:-1])


def _write_png(path: Path, sheet: np.ndarray) -> bool:
    """Write ``sheet`` as a PNG (atomically); False when it cannot be encoded."""
    import cv2

    from medkit._io import atomic_write

    ok, buf = cv2.imencode(".png", sheet)
    if not ok:
        return False
    with atomic_write(path, "wb") as fh:
        fh.write(buf.tobytes())
    return True


def _by_kind(report: AuditReport, index: dict[str, int]) -> dict[str, list[Finding]]:
    """The findings that name at least one scanned image, by kind (table-only findings have nothing to show)."""
    by_kind: dict[str, list[Finding]] = defaultdict(list)
    for f in report.findings:
        if any(x in index for x in f.files):
            by_kind[f.kind].append(f)
    return by_kind


def contact_sheets(report: AuditReport, out: Path, max_items: int, size: int = 128) -> list[Path]:
    """One PNG per finding kind that has images: a grid of flagged images, or one row per duplicate cluster.

    Args:
        report: The audit.
        out: The output folder.
        max_items: Most tiles on a grid sheet (a third of it in rows on a cluster sheet).
        size: Tile side in pixels.

    Returns:
        The written sheets (``sheet_<kind>.png``).
    """
    index = {f: k for k, f in enumerate(report.files)}
    t = _Tiles(root=report.root, records=report.records, index=index, size=size)
    written = []
    for kind, items in _by_kind(report, index).items():
        multi = any(len(f.files) > 1 for f in items)
        rows = _cluster_rows(t, items, max_items) if multi else _grid_rows(t, items, max_items)
        if not rows:
            continue
        path = out / f"sheet_{kind}.png"
        if _write_png(path, _stack(rows)):
            written.append(path)
    return written
