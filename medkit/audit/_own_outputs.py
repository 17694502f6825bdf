"""What an audit must not read as data: the ``--out`` folder when it lies inside the data folder, and the files
medkit itself wrote there on an earlier run (contact sheets, run pictures).

A contact sheet audited as an image is "low information" and a near duplicate of every other sheet; a dataset with
an audit folder inside it would report itself, and the next audit would report the reports.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

__all__ = ["AUDIT_MARKERS", "RUN_MARKERS", "own_output_dirs", "drop_own_outputs"]

#: Files that together mark a folder as a `medkit audit --out` folder.
AUDIT_MARKERS = ("findings.csv", "duplicates.csv")
#: Files that together mark a folder as a `medkit train` run directory (its pictures are not data).
RUN_MARKERS = ("run.json", "metrics.csv")


def _inside(path: Path, root: Path) -> Path | None:
    """``path`` relative to ``root`` when it lies inside it (after resolving links), else None."""
    try:
        return path.resolve().relative_to(root.resolve())
    except (ValueError, OSError):
        return None


def own_output_dirs(root: Path, names: Sequence[str], out: str | os.PathLike[str] | None = None) -> list[str]:
    """Folders under ``root`` (relative POSIX paths, ``""`` for ``root`` itself) that hold medkit outputs.

    Args:
        root: The data folder.
        names: The image paths found under it (relative POSIX paths).
        out: The ``--out`` folder of this run, when given.

    Returns:
        The ``--out`` folder when inside ``root``, and every folder holding an image that also holds all of
        `AUDIT_MARKERS` or all of `RUN_MARKERS`.
    """
    dirs: set[str] = set()
    if out is not None:
        rel = _inside(Path(out), root)
        if rel is not None:
            dirs.add(rel.as_posix() if rel.parts else "")
    for d in {os.path.dirname(n) for n in names}:
        folder = root / d
        if all((folder / m).is_file() for m in AUDIT_MARKERS) or all((folder / m).is_file() for m in RUN_MARKERS):
            dirs.add(d)
    return sorted(dirs)


def drop_own_outputs(
    root: Path, names: Sequence[str], out: str | os.PathLike[str] | None = None
) -> tuple[list[str], list[str]]:
    """``names`` without the files in medkit's own output folders (`own_output_dirs`).

    Returns:
        ``(kept, skipped_dirs)``: the names to audit and the folders left out (relative POSIX paths).
    """
    dirs = own_output_dirs(root, names, out)
    if not dirs:
        return list(names), []
    if "" in dirs and out is not None:
        return [], dirs  # --out is the data folder itself: refused by the caller
    prefixes = tuple(d + "/" for d in dirs if d)
    root_files = "" in dirs  # an audit folder at the top: only its own files, not the sub-folders
    kept = [n for n in names if not n.startswith(prefixes) and not (root_files and "/" not in n)]
    return kept, dirs


def own_outputs_left_out(root: Path, names: Sequence[str], out: str | os.PathLike[str] | None = None) -> list[str]:
    """`drop_own_outputs` for `run_audit`: the names to audit, with a note on what was left out.

    Raises:
        UsageError: When ``out`` is the data folder itself (the outputs would mix with the images).
    """
    from medkit.console import info
    from medkit.errors import UsageError

    kept, dirs = drop_own_outputs(root, names, out)
    if "" in dirs and out is not None:
        raise UsageError(
            f"--out {out} is the data folder {root}: the audit's CSVs and contact sheets would be written among the "
            "images and audited next time",
            hint="pass an --out folder outside the data, e.g. --out audit-out",
        )
    if dirs:
        shown = ", ".join(d or "." for d in dirs[:3]) + (" ..." if len(dirs) > 3 else "")
        info(f"not audited: {len(names) - len(kept)} files in medkit's own output folders under {root} ({shown})")
    return kept
