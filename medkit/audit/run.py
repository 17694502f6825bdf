"""`run_audit`: list and scan the images once, then run every family of checks on the summaries alone."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from medkit.audit._own_outputs import own_outputs_left_out
from medkit.audit.dicom_checks import dicom_findings
from medkit.audit.duplicates import duplicate_clusters, duplicate_findings
from medkit.audit.files import data_files, expand_archives, folder_splits
from medkit.audit.labels import TableAudit, audit_table
from medkit.audit.leakage import cluster_findings, folder_partitions, table_partitions
from medkit.audit.quality import geometry_findings, intensity_findings
from medkit.audit.report import AuditReport, Finding, Thresholds, sort_findings
from medkit.audit.scanning import scan_plan, unreadable_findings

__all__ = ["run_audit"]


def _image_report(
    root: Path, files: list[str], records: list[dict[str, Any]], th: Thresholds, near_align: float | None = None
) -> AuditReport:
    """The report of the checks that need the images alone: reading, intensity, duplicates, DICOM, geometry."""
    findings: list[Finding] = unreadable_findings(root, files, records)
    findings += intensity_findings(files, records, th)[0]
    near, exact = duplicate_clusters(records, th.near, th.near_corr, align=near_align)
    findings += duplicate_findings(files, records, near, exact)
    findings += dicom_findings(files, records)
    findings += geometry_findings(files, records, th)
    return AuditReport(
        root=root, files=files, records=records, findings=findings, cluster=near, exact_cluster=exact, thresholds=th
    )


def _add_table(report: AuditReport, ta: TableAudit) -> None:
    report.findings += ta.findings
    report.table, report.table_path, report.row_file = ta.table, ta.path, ta.row_file
    report.label_cols, report.image_col, report.label_stats = ta.label_cols, ta.image_col, ta.label_stats


def run_audit(
    root: str | os.PathLike[str],
    labels: str | os.PathLike[str] | None = None,
    group: str | None = None,
    split: str | None = None,
    image_col: str | None = None,
    label_cols: Sequence[str] | None = None,
    workers: int | None = None,
    thresholds: Thresholds | None = None,
    on_start: Callable[[int], None] | None = None,
    on_progress: Callable[[int], None] | None = None,
    exclude: str | os.PathLike[str] | None = None,
    near_align: float | None = None,
) -> AuditReport:
    """Audit an image folder (and its label table).

    Args:
        root: The data folder, scanned recursively, or one image or .npz file.
        labels: Optional label table (CSV/TSV/parquet) with one row per image.
        group: Patient column (default: detected, e.g. ``patient_id``).
        split: Split column (default: detected ``split``; else train/valid/test folder names).
        image_col: Image path/id column (default: the id column whose values match the files best).
        label_cols: Label columns (default: numeric columns that play no other role).
        workers: Worker processes (None: every usable core; 0: in this process).
        thresholds: Finding thresholds.
        on_start: Called with the number of files before the scan (for a progress bar).
        on_progress: Called with the number of files finished since the last call.
        exclude: The ``--out`` folder: left out of the scan when inside ``root`` (refused when it is ``root``);
            folders holding earlier medkit outputs are always left out.
        near_align: Smallest correlation after alignment for a crop or shift to be a near duplicate
            (`medkit.audit.align`; None: its default, 0: no alignment stage).

    Returns:
        The `AuditReport`, its findings in `KINDS` order.

    Raises:
        DataError: When ``root`` does not exist, or the table cannot be read or lacks a named column (raised
            before any image is read).
    """
    th = thresholds or Thresholds()
    data_root, names = data_files(root)
    names = own_outputs_left_out(data_root, names, exclude)
    plan = expand_archives(data_root, names)
    # The table needs the file names only: a mistyped column fails before any image is read.
    ta = None
    if labels is not None:
        ta = audit_table(
            labels,
            data_root,
            plan.files,
            image_col=image_col,
            group=group,
            split=split,
            label_cols=label_cols,
            thresholds=th,
        )
    if on_start:
        on_start(len(plan.files))
    records = scan_plan(plan, workers=workers, on_progress=on_progress)
    report = _image_report(data_root, plan.files, records, th, near_align)
    report.findings += _listing_findings(data_root, plan.files)
    folder_split = folder_splits(plan.files)
    if ta is not None:
        _add_table(report, ta)
        parts = table_partitions(ta, folder_split)
        file_labels = ta.labels_by_file()
    else:
        parts = folder_partitions(folder_split)
        file_labels = dict(plan.labels)
        if plan.labels:
            report.label_cols = plan.label_cols
    report.findings += parts.findings
    report.split_source = parts.source
    report.findings += cluster_findings(
        report.files, report.cluster, report.exact_cluster, file_labels, report.label_cols, parts.by_name
    )
    sort_findings(report.findings)
    return report


def _listing_findings(root: Path, files: list[str]) -> list[Finding]:
    """An empty folder, and file names that are not valid UTF-8 (audited, and written escaped)."""
    from medkit._names import escape_name, is_undecodable
    from medkit.data.table import IMAGE_SUFFIXES

    if not files:
        return [
            Finding(
                "no_images",
                (),
                f"no image file under {escape_name(str(root))} (looked for {', '.join(IMAGE_SUFFIXES)}, .dic)",
            )
        ]
    return [
        Finding(
            "undecodable_name",
            (f,),
            "the file name is not valid UTF-8: findings and tables write its other bytes as \\xNN",
        )
        for f in files
        if is_undecodable(f)
    ]
