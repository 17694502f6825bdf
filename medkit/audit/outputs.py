"""What `medkit audit --out` writes: findings.csv, duplicates.csv, the cleaned label table and the contact sheets.

Input files are only ever read.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from medkit.audit.files import release_archives
from medkit.audit.report import AuditReport

__all__ = ["write_outputs", "clean_table", "findings_frame", "duplicates_frame"]


def findings_frame(report: AuditReport) -> Any:
    """findings.csv as a DataFrame: one row per finding (kind, severity, files joined by ``;``, detail)."""
    import pandas as pd

    rows = [
        {"kind": f.kind, "severity": f.severity, "files": ";".join(f.files), "detail": f.detail}
        for f in report.findings
    ]
    return pd.DataFrame(rows, columns=["kind", "severity", "files", "detail"])


def duplicates_frame(report: AuditReport) -> Any:
    """duplicates.csv as a DataFrame: per image its near cluster, the cluster's size and its exact cluster."""
    import pandas as pd

    sizes = Counter(report.cluster.tolist())
    return pd.DataFrame(
        {
            "image": report.files,
            "cluster": report.cluster.tolist(),
            "cluster_size": [sizes[c] for c in report.cluster.tolist()],
            "exact_cluster": report.exact_cluster.tolist(),
        }
    )


def clean_table(report: AuditReport) -> Any:
    """The label table without rows of missing, unreadable or blank files, one row per exact-duplicate cluster.

    Within an exact-duplicate cluster the first file in path order is kept. Label conflicts are left for a
    person to settle (findings.csv lists them).

    Args:
        report: An audit run with a label table.

    Returns:
        The kept rows (a DataFrame), re-indexed.
    """
    drop_files = {f.files[0] for f in report.findings if f.kind in ("unreadable", "blank")}
    index = {f: k for k, f in enumerate(report.files)}
    keep_rows = []
    seen_clusters: set[int] = set()
    seen_files: set[str] = set()
    for rf in report.row_file:
        if rf is None or rf in drop_files or rf not in index or rf in seen_files:
            keep_rows.append(False)
            continue
        cid = int(report.exact_cluster[index[rf]])
        if cid in seen_clusters:
            keep_rows.append(False)
            continue
        seen_clusters.add(cid)
        seen_files.add(rf)
        keep_rows.append(True)
    return report.table.loc[np.asarray(keep_rows, dtype=bool)].reset_index(drop=True)


def write_outputs(report: AuditReport, out_dir: str | os.PathLike[str], max_sheet: int = 48) -> list[Path]:
    """Write findings.csv, duplicates.csv, the cleaned label table and a contact sheet per finding kind.

    Args:
        report: The audit.
        out_dir: Output folder (created). Input files are never touched.
        max_sheet: Most tiles (or duplicate rows) on one contact sheet.

    Returns:
        The written paths.
    """
    from medkit._io import write_csv
    from medkit.audit.sheets import contact_sheets
    from medkit.data.table import save_table

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = [
        write_csv(out / "findings.csv", findings_frame(report)),
        write_csv(out / "duplicates.csv", duplicates_frame(report)),
    ]
    if report.table is not None:
        written.append(save_table(clean_table(report), out / "labels_clean.csv"))
    try:
        written += contact_sheets(report, out, max_sheet)
    finally:
        release_archives()
    return written
