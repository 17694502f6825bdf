"""What an audit finds: the finding kinds, one `Finding`, the `AuditReport` and the `Thresholds` behind them."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medkit._names import escape_name, escape_text
from medkit.errors import UsageError, did_you_mean

if TYPE_CHECKING:
    import numpy as np

__all__ = [
    "KINDS",
    "DEFAULT_FAIL_ON",
    "Finding",
    "AuditReport",
    "Thresholds",
    "parse_kinds",
    "sort_findings",
]

#: Every finding kind: (severity, what it means). Severity: error (training on it gives wrong results),
#: warning (look at it), info (worth knowing).
KINDS: dict[str, tuple[str, str]] = {
    "no_images": ("error", "the folder holds no image file (nothing was audited)"),
    "unreadable": ("error", "file cannot be read as an image (empty, truncated, no pixel data, no decoder)"),
    "undecodable_name": ("warning", "a file name that is not valid UTF-8 (written escaped, e.g. caf\\xe9.png)"),
    "blank": ("warning", "constant or near-constant image on its real bit depth (CT: air or padding only)"),
    "dark": ("warning", "99th percentile below a third of the intensity range"),
    "low_information": ("info", "very low entropy or variance"),
    "exact_duplicate": ("warning", "same pixel values as another file"),
    "near_duplicate": ("warning", "perceptual hash within the Hamming threshold of another file"),
    "label_conflict": ("error", "members of one duplicate cluster carry different labels"),
    "leakage": ("error", "a patient or a duplicate cluster in more than one split or fold"),
    "missing_file": ("error", "a table row whose image file does not exist"),
    "ambiguous_file": ("error", "a table row whose id matches two or more files by the same join rule"),
    "unlabeled_file": ("info", "an image file without a table row"),
    "duplicate_id": ("error", "the same image listed in more than one row, with the same labels"),
    "duplicate_id_conflict": ("error", "the same image listed in more than one row, with different labels"),
    "missing_label": ("warning", "a row with an empty or NaN label"),
    "non_binary_label": ("warning", "a value other than 0/1 in a binary label column"),
    "label_imbalance": ("info", "a label with very few positives (or negatives)"),
    "dicom_rescale_12bit": ("warning", "12-bit RescaleIntercept defect (air wraps round to bone)"),
    "dicom_monochrome1": ("info", "MONOCHROME1: low values are white (medkit's reader inverts it)"),
    "dicom_window": ("info", "missing, multi-valued or implausible WindowCenter/WindowWidth"),
    "dicom_bits_stored": ("warning", "pixel values outside what BitsStored can hold"),
    "dicom_slice_spacing": ("warning", "uneven or repeated slice positions in a series"),
    "dicom_missing_slices": ("warning", "gaps in a series (positions or instance numbers)"),
    "dicom_mixed_modality": ("info", "more than one modality in the data"),
    "odd_size": ("warning", "image much smaller or larger than the rest"),
    "odd_aspect": ("info", "aspect ratio far from the rest"),
    "mixed_channels": ("warning", "colour and grey (or alpha) images mixed"),
}
#: The kinds that make `medkit audit` exit 1 unless ``--fail-on`` says otherwise.
DEFAULT_FAIL_ON: tuple[str, ...] = (
    "no_images",
    "unreadable",
    "label_conflict",
    "leakage",
    "missing_file",
    "ambiguous_file",
    "duplicate_id",
    "duplicate_id_conflict",
)


@dataclass(frozen=True)
class Thresholds:
    """The numbers behind the intensity, duplicate and geometry findings.

    Attributes:
        near: Largest pHash Hamming distance (of 64 bits) for a near-duplicate candidate.
        near_corr: A candidate is a near duplicate when the correlation of the two 16x16 thumbnails is at least
            this (resized and re-compressed copies score above 0.995; follow-up X-rays of one patient below 0.99).
        blank_std: Near-constant when std / intensity range is below this.
        blank_mode: Near-constant when this share of the pixels has one value.
        ct_tissue: CT slice is blank when less than this share of pixels is above -500 HU.
        dark: Dark when the 99th percentile is below this share of the range (cleanvision's default, 0.32).
        low_entropy: Low information below this many bits (256 bins over the image's own range).
        low_std: Low information when std / range is below this.
        size_factor: Odd size when the short side is this many times smaller or larger than the median.
        aspect_factor: Odd aspect when the aspect ratio is this many times off the median.
        imbalance: pos_weight (negatives / positives) above which a label is reported as imbalanced.
    """

    near: int = 6
    near_corr: float = 0.99
    blank_std: float = 0.004
    blank_mode: float = 0.995
    ct_tissue: float = 0.002
    dark: float = 0.32
    low_entropy: float = 2.0
    low_std: float = 0.02
    size_factor: float = 4.0
    aspect_factor: float = 1.5
    imbalance: float = 50.0


@dataclass
class Finding:
    """One problem: its kind, severity, the files (or table ids) involved and a sentence of detail."""

    kind: str
    files: tuple[str, ...]
    detail: str
    severity: str = ""

    def __post_init__(self) -> None:
        if not self.severity:
            self.severity = KINDS[self.kind][0]


@dataclass
class AuditReport:
    """Everything the audit found, plus what the outputs need.

    Attributes:
        root: The data folder (the parent folder when one file was audited).
        files: Audit names of the images (relative POSIX paths; ``<archive>/<split>/<index>`` inside archives).
        records: Per file, the scan's summary (`medkit.audit._scan.summarize_file`).
        findings: The findings, in `KINDS` order.
        cluster: Near-duplicate cluster per file.
        exact_cluster: Exact-duplicate cluster per file.
        label_stats: Per label column of the table: counts, prevalence and pos_weight.
        table: The label table (a DataFrame), if one was given.
        table_path: Where the table was read from.
        row_file: Per table row, the file it names (an entry of ``files``), or None.
        label_cols: The label columns checked (of the table, or of MedMNIST archives).
        image_col: The table's image column.
        split_source: Where splits and folds came from (a column, folder names), or None.
        thresholds: The thresholds the findings were judged with.
    """

    root: Path
    files: list[str]
    records: list[dict[str, Any]]
    findings: list[Finding]
    cluster: np.ndarray
    exact_cluster: np.ndarray
    label_stats: list[dict[str, Any]] = field(default_factory=list)
    table: Any = None
    table_path: Path | None = None
    row_file: list[str | None] = field(default_factory=list)
    label_cols: tuple[str, ...] = ()
    image_col: str | None = None
    split_source: str | None = None
    thresholds: Thresholds = field(default_factory=Thresholds)

    def counts(self) -> dict[str, int]:
        """Number of findings per kind (kinds with none left out), in `KINDS` order."""
        c = Counter(f.kind for f in self.findings)
        return {k: c[k] for k in KINDS if c[k]}

    def examples(self) -> dict[str, Finding]:
        """The first finding of each kind found (the one a summary shows)."""
        first: dict[str, Finding] = {}
        for f in self.findings:
            first.setdefault(f.kind, f)
        return first

    def failed(self, kinds: Iterable[str]) -> bool:
        """Whether any finding is of one of ``kinds``."""
        wanted = set(kinds)
        return any(f.kind in wanted for f in self.findings)

    def to_dict(self, fail_on: Sequence[str] = DEFAULT_FAIL_ON, max_findings: int | None = None) -> dict[str, Any]:
        """A JSON-ready summary.

        Args:
            fail_on: The kinds that count as a failure (``failed`` in the result).
            max_findings: Most findings listed (None: all).

        Returns:
            Counts, duplicate clusters, label statistics and the findings, as plain values (file names that are
            not valid UTF-8 escaped, `medkit._names.escape_name`).
        """
        n_ok = sum(1 for r in self.records if r.get("ok"))
        sizes = Counter(self.cluster.tolist()) if len(self.cluster) else Counter()
        exact = Counter(self.exact_cluster.tolist()) if len(self.exact_cluster) else Counter()
        findings = self.findings if max_findings is None else self.findings[:max_findings]
        return {
            "root": escape_name(str(self.root)),
            "files": len(self.files),
            "readable": n_ok,
            "table": str(self.table_path) if self.table_path else None,
            "image_column": self.image_col,
            "split_source": self.split_source,
            "duplicate_clusters": sum(1 for v in sizes.values() if v > 1),
            "exact_duplicate_clusters": sum(1 for v in exact.values() if v > 1),
            "counts": self.counts(),
            "fail_on": list(fail_on),
            "failed": self.failed(fail_on),
            "labels": self.label_stats,
            "findings": [
                asdict(f) | {"files": [escape_name(x) for x in f.files], "detail": escape_text(f.detail)}
                for f in findings
            ],
        }


def parse_kinds(spec: str | Sequence[str] | None, default: Sequence[str] = DEFAULT_FAIL_ON) -> tuple[str, ...]:
    """Turn ``"unreadable,leakage"`` (or ``all`` / ``none``) into finding kinds, rejecting unknown names.

    Args:
        spec: Comma-separated kinds (``-`` may stand for ``_``), a sequence of them, ``all``, ``none``, or None.
        default: The kinds when ``spec`` is None.

    Returns:
        The kinds, in the order given.

    Raises:
        UsageError: For a kind that does not exist (with the closest name as a suggestion).
    """
    if spec is None:
        return tuple(default)
    items = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
    if items == ["none"] or not items:
        return ()
    if items == ["all"]:
        return tuple(KINDS)
    kinds = []
    for item in items:
        name = item.replace("-", "_")
        if name not in KINDS:
            raise UsageError(
                f"unknown finding kind '{item}' in --fail-on{did_you_mean(name, KINDS)}",
                hint=f"kinds are: {', '.join(KINDS)}, or all / none",
            )
        kinds.append(name)
    return tuple(kinds)


def sort_findings(findings: list[Finding]) -> None:
    """Sort ``findings`` in place: by kind in `KINDS` order, then by first file (stable within a tie)."""
    order = {k: i for i, k in enumerate(KINDS)}
    findings.sort(key=lambda f: (order[f.kind], f.files[:1]))
