"""`medkit audit`: find what is wrong with an image folder and its label table before training on it.

The audit reads every image once in a process pool (`scanning`; `_scan` is the worker's side and returns a small
summary per file, never the pixels), then works on the summaries alone, one module per family of checks:

- `quality`: blank / near-constant (on the file's real bit depth; CT slices of air or padding), dark and
  low-information images; odd sizes and aspect ratios, mixed channel counts;
- `scanning`: unreadable files (zero-byte, truncated, DICOM without pixel data, unsupported compression);
- `duplicates`: exact duplicates (same pixels whatever the format) and near duplicates (`phash`: perceptual hash
  within a Hamming threshold, no all-pairs comparison), grouped into clusters;
- `labels`: with a label table, missing files, files without a row, duplicate ids, missing and non-binary labels,
  per-label prevalence and pos_weight;
- `leakage`: a patient or a duplicate cluster in more than one split or fold (from columns, or from
  train/valid/test folder names), label conflicts inside duplicate clusters;
- `dicom_checks`: the 12-bit RescaleIntercept defect, MONOCHROME1, window tags, BitsStored against the pixel range,
  slice spacing and missing slices per series, mixed modalities.

`files` lists the images (MedMNIST .npz archives image by image), `run.run_audit` puts it together into an
`AuditReport` (`report`), and `outputs.write_outputs` writes findings.csv, duplicates.csv, the cleaned label table
and one contact sheet per finding kind (`sheets`). Input files are only ever read.
"""

from __future__ import annotations

from medkit.audit.files import ARCHIVE_SPLITS, SPLIT_FOLDERS, infer_split, list_images
from medkit.audit.outputs import clean_table, write_outputs
from medkit.audit.quality import PROJECTION_MODALITIES
from medkit.audit.report import DEFAULT_FAIL_ON, KINDS, AuditReport, Finding, Thresholds, parse_kinds
from medkit.audit.run import run_audit
from medkit.audit.scanning import scan

__all__ = [
    "KINDS",
    "DEFAULT_FAIL_ON",
    "PROJECTION_MODALITIES",
    "SPLIT_FOLDERS",
    "ARCHIVE_SPLITS",
    "Finding",
    "AuditReport",
    "Thresholds",
    "list_images",
    "infer_split",
    "parse_kinds",
    "scan",
    "run_audit",
    "write_outputs",
    "clean_table",
]
