"""Which images an audit reads: files under a folder, MedMNIST archives image by image, splits from folder names.

An image inside a MedMNIST-style .npz archive gets the audit name ``<archive>/<split>/<index>``, so its split is
read from the name like a folder's (`infer_split`) and `archive_member` finds it again for a contact sheet.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medkit.errors import DataError

__all__ = [
    "SPLIT_FOLDERS",
    "ARCHIVE_SPLITS",
    "ScanPlan",
    "list_images",
    "infer_split",
    "folder_splits",
    "data_files",
    "expand_archives",
    "release_archives",
    "archive_member",
]

#: Folder names that say which split an image belongs to, and the split they name.
SPLIT_FOLDERS = {
    "train": "train",
    "training": "train",
    "valid": "valid",
    "val": "valid",
    "validation": "valid",
    "test": "test",
    "testing": "test",
}
#: The splits of a MedMNIST archive (arrays ``<split>_images`` and ``<split>_labels``).
ARCHIVE_SPLITS = ("train", "val", "test")

#: A scan item: a file path, or ``(archive path, array key, index)`` for one image of an archive.
ScanItem = str | tuple[str, str, int]


@dataclass
class ScanPlan:
    """What to scan: audit names, the matching scan items, and labels that came inside archives.

    Attributes:
        files: Audit names (relative POSIX paths, ``<archive>/<split>/<index>`` for archive images).
        items: Per name, what the scan reads: a path, or ``(archive path, key, index)``.
        labels: Labels of archive images by audit name (one value per column, None where a row is shorter).
        label_cols: Names of the archive label columns (``label``, or ``label_0``, ``label_1``, ...).
    """

    files: list[str] = field(default_factory=list)
    items: list[ScanItem] = field(default_factory=list)
    labels: dict[str, tuple[Any, ...]] = field(default_factory=dict)
    label_cols: tuple[str, ...] = ()


def list_images(root: str | os.PathLike[str]) -> list[str]:
    """Image files under ``root`` (recursively, hidden folders skipped) as sorted POSIX paths relative to it."""
    from medkit.data.table import IMAGE_SUFFIXES

    root = Path(root)
    suffixes = (*IMAGE_SUFFIXES, ".dic")
    found: list[str] = []
    for dirpath, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        rel_dir = Path(dirpath).relative_to(root)
        for name in files:
            if name.lower().endswith(suffixes) and not name.startswith("."):
                found.append((rel_dir / name).as_posix())
    return sorted(found)


def infer_split(rel: str) -> str | None:
    """train / valid / test from the first folder of a relative path named like one (``val`` -> ``valid``)."""
    for part in Path(rel).parts[:-1]:
        name = SPLIT_FOLDERS.get(part.lower())
        if name:
            return name
    return None


def folder_splits(files: Sequence[str]) -> dict[str, str]:
    """The split of every file whose path names one (`infer_split`); files without one are left out."""
    return {f: s for f in files if (s := infer_split(f))}


def data_files(data: str | os.PathLike[str]) -> tuple[Path, list[str]]:
    """The folder an audit works in and the images it reads: a folder's images, or one file.

    Args:
        data: A folder (scanned recursively) or one image or archive file.

    Returns:
        ``(root, names)``: the folder (the file's parent for one file) and image paths relative to it.

    Raises:
        DataError: When ``data`` does not exist.
    """
    target = Path(data)
    if target.is_dir():
        return target, list_images(target)
    if target.is_file():
        return target.parent, [target.name]
    raise DataError(
        f"data not found: {target}", hint="pass the folder that holds the images, or one image or .npz file"
    )


def _archive_arrays(path: str) -> dict[str, tuple[np.ndarray, np.ndarray | None]]:
    """``{split: (images, labels or None)}`` of a MedMNIST-style archive; empty for any other or unreadable .npz."""
    arrays: dict[str, tuple[np.ndarray, np.ndarray | None]] = {}
    try:
        with np.load(path, allow_pickle=False) as npz:
            for sp in ARCHIVE_SPLITS:
                if f"{sp}_images" in npz.files:
                    lab = npz[f"{sp}_labels"] if f"{sp}_labels" in npz.files else None
                    arrays[sp] = (npz[f"{sp}_images"], lab)
    except Exception:  # reported as unreadable when the file itself is scanned
        return {}
    return arrays


def _add_archive_split(
    plan: ScanPlan, rel: str, path: str, split: str, imgs: np.ndarray, lab: np.ndarray | None
) -> int:
    """Add one split of an archive to ``plan``, image by image; returns the width of its label rows (0: none)."""
    from medkit.audit._scan import _ARCHIVES

    _ARCHIVES[(path, f"{split}_images")] = imgs
    width = 0
    if lab is not None:
        # reshape(0, -1) cannot infer the width of an empty split: take it from the trailing dimensions.
        lab = lab.reshape(len(lab), int(np.prod(lab.shape[1:], dtype=np.int64)) if lab.ndim > 1 else 1)
        if len(lab) != len(imgs):
            lab = None  # the reader refuses such a file for training; here the images are still audited
        else:
            width = lab.shape[1]
    digits = len(str(max(len(imgs) - 1, 0)))
    for i in range(len(imgs)):
        name = f"{rel}/{split}/{i:0{digits}d}"
        plan.files.append(name)
        plan.items.append((path, f"{split}_images", i))
        if lab is not None:
            plan.labels[name] = tuple(v.item() for v in lab[i])
    return width


def expand_archives(root: Path, files: Sequence[str]) -> ScanPlan:
    """Audit names and scan items: files as they are, MedMNIST-style .npz archives as one item per image.

    An archive holding ``train_images`` / ``val_images`` / ``test_images`` (and their ``*_labels``) contributes
    an image named ``<archive>/<split>/<index>`` for each row, so its split is read from the name like a folder's
    and duplicates across splits are leakage; its labels become the images' labels (label conflicts). Any other
    .npz, or one that cannot be opened, stays a single file (read, or reported unreadable, like any image).
    The archive arrays stay loaded for the scan until `release_archives`.

    Args:
        root: The data folder.
        files: Image paths relative to ``root``.

    Returns:
        The `ScanPlan`.
    """
    plan = ScanPlan()
    width = 0
    for f in files:
        path = os.path.join(root, f)
        arrays = _archive_arrays(path) if f.lower().endswith(".npz") else {}
        if not arrays:
            plan.files.append(f)
            plan.items.append(path)
            continue
        for sp, (imgs, lab) in arrays.items():
            width = max(width, _add_archive_split(plan, f, path, sp, imgs, lab))
    plan.label_cols = ("label",) if width == 1 else tuple(f"label_{j}" for j in range(width))
    plan.labels = {k: v + (None,) * (width - len(v)) for k, v in plan.labels.items()}
    return plan


def release_archives() -> None:
    """Drop the archive arrays loaded for a scan (contact sheets load the ones they show again)."""
    from medkit.audit._scan import _ARCHIVES

    _ARCHIVES.clear()


def archive_member(root: Path, rel: str) -> tuple[str, str, int] | None:
    """``(archive path, key, index)`` of an audit name made by `expand_archives`, else None."""
    parts = rel.rsplit("/", 2)
    if len(parts) != 3 or not parts[0].lower().endswith(".npz") or parts[1] not in ARCHIVE_SPLITS:
        return None
    if not parts[2].isdigit() or not (root / parts[0]).is_file():
        return None
    return str(root / parts[0]), f"{parts[1]}_images", int(parts[2])
