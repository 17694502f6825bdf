"""What `medkit audit --out` writes: findings.csv, duplicates.csv, the cleaned label table (and the rows it
removed, with the reason) and the contact sheets.

Input files are only ever read, and an ``--out`` whose tables would replace an input is refused. File names that
are not valid UTF-8 are written escaped (`medkit._names.escape_name`), so every output is valid UTF-8.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medkit._names import escape_name, escape_text, unescape_name
from medkit.audit.files import release_archives
from medkit.audit.report import AuditReport
from medkit.data.table import id_text

__all__ = [
    "OUTPUT_TABLES",
    "write_outputs",
    "planned_outputs",
    "clean_table",
    "removed_rows",
    "findings_frame",
    "duplicates_frame",
    "encode_files",
    "decode_files",
]


#: The tables `write_outputs` writes into ``--out`` (contact sheets ``sheet_<kind>.png`` come on top).
OUTPUT_TABLES: tuple[str, ...] = ("findings.csv", "duplicates.csv", "labels_clean.csv", "labels_removed.csv")


def planned_outputs(out_dir: str | os.PathLike[str]) -> list[Path]:
    """The files an audit may write into ``out_dir`` (its tables), checked against its inputs before the scan."""
    return [Path(out_dir) / name for name in OUTPUT_TABLES]


def encode_files(files: Sequence[str]) -> str:
    """The ``files`` cell of findings.csv: a JSON list of names, each escaped (`medkit._names.escape_name`).

    A JSON list round-trips names holding ``;``, ``,`` or quotes; `decode_files` reads it back.
    """
    return json.dumps([escape_name(f) for f in files], ensure_ascii=False)


def decode_files(cell: str) -> list[str]:
    """The file names of a findings.csv ``files`` cell (inverse of `encode_files`), as names `open` accepts."""
    return [unescape_name(f) for f in json.loads(cell)]


def findings_frame(report: AuditReport) -> Any:
    """findings.csv as a DataFrame: one row per finding (kind, severity, files as a JSON list, detail)."""
    import pandas as pd

    rows = [
        {"kind": f.kind, "severity": f.severity, "files": encode_files(f.files), "detail": escape_text(f.detail)}
        for f in report.findings
    ]
    return pd.DataFrame(rows, columns=["kind", "severity", "files", "detail"])


def duplicates_frame(report: AuditReport) -> Any:
    """duplicates.csv as a DataFrame: per image its near cluster, the cluster's size and its exact cluster.

    With a label table, ``audit_reason`` says why an image has no row in labels_clean.csv (``exact_duplicate``,
    ``blank``, ...; empty when it has one): `medkit split --duplicates` does not ask for those images, which the
    clean table leaves out on purpose.
    """
    import pandas as pd

    sizes = Counter(report.cluster.tolist())
    frame = pd.DataFrame(
        {
            "image": [escape_name(f) for f in report.files],
            "cluster": report.cluster.tolist(),
            "cluster_size": [sizes[c] for c in report.cluster.tolist()],
            "exact_cluster": report.exact_cluster.tolist(),
        }
    )
    if report.table is not None and report.row_file is not None:
        _, removed = _row_reasons(report)
        kept = {rf for rf, r in zip(report.row_file, removed, strict=True) if rf is not None and r is None}
        reason = {rf: r for rf, r in zip(report.row_file, removed, strict=True) if rf is not None and r is not None}
        frame["audit_reason"] = ["" if f in kept else reason.get(f, "") for f in report.files]
    return frame


def _row_reasons(report: AuditReport) -> tuple[list[str | None], list[str | None]]:
    """Per table row: why it is flagged but kept (a join problem), and why it is removed from the clean table."""
    kind_of_row = {}
    for f in report.findings:
        if f.kind in ("missing_file", "ambiguous_file") and f.files:
            kind_of_row.setdefault(f.files[0], f.kind)
    drop_files = {f.files[0]: f.kind for f in report.findings if f.kind in ("unreadable", "blank") and f.files}
    conflict_files = {f.files[0] for f in report.findings if f.kind == "duplicate_id_conflict" and f.files}
    index = {f: k for k, f in enumerate(report.files)}
    keep_issue: list[str | None] = []
    removed: list[str | None] = []
    seen_clusters: set[int] = set()
    seen_files: set[str] = set()
    for k, rf in enumerate(report.row_file):
        issue = reason = None
        if rf is None or rf not in index:
            # A join problem never loses a row: it stays, saying why, for a person to fix.
            rid = id_text(report.table[report.image_col].iloc[k]) if report.image_col else None
            issue = kind_of_row.get(rid or "", "missing_file")
        elif rf in drop_files:
            reason = drop_files[rf]
        elif rf in conflict_files:
            reason = "duplicate_id_conflict"
        elif rf in seen_files:
            reason = "duplicate_id"
        elif (cid := int(report.exact_cluster[index[rf]])) in seen_clusters:
            reason = "exact_duplicate"
        else:
            seen_clusters.add(cid)
            seen_files.add(rf)
        keep_issue.append(issue)
        removed.append(reason)
    return keep_issue, removed


def clean_table(report: AuditReport) -> Any:
    """The label table without rows of unreadable or blank files, duplicate ids and exact duplicates.

    Within an exact-duplicate cluster, and among rows naming one image with the same labels, the first row is
    kept; rows naming one image with different labels are all removed (a person must settle them). A row whose
    file cannot be found (``missing_file``, ``ambiguous_file``) is never dropped: it stays, with the finding kind
    in an ``audit_issue`` column (added only when some row has one). `removed_rows` gives what was removed.

    Args:
        report: An audit run with a label table.

    Returns:
        The kept rows (a DataFrame), re-indexed.
    """
    issue, removed = _row_reasons(report)
    keep = np.array([r is None for r in removed], dtype=bool)
    out = report.table.loc[keep].reset_index(drop=True)
    kept_issue = [i for i, k in zip(issue, keep, strict=True) if k]
    if any(kept_issue):
        out = out.copy()
        out["audit_issue"] = [i or "" for i in kept_issue]
    return out


def removed_rows(report: AuditReport) -> Any:
    """The rows `clean_table` removes, with an ``audit_reason`` column (unreadable, blank, duplicate_id, ...)."""
    _, removed = _row_reasons(report)
    drop = np.array([r is not None for r in removed], dtype=bool)
    out = report.table.loc[drop].reset_index(drop=True).copy()
    out["audit_reason"] = [r for r in removed if r is not None]
    return out


def write_outputs(report: AuditReport, out_dir: str | os.PathLike[str], max_sheet: int = 48) -> list[Path]:
    """Write findings.csv, duplicates.csv, the cleaned label table and a contact sheet per finding kind.

    Args:
        report: The audit.
        out_dir: Output folder (created). Input files are never touched.
        max_sheet: Most tiles (or duplicate rows) on one contact sheet.

    Returns:
        The written paths.
    """
    from medkit._io import refuse_overwrite_inputs, write_csv
    from medkit.audit.sheets import contact_sheets
    from medkit.data.table import save_table

    out = Path(out_dir)
    refuse_overwrite_inputs(planned_outputs(out), [report.table_path])
    out.mkdir(parents=True, exist_ok=True)
    written = [
        write_csv(out / "findings.csv", findings_frame(report)),
        write_csv(out / "duplicates.csv", duplicates_frame(report)),
    ]
    if report.table is not None:
        written.append(save_table(clean_table(report), out / "labels_clean.csv"))
        written.append(save_table(removed_rows(report), out / "labels_removed.csv"))
    try:
        written += contact_sheets(report, out, max_sheet)
    finally:
        release_archives()
    return written
