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
    if rec.get("judged_range") is not None:
        return rec["judged_range"]
    if arr.dtype == np.uint8:
        return 0.0, 255.0
    if arr.dtype == np.uint16:
        return 0.0, float((1 << bits_for(float(a.max()) if a.size else 0)) - 1)
    return float(np.nanmin(a)), float(np.nanmax(a))


def _colour_view(arr: np.ndarray) -> np.ndarray | None:
    """The RGB planes of a colour image (the middle frame of a stack), or None for a grey one."""
    if arr.ndim == 4:
        arr = arr[arr.shape[0] // 2]
    if arr.ndim == 3 and arr.shape[-1] in (3, 4):
        return arr[..., :3]
    return None


def _thumb(root: Path, rel: str, rec: dict[str, Any], size: int, colour: bool = False) -> np.ndarray:
    """A uint8 (size, size) display of an image on the scale it was judged on (dark stays dark).

    With ``colour``, a colour image keeps its colours ((size, size, 3), BGR for OpenCV): on the ``mixed_channels``
    sheet the colour is the finding.
    """
    import cv2

    try:
        arr = _load(root, rel)
    except Exception:
        return _crossed(size)
    view = _colour_view(arr) if colour else None
    arr = _grey_2d(arr) if view is None else view[..., ::-1]
    a = arr.astype(np.float32)
    lo, hi = _display_range(arr, a, rec)
    img = np.clip((a - lo) / max(hi - lo, 1e-6) * 255.0, 0, 255).astype(np.uint8)
    h, w = img.shape[:2]
    scale = size / max(h, w)
    small = cv2.resize(img, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    tile = np.full((size, size, *img.shape[2:]), _BACKGROUND, dtype=np.uint8)
    y, x = (size - small.shape[0]) // 2, (size - small.shape[1]) // 2
    tile[y : y + small.shape[0], x : x + small.shape[1]] = small
    return tile


def _fit(text: str, chars: int, keep_head: bool = False) -> str:
    """``text`` shortened to ``chars`` characters: from the left, or (``keep_head``) its first folder kept."""
    if len(text) <= chars:
        return text
    if keep_head and "/" in text:
        head, _, rest = text.partition("/")
        tail = max(chars - len(head) - 4, 4)
        if len(head) + 4 + min(tail, len(rest)) <= chars:
            return f"{head}/..{rest[-tail:]}"
    return ".." + text[-(chars - 2) :]


def _captioned(tile: np.ndarray, caption: str, note: str = "") -> np.ndarray:
    """The tile framed, with ``caption`` (its end; the first folder kept, it often names the split) in a band below
    it, and ``note`` (labels, a split) on a second line."""
    import cv2

    size = tile.shape[1]
    white = (255,) * (tile.shape[2] if tile.ndim == 3 else 1)
    tile = tile.copy()
    cv2.rectangle(tile, (0, 0), (size - 1, tile.shape[0] - 1), (110,) * len(white), 1)  # a black image still shows
    from medkit._names import escape_name

    caption = escape_name(caption)  # cv2.putText crashes the process on a non-UTF-8 name (surrogate escapes)
    lines = [_fit(caption, size // 6, keep_head=True)] + ([_fit(note, size // 6)] if note else [])
    band = np.zeros((4 + 12 * len(lines), size, *tile.shape[2:]), dtype=np.uint8)
    for k, text in enumerate(lines):
        cv2.putText(band, text, (2, 12 + 12 * k), cv2.FONT_HERSHEY_PLAIN, 0.75, white, 1, cv2.LINE_AA)
    return np.vstack([tile, band])


@dataclass
class _Tiles:
    """What every tile of a contact sheet needs: where the images are, their summaries, tile size and grid width."""

    root: Path
    records: list[dict[str, Any]]
    index: dict[str, int]
    size: int = 128
    cols: int = 8
    notes: dict[str, str] | None = None
    colour: bool = False

    ranges: list[Any] | None = None

    def tile(self, rel: str) -> np.ndarray:
        """The captioned tile of one audit name."""
        k = self.index[rel]
        rec = self.records[k]
        if self.ranges is not None and self.ranges[k] is not None:
            rec = {**rec, "judged_range": self.ranges[k]}
        thumb = _thumb(self.root, rel, rec, self.size, self.colour)
        if self.colour and thumb.ndim == 2:
            thumb = np.repeat(thumb[..., None], 3, axis=-1)
        return _captioned(thumb, rel, (self.notes or {}).get(rel, ""))


def _pad(tiles: list[np.ndarray], n: int) -> list[np.ndarray]:
    """``tiles`` padded with black tiles of the first one's shape to a multiple of ``n``."""
    while len(tiles) % n:
        tiles.append(np.zeros_like(tiles[0]))
    return tiles


def _cluster_rows(t: _Tiles, items: list[Finding], max_items: int) -> list[np.ndarray]:
    """One row per finding (a cluster, a patient...): its first scanned images, padded to the grid width."""
    rows = []
    for f in items[: max_items // 3 or 1]:
        shown = [x for x in f.files if x in t.index][: t.cols]  # table-only names (missing files) have no picture
        if shown:
            rows.append(np.hstack(_pad([t.tile(x) for x in shown], t.cols)))
    return rows


def _grid_rows(t: _Tiles, items: list[Finding], max_items: int) -> list[np.ndarray]:
    """The flagged images of the findings (every file of each), ``cols`` to a row."""
    names = list(dict.fromkeys(x for f in items for x in f.files if x in t.index))[:max_items]
    if not names:
        return []
    tiles = _pad([t.tile(x) for x in names], t.cols)
    return [np.hstack(tiles[i : i + t.cols]) for i in range(0, len(tiles), t.cols)]


def _stack(rows: list[np.ndarray]) -> np.ndarray:
    """The rows one above the other, a grey line between two."""
    sep = np.full((4, *rows[0].shape[1:]), 90, dtype=np.uint8)
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


def _table_values(report: AuditReport, cols: list[str]) -> dict[str, tuple[Any, ...]]:
    """``{file: values of cols}`` from the label table (a file's first row wins)."""
    table = report.table
    if table is None or not cols or not report.row_file:
        return {}
    values: dict[str, tuple[Any, ...]] = {}
    for k, rf in enumerate(report.row_file):
        if rf is not None and rf not in values:
            values[rf] = tuple(table[c].iloc[k] for c in cols)
    return values


def _label_notes(report: AuditReport, names: set[str]) -> dict[str, str]:
    """The labels of each file (``y=1``, ``a+b``), from the table, else from the MedMNIST archive it is in."""
    cols = list(report.label_cols)
    values = _table_values(report, cols)
    if not values:
        values = _archive_labels(report.root, names)
    out = {}
    for f, v in values.items():
        if f in names:
            if len(cols) == 1 or len(v) == 1:
                out[f] = f"{cols[0] if cols else 'label'}={v[0]}"
            else:
                on = [c for c, x in zip(cols, v, strict=False) if x not in (0, 0.0, None, False) and x == x]
                out[f] = "+".join(on) if on else "none"
    return out


def _archive_labels(root: Path, names: set[str]) -> dict[str, tuple[Any, ...]]:
    """Labels of archive images by audit name (``<archive>/<split>/<index>``)."""
    out: dict[str, tuple[Any, ...]] = {}
    for name in names:
        member = archive_member(root, name)
        if member is None:
            continue
        path, key, i = member
        try:
            with np.load(path, allow_pickle=False) as npz:
                lab = npz[key.replace("_images", "_labels")]
            out[name] = tuple(v.item() for v in np.asarray(lab[i]).reshape(-1))
        except Exception:  # no labels in the archive: no note
            continue
    return out


def _split_notes(report: AuditReport, names: set[str]) -> dict[str, str]:
    """The split and fold of each file: table columns first, else the train/valid/test folder in its path."""
    from medkit.audit.files import infer_split

    cols: list[tuple[str, str]] = []
    if report.table is not None:
        from medkit.data.table import detect_spec

        try:
            spec = detect_spec(report.table, image=report.image_col, labels=list(report.label_cols) or None)
            cols = [(n, c) for n, c in (("split", spec.split), ("fold", spec.fold)) if c]
        except Exception:  # a table the audit already reported on: fall back to folder names
            cols = []
    values = _table_values(report, [c for _, c in cols])
    out = {}
    for f in names:
        parts = [f"{n} {v}" for (n, _), v in zip(cols, values.get(f, ()), strict=False) if v == v]
        if not parts and (sp := infer_split(f)):
            parts = [f"split {sp}"]
        if parts:
            out[f] = ", ".join(parts)
    return out


def _notes(report: AuditReport, kind: str, items: list[Finding]) -> dict[str, str]:
    """What makes a finding visible, per file: the labels of a label conflict, the split of a leaked image, the
    channel difference of an image of the minority channel count."""
    names = {x for f in items for x in f.files}
    if kind == "label_conflict":
        return _label_notes(report, names)
    if kind == "leakage":
        return _split_notes(report, names)
    if kind == "mixed_channels":
        index = {f: k for k, f in enumerate(report.files)}
        out = {}
        for f in names:
            diff = report.records[index[f]].get("chan_diff") if f in index else None
            if diff:
                out[f] = f"diff {diff[0]:.0f}, mean {diff[1]:.1f}"
        return out
    return {}


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
    from medkit.audit.quality import intensity_ranges

    index = {f: k for k, f in enumerate(report.files)}
    ranges = intensity_ranges(report.files, report.records)[0]
    written = []
    for kind, items in _by_kind(report, index).items():
        t = _Tiles(root=report.root, records=report.records, index=index, size=size, colour=kind == "mixed_channels")
        t.ranges = ranges
        t.notes = _notes(report, kind, items)
        # A cluster sheet shows one row per cluster; mixed_channels is one finding of many unrelated images.
        multi = kind != "mixed_channels" and any(len(f.files) > 1 for f in items)
        rows = _cluster_rows(t, items, max_items) if multi else _grid_rows(t, items, max_items)
        if not rows:
            continue
        path = out / f"sheet_{kind}.png"
        if _write_png(path, _stack(rows)):
            written.append(path)
    return written
