"""`medkit audit`: find what is wrong with an image folder and its label table before training on it.

The audit reads every image once in a process pool (`medkit.audit._scan.summarize_file` returns a small
summary per file, never the pixels), then works on the summaries alone:

- intensity: blank / near-constant images (on the file's real bit depth; CT slices of air or padding), dark and
  low-information images;
- unreadable files (zero-byte, truncated, DICOM without pixel data, unsupported compression);
- exact duplicates (same pixel values whatever the format) and near duplicates (perceptual hash within a
  Hamming threshold, multi-index hashing, no all-pairs comparison), grouped into clusters;
- with a label table: label conflicts inside duplicate clusters, missing files, files without a row,
  duplicate ids, missing and non-binary labels, per-label prevalence and pos_weight;
- leakage: a patient in more than one split or fold, duplicate clusters across splits (split from a column or
  from train/valid/test folder names);
- DICOM headers: the 12-bit RescaleIntercept defect, MONOCHROME1, window tags, BitsStored against the pixel range,
  slice spacing and missing slices per series, mixed modalities;
- geometry: odd sizes and aspect ratios, mixed channel counts (grey stored as RGB counts as grey).

`run_audit` returns an `AuditReport`; `write_outputs` writes findings.csv, duplicates.csv, the cleaned label
table and one contact sheet per finding kind. Input files are only ever read.
"""

from __future__ import annotations

import difflib
import math
import os
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medkit.errors import DataError, UsageError

__all__ = [
    "KINDS",
    "DEFAULT_FAIL_ON",
    "Finding",
    "AuditReport",
    "Thresholds",
    "list_images",
    "infer_split",
    "parse_kinds",
    "run_audit",
    "write_outputs",
]

#: Every finding kind: (severity, what it means). Severity: error (training on it gives wrong results),
#: warning (look at it), info (worth knowing).
KINDS: dict[str, tuple[str, str]] = {
    "unreadable": ("error", "file cannot be read as an image (empty, truncated, no pixel data, no decoder)"),
    "blank": ("warning", "constant or near-constant image on its real bit depth (CT: air or padding only)"),
    "dark": ("warning", "99th percentile below a third of the intensity range"),
    "low_information": ("info", "very low entropy or variance"),
    "exact_duplicate": ("warning", "same pixel values as another file"),
    "near_duplicate": ("warning", "perceptual hash within the Hamming threshold of another file"),
    "label_conflict": ("error", "members of one duplicate cluster carry different labels"),
    "leakage": ("error", "a patient or a duplicate cluster in more than one split or fold"),
    "missing_file": ("error", "a table row whose image file does not exist"),
    "unlabeled_file": ("info", "an image file without a table row"),
    "duplicate_id": ("error", "the same image listed in more than one row"),
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
DEFAULT_FAIL_ON: tuple[str, ...] = ("unreadable", "label_conflict", "leakage")
#: DICOM modalities whose stored values have an absolute meaning (projection radiography): judged on BitsStored.
PROJECTION_MODALITIES = {"CR", "DX", "MG", "RF", "XA", "IO", "PX", "RG", "DR", "OT", ""}
SPLIT_FOLDERS = {
    "train": "train",
    "training": "train",
    "valid": "valid",
    "val": "valid",
    "validation": "valid",
    "test": "test",
    "testing": "test",
}


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
    """Everything the audit found, plus what the outputs need."""

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

    def failed(self, kinds: Iterable[str]) -> bool:
        """Whether any finding is of one of ``kinds``."""
        wanted = set(kinds)
        return any(f.kind in wanted for f in self.findings)

    def to_dict(self, fail_on: Sequence[str] = DEFAULT_FAIL_ON, max_findings: int | None = None) -> dict[str, Any]:
        """A JSON-ready summary (findings capped at ``max_findings`` when given)."""
        n_ok = sum(1 for r in self.records if r.get("ok"))
        sizes = Counter(self.cluster.tolist()) if len(self.cluster) else Counter()
        exact = Counter(self.exact_cluster.tolist()) if len(self.exact_cluster) else Counter()
        findings = self.findings if max_findings is None else self.findings[:max_findings]
        return {
            "root": str(self.root),
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
            "findings": [asdict(f) | {"files": list(f.files)} for f in findings],
        }


def parse_kinds(spec: str | Sequence[str] | None, default: Sequence[str] = DEFAULT_FAIL_ON) -> tuple[str, ...]:
    """Turn ``"unreadable,leakage"`` (or ``all`` / ``none``) into finding kinds, rejecting unknown names.

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
            close = difflib.get_close_matches(name, list(KINDS), n=1)
            hint = f"did you mean '{close[0]}'?" if close else f"kinds are: {', '.join(KINDS)}, or all / none"
            raise UsageError(f"unknown finding kind '{item}' in --fail-on", hint=hint)
        kinds.append(name)
    return tuple(kinds)


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


# ---------------------------------------------------------------------------------------------- scanning
ARCHIVE_SPLITS = ("train", "val", "test")


def _expand_archives(
    root: Path, files: Sequence[str]
) -> tuple[list[str], list[str | tuple[str, str, int]], dict[str, tuple[Any, ...]], tuple[str, ...]]:
    """Audit names and scan items: files as they are, MedMNIST-style .npz archives as one item per image.

    An archive holding ``train_images`` / ``val_images`` / ``test_images`` (and their ``*_labels``) contributes
    an image named ``<archive>/<split>/<index>`` for each row, so its split is read from the name like a folder's
    and duplicates across splits are leakage; its labels become the images' labels (label conflicts). Any other
    .npz, or one that cannot be opened, stays a single file (read, or reported unreadable, like any image).

    Returns:
        ``(names, items, labels, label_columns)``.
    """
    from medkit.audit._scan import _ARCHIVES

    names: list[str] = []
    items: list[str | tuple[str, str, int]] = []
    labels: dict[str, tuple[Any, ...]] = {}
    width = 0
    for f in files:
        path = os.path.join(root, f)
        arrays: dict[str, tuple[np.ndarray, np.ndarray | None]] = {}
        if f.lower().endswith(".npz"):
            try:
                with np.load(path, allow_pickle=False) as npz:
                    for sp in ARCHIVE_SPLITS:
                        if f"{sp}_images" in npz.files:
                            lab = npz[f"{sp}_labels"] if f"{sp}_labels" in npz.files else None
                            arrays[sp] = (npz[f"{sp}_images"], lab)
            except Exception:  # reported as unreadable when the file itself is scanned
                arrays = {}
        if not arrays:
            names.append(f)
            items.append(path)
            continue
        for sp, (imgs, lab) in arrays.items():
            _ARCHIVES[(path, f"{sp}_images")] = imgs
            if lab is not None:
                lab = lab.reshape(len(lab), -1)
                if len(lab) != len(imgs):
                    lab = None  # the reader refuses such a file for training; here the images are still audited
                else:
                    width = max(width, lab.shape[1])
            digits = len(str(max(len(imgs) - 1, 0)))
            for i in range(len(imgs)):
                name = f"{f}/{sp}/{i:0{digits}d}"
                names.append(name)
                items.append((path, f"{sp}_images", i))
                if lab is not None:
                    labels[name] = tuple(v.item() for v in lab[i])
    cols = ("label",) if width == 1 else tuple(f"label_{j}" for j in range(width))
    labels = {k: v + (None,) * (width - len(v)) for k, v in labels.items()}
    return names, items, labels, cols


def _release_archives() -> None:
    """Drop the archive arrays loaded for a scan (contact sheets load the ones they show again)."""
    from medkit.audit._scan import _ARCHIVES

    _ARCHIVES.clear()


def _archive_member(root: Path, rel: str) -> tuple[str, str, int] | None:
    """``(archive path, key, index)`` of an audit name made by `_expand_archives`, else None."""
    parts = rel.rsplit("/", 2)
    if len(parts) != 3 or not parts[0].lower().endswith(".npz") or parts[1] not in ARCHIVE_SPLITS:
        return None
    if not parts[2].isdigit() or not (root / parts[0]).is_file():
        return None
    return str(root / parts[0]), f"{parts[1]}_images", int(parts[2])


def scan(
    paths: Sequence[str | os.PathLike[str] | tuple[str, str, int]],
    workers: int | None = None,
    on_progress: Callable[[int], None] | None = None,
    chunk: int | None = None,
) -> list[dict[str, Any]]:
    """Summaries of ``paths`` in order, computed by ``workers`` processes (0: in this process).

    An item ``(archive, key, index)`` is image ``index`` of array ``key`` in a .npz archive.
    """
    from medkit.audit._scan import init_worker, summarize_chunk

    strs = [p if isinstance(p, tuple) else os.fspath(p) for p in paths]
    n_workers = (os.cpu_count() or 1) if workers is None else workers
    if n_workers <= 1 or len(strs) < 8:
        out = []
        for p in strs:
            out.append(summarize_chunk([p])[0])
            if on_progress:
                on_progress(1)
        return out
    import concurrent.futures as cf
    import multiprocessing as mp
    import sys
    import threading

    # Chunks of files, not single files, are the tasks: a task costs a round trip through the pool's pipes.
    # About 8 chunks per worker (at most 64 files) keep the cores busy until the end and the bar moving.
    size = chunk or max(1, min(64, len(strs) // (n_workers * 8) or 1))
    chunks = [strs[i : i + size] for i in range(0, len(strs), size)]
    results: list[list[dict[str, Any]]] = [[] for _ in chunks]
    # fork starts a worker in milliseconds with numpy, OpenCV and medkit already imported; spawn and forkserver
    # (the default from Python 3.14) re-import them in every worker. It is safe on Linux while this process
    # runs no other thread (a live progress bar is one: then the platform's default is kept).
    single = threading.active_count() == 1
    ctx = mp.get_context("fork") if sys.platform.startswith("linux") and single else None
    with cf.ProcessPoolExecutor(max_workers=n_workers, mp_context=ctx, initializer=init_worker) as pool:
        futures = {pool.submit(summarize_chunk, c): k for k, c in enumerate(chunks)}
        for fut in cf.as_completed(futures):
            k = futures[fut]
            results[k] = fut.result()
            if on_progress:
                on_progress(len(results[k]))
    return [r for part in results for r in part]


# ---------------------------------------------------------------------------------------------- intensity
def _bits_for(maximum: float) -> int:
    for bits in (8, 10, 12, 14, 16):
        if maximum <= (1 << bits) - 1:
            return bits
    return 32


def _ranges(
    files: Sequence[str], records: Sequence[dict[str, Any]]
) -> tuple[list[tuple[float, float] | None], set[int]]:
    """The intensity range each image is judged on (None: CT in HU), and the images judged on their own range.

    The range is the dtype's (8 bit), the bit depth its format group uses (16-bit containers), BitsStored
    (radiograph DICOM), or the image's own for modalities whose intensities are relative (MR, US, ...).
    """
    groups: dict[tuple[str, str], list[int]] = defaultdict(list)
    for k, (f, r) in enumerate(zip(files, records, strict=True)):
        if r.get("ok"):
            modality = (r.get("dicom") or {}).get("modality", "")
            groups[(os.path.splitext(f)[1].lower() + modality, r["dtype"])].append(k)
    out: list[tuple[float, float] | None] = [None] * len(files)
    relative: set[int] = set()
    for (_, dtype), idx in groups.items():
        gmin = min(records[k]["min"] for k in idx)
        gmax = max(records[k]["max"] for k in idx)
        for k in idx:
            r = records[k]
            d = r.get("dicom")
            if d is not None and d.get("modality") == "CT":
                out[k] = None  # judged in HU
            elif d is not None and d.get("modality") not in PROJECTION_MODALITIES:
                # MR, US, PET...: intensities are relative, so only the image's own range means anything.
                out[k] = (r["min"], r["max"]) if r["max"] > r["min"] else (r["min"], r["min"] + 1.0)
                relative.add(k)
            elif d is not None and d.get("bits_stored") and r["channels"] == 1:
                # Radiographs: the range BitsStored can hold after rescale, so 10-bit and 15-bit files are each
                # judged on their own depth.
                bits = int(d["bits_stored"])
                signed = int(d.get("pixel_representation") or 0) == 1
                s_lo, s_hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
                slope, intercept = d.get("slope") or 1.0, d.get("intercept") or 0.0
                lo, hi = sorted((s_lo * slope + intercept, s_hi * slope + intercept))
                out[k] = (lo, hi) if hi > lo else (lo, lo + 1.0)
            elif dtype in ("uint8", "bool"):
                out[k] = (0.0, 255.0 if dtype == "uint8" else 1.0)
            elif dtype.startswith("uint") and r.get("dicom") is None:
                # 10/12/14-bit data is stored in 16-bit containers; the whole group shows the real depth.
                out[k] = (0.0, float((1 << _bits_for(gmax)) - 1))
            elif dtype.startswith("float") and r.get("dicom") is None and gmin >= 0 and gmax <= 1.0:
                out[k] = (0.0, 1.0)
            else:
                out[k] = (gmin, gmax) if gmax > gmin else (gmin, gmin + 1.0)
    return out, relative


def _intensity_findings(
    files: Sequence[str], records: Sequence[dict[str, Any]], th: Thresholds
) -> tuple[list[Finding], set[int]]:
    findings: list[Finding] = []
    blank: set[int] = set()
    ranges, relative = _ranges(files, records)
    for k, (f, r, rng) in enumerate(zip(files, records, ranges, strict=True)):
        if not r.get("ok"):
            continue
        if rng is None:  # CT in HU
            tissue = r.get("tissue_frac") or 0.0
            if tissue < th.ct_tissue or r["std"] < 2.0:
                findings.append(
                    Finding(
                        "blank",
                        (f,),
                        f"CT slice without body: {100 * tissue:.2f}% of pixels above "
                        f"-500 HU, HU {r['min']:.0f}..{r['max']:.0f}",
                    )
                )
                blank.add(k)
            continue
        lo, hi = rng
        span = hi - lo
        std_frac = r["std"] / span
        if k in relative:
            std_frac = 1.0  # no absolute scale: blank only when constant, low information only by entropy
        if r["max"] == r["min"] or std_frac < th.blank_std or r["mode_frac"] >= th.blank_mode:
            findings.append(
                Finding(
                    "blank",
                    (f,),
                    f"near-constant: value {r['min']:.6g}..{r['max']:.6g}, "
                    f"std {r['std']:.3g} on a {r['dtype']} range of {span:.6g}, "
                    f"{100 * r['mode_frac']:.1f}% of pixels at one value",
                )
            )
            blank.add(k)
        elif k not in relative and (r["p99"] - lo) / span < th.dark:
            findings.append(
                Finding(
                    "dark",
                    (f,),
                    f"99th percentile {r['p99']:.6g} is {100 * (r['p99'] - lo) / span:.1f}% "
                    f"of the {r['dtype']} range {lo:.6g}..{hi:.6g}",
                )
            )
        elif r["entropy"] < th.low_entropy or std_frac < th.low_std:
            findings.append(
                Finding(
                    "low_information",
                    (f,),
                    f"entropy {r['entropy']:.2f} bits, std {r['std']:.3g} ({100 * std_frac:.2f}% of the range)"
                    if k not in relative
                    else f"entropy {r['entropy']:.2f} bits ({r['dicom'].get('modality') or 'DICOM'} image: "
                    "relative intensities, judged on entropy only)",
                )
            )
    return findings, blank


# ---------------------------------------------------------------------------------------------- duplicates
def _thumb_corr(thumbs: np.ndarray, i: np.ndarray, j: np.ndarray, family: np.ndarray) -> np.ndarray:
    """Pearson correlation of thumbnail pairs; two flat thumbnails (blank images) of one family count as identical."""
    t = thumbs.astype(np.float32)
    t -= t.mean(axis=1, keepdims=True)
    norm = np.linalg.norm(t, axis=1)
    flat = norm < 1e-6
    t /= np.where(flat, 1.0, norm)[:, None]
    out = np.empty(len(i), dtype=np.float32)
    for lo in range(0, len(i), 1 << 20):
        a, b = i[lo : lo + (1 << 20)], j[lo : lo + (1 << 20)]
        out[lo : lo + len(a)] = np.einsum("ij,ij->i", t[a], t[b])
    both_flat = flat[i] & flat[j] & (family[i] == family[j])
    out[both_flat] = 1.0
    return out


def _duplicate_clusters(
    records: Sequence[dict[str, Any]], threshold: int, min_corr: float = 0.99
) -> tuple[np.ndarray, np.ndarray]:
    """(near cluster, exact cluster) label per file; unreadable files get clusters of their own."""
    from medkit.audit.phash import clusters, near_pairs

    n = len(records)
    ok = [k for k, r in enumerate(records) if r.get("ok")]
    digest_ids: dict[str, int] = {}
    exact_key = np.arange(n, dtype=np.int64) + n
    for k in ok:
        exact_key[k] = digest_ids.setdefault(records[k]["digest"], len(digest_ids))
    _, exact = np.unique(exact_key, return_inverse=True)
    exact = exact.ravel()
    hashes = np.array([records[k]["phash"] for k in ok], dtype=np.uint64)
    i, j, _ = near_pairs(hashes, threshold, max_group=64) if len(ok) > 1 else (np.empty(0, int), np.empty(0, int), None)
    if len(i):
        # pHash alone joins look-alike radiographs of different patients; the thumbnail check keeps copies only.
        thumbs = np.frombuffer(b"".join(records[k]["thumb"] for k in ok), dtype=np.uint8).reshape(len(ok), 256)
        heads = [records[k].get("dicom") or {} for k in ok]
        # A blank CT slice in HU and a black PNG both have flat thumbnails but are not copies of each other.
        family = np.array(
            [
                h.get("modality", "?") if records[k].get("dicom") is not None else "image"
                for k, h in zip(ok, heads, strict=True)
            ],
            dtype=object,
        )
        keep = _thumb_corr(thumbs, i, j, family) >= min_corr
        # Neighbouring slices of one CT/MR series look alike by nature; only exact copies count there.
        series = np.array([h.get("series") or f"#{k}" for k, h in zip(ok, heads, strict=True)], dtype=object)
        keep &= series[i] != series[j]
        i, j = i[keep], j[keep]
    ok_arr = np.asarray(ok, dtype=np.int64)
    # Exact duplicates belong together even when their hashes are far apart (it cannot happen for one hash
    # function, but grey/RGB variants of one picture are hashed from the same grey plane anyway).
    order = np.argsort(exact, kind="stable")
    same = exact[order][1:] == exact[order][:-1]
    ei, ej = order[:-1][same], order[1:][same]
    near = clusters(n, np.r_[ok_arr[i] if len(i) else [], ei], np.r_[ok_arr[j] if len(j) else [], ej])
    return near, exact


def _duplicate_findings(
    files: Sequence[str], records: Sequence[dict[str, Any]], near: np.ndarray, exact: np.ndarray
) -> list[Finding]:
    from medkit.audit.phash import hamming

    findings: list[Finding] = []
    for cid, members in _groups(exact).items():
        if len(members) > 1:
            shape = f"{records[members[0]]['height']}x{records[members[0]]['width']}"
            findings.append(
                Finding(
                    "exact_duplicate",
                    tuple(files[m] for m in members),
                    f"{len(members)} files with identical pixels ({shape}), exact cluster {cid}",
                )
            )
    for cid, members in _groups(near).items():
        exact_ids = {int(exact[m]) for m in members}
        if len(members) > 1 and len(exact_ids) > 1:
            hs = np.array([records[m]["phash"] for m in members[:200]], dtype=np.uint64)
            worst = int(hamming(hs[:, None], hs[None, :]).max())  # capped: a cluster may hold thousands
            findings.append(
                Finding(
                    "near_duplicate",
                    tuple(files[m] for m in members),
                    f"{len(members)} files, {len(exact_ids)} distinct pictures, pHash distance "
                    f"<= {worst} within the cluster, cluster {cid}",
                )
            )
    return findings


def _groups(labels: np.ndarray) -> dict[int, list[int]]:
    out: dict[int, list[int]] = defaultdict(list)
    for k, c in enumerate(labels.tolist()):
        out[c].append(k)
    return out


# ---------------------------------------------------------------------------------------------- geometry
def _geometry_findings(files: Sequence[str], records: Sequence[dict[str, Any]], th: Thresholds) -> list[Finding]:
    ok = [k for k, r in enumerate(records) if r.get("ok")]
    if len(ok) < 3:
        return []
    findings: list[Finding] = []
    short = np.array([min(records[k]["height"], records[k]["width"]) for k in ok], dtype=np.float64)
    aspect = np.array([records[k]["width"] / records[k]["height"] for k in ok], dtype=np.float64)
    med_short = float(np.median(short))
    med_aspect = float(np.median(aspect))
    for k, s, a in zip(ok, short, aspect, strict=True):
        r = records[k]
        size = f"{r['height']}x{r['width']}"
        if s * th.size_factor < med_short or s > med_short * th.size_factor or s < 8:
            findings.append(Finding("odd_size", (files[k],), f"{size}; the median short side is {med_short:.0f}"))
        elif max(a / med_aspect, med_aspect / a) > th.aspect_factor:
            findings.append(
                Finding("odd_aspect", (files[k],), f"{size}, aspect {a:.2f}; the median is {med_aspect:.2f}")
            )
    eff = Counter(records[k]["eff_channels"] for k in ok)
    if len(eff) > 1:
        common, n_common = eff.most_common(1)[0]
        names = {1: "grey", 2: "grey+alpha", 3: "colour", 4: "colour+alpha"}
        for c, n in eff.items():
            if c != common:
                members = tuple(files[k] for k in ok if records[k]["eff_channels"] == c)
                findings.append(
                    Finding(
                        "mixed_channels",
                        members,
                        f"{n} {names.get(c, str(c))} images among {n_common} {names.get(common, str(common))} ones",
                    )
                )
    return findings


# ---------------------------------------------------------------------------------------------- DICOM
def _dicom_findings(files: Sequence[str], records: Sequence[dict[str, Any]]) -> list[Finding]:
    findings: list[Finding] = []
    series: dict[str, list[int]] = defaultdict(list)
    modalities: dict[str, list[int]] = defaultdict(list)
    grouped: dict[tuple[str, str], list[str]] = defaultdict(list)
    for k, r in enumerate(records):
        d = r.get("dicom")
        if not r.get("ok") or d is None:
            continue
        f = files[k]
        modalities[d.get("modality") or "(none)"].append(k)
        if d.get("series"):
            series[d["series"]].append(k)
        if d.get("intercept_defect"):
            findings.append(
                Finding(
                    "dicom_rescale_12bit",
                    (f,),
                    f"BitsStored 12, unsigned, RescaleIntercept "
                    f"{d.get('intercept')}: air is stored wrapped to the top of the 12-bit range",
                )
            )
        if d.get("photometric") == "MONOCHROME1":
            grouped[("dicom_monochrome1", "MONOCHROME1 (inverted grey scale)")].append(f)
        problem = _window_problem(d)
        if problem:
            grouped[("dicom_window", problem)].append(f)
        stored = r.get("stored_range")
        bits = d.get("bits_stored")
        if stored is not None and bits:
            bits = int(bits)
            signed = int(d.get("pixel_representation") or 0) == 1
            lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
            if stored[0] < lo - 0.5 or stored[1] > hi + 0.5:
                findings.append(
                    Finding(
                        "dicom_bits_stored",
                        (f,),
                        f"stored values {stored[0]:.0f}..{stored[1]:.0f} "
                        f"exceed BitsStored {bits} ({'signed' if signed else 'unsigned'} "
                        f"{lo}..{hi})",
                    )
                )
            allocated = d.get("bits_allocated")
            if allocated and bits > allocated:
                findings.append(
                    Finding("dicom_bits_stored", (f,), f"BitsStored {bits} > BitsAllocated {allocated:.0f}")
                )
    # Header quirks usually come per scanner or export: one finding per distinct problem, all its files listed.
    for (kind, detail), members in grouped.items():
        findings.append(Finding(kind, tuple(members), f"{len(members)} file(s): {detail}"))
    for uid, members in series.items():
        findings.extend(_series_findings(uid, [files[k] for k in members], [records[k]["dicom"] for k in members]))
    if len(modalities) > 1:
        common = max(modalities, key=lambda m: len(modalities[m]))
        counts = ", ".join(f"{m} {len(v)}" for m, v in sorted(modalities.items(), key=lambda kv: -len(kv[1])))
        minority = tuple(files[k] for m, v in modalities.items() if m != common for k in v)
        findings.append(Finding("dicom_mixed_modality", minority, f"modalities: {counts}"))
    return findings


def _window_problem(d: dict[str, Any]) -> str | None:
    wc, ww = d.get("window_center") or "", d.get("window_width") or ""
    if not wc or not ww:
        missing = " and ".join(n for n, v in (("WindowCenter", wc), ("WindowWidth", ww)) if not v)
        return f"{missing} missing"
    if d.get("window_values", 1) > 1:
        return f"multi-valued window: center {wc}, width {ww} (readers use the first)"
    try:
        c, w = float(wc), float(ww)
    except ValueError:
        return f"window not numeric: center {wc!r}, width {ww!r}"
    if w <= 0:
        return f"WindowWidth {w:g} is not positive"
    if d.get("modality") == "CT" and not (-2000 <= c <= 5000 and w <= 10000):
        return f"implausible CT window: center {c:g} HU, width {w:g}"
    return None


def _series_findings(uid: str, files: list[str], headers: list[dict[str, Any]]) -> list[Finding]:
    if len(files) < 3:
        return []
    out: list[Finding] = []
    zs = [h.get("z") for h in headers]
    short_uid = uid if len(uid) <= 24 else "..." + uid[-21:]
    if all(z is not None for z in zs):
        order = np.argsort(zs, kind="stable")
        z = np.asarray(zs, dtype=np.float64)[order]
        diffs = np.diff(z)
        step = float(np.median(diffs))
        if step <= 1e-6:
            out.append(Finding("dicom_slice_spacing", tuple(files), f"series {short_uid}: slices share one position"))
            return out
        tol = max(0.1 * step, 0.01)
        missing = 0
        gaps: list[str] = []
        for a, b, d in zip(order[:-1], order[1:], diffs, strict=True):
            ratio = d / step
            if abs(d - step) <= tol:
                continue
            if ratio > 1.5 and abs(ratio - round(ratio)) * step <= tol:
                missing += round(ratio) - 1
                gaps.append(f"{files[a]} -> {files[b]}")
            else:
                out.append(
                    Finding(
                        "dicom_slice_spacing",
                        (files[a], files[b]),
                        f"series {short_uid}: spacing {d:.3g} mm between these slices, "
                        f"the series' step is {step:.3g} mm",
                    )
                )
        if missing:
            out.append(
                Finding(
                    "dicom_missing_slices",
                    tuple(files),
                    f"series {short_uid}: {missing} slice(s) missing at {step:.3g} mm spacing ({'; '.join(gaps[:3])})",
                )
            )
        return out
    nums = [h.get("instance") for h in headers]
    if all(v is not None for v in nums):
        values = sorted(int(v) for v in nums)
        holes = sorted(set(range(values[0], values[-1] + 1)) - set(values))
        if holes:
            out.append(
                Finding(
                    "dicom_missing_slices",
                    tuple(files),
                    f"series {short_uid}: instance numbers "
                    f"{', '.join(map(str, holes[:10]))} missing (no ImagePositionPatient to check spacing)",
                )
            )
        if len(set(values)) < len(values):
            out.append(Finding("dicom_slice_spacing", tuple(files), f"series {short_uid}: repeated instance numbers"))
    return out


# ---------------------------------------------------------------------------------------------- label table
def _choose_image_column(df: Any, root: Path, files: set[str], preferred: str) -> str:
    """The id column whose values name the scanned files best (``image`` may hold bare names, ``path`` paths)."""
    import pandas as pd

    from medkit.data.table import ID_CANDIDATES

    def score(col: str) -> int:
        values = df[col].astype(str).head(200).tolist()
        return sum(1 for v in values if v in files or v.lstrip("./") in files)

    best, best_score = preferred, score(preferred)
    for col in ID_CANDIDATES:
        if col in df.columns and col != preferred and not pd.api.types.is_numeric_dtype(df[col]):
            s = score(col)
            if s > best_score:
                best, best_score = col, s
    return best


def _show(value: Any) -> str:
    return repr(value) if isinstance(value, str) else str(value)


def _binary_like(values: Any) -> bool:
    import pandas as pd

    v = pd.to_numeric(values, errors="coerce").dropna()
    if len(v) == 0:
        return False
    return bool(v.isin([0, 1]).mean() >= 0.9) and len(set(v.unique()) - {0, 1}) <= 3


def _table_findings(
    df: Any,
    spec: Any,
    root: Path,
    files: list[str],
    image_col: str,
    label_cols: Sequence[str],
    th: Thresholds,
) -> tuple[list[Finding], list[str | None], list[dict[str, Any]]]:
    """Row-level problems, the scanned file (relative path) of each row, and per-label statistics."""
    import pandas as pd

    from medkit.data.table import resolve_paths

    findings: list[Finding] = []
    resolved = resolve_paths(df, root, image_col, strict=False)
    row_file: list[str | None] = []
    for p in resolved:
        row_file.append(None if p is None else Path(p).resolve().relative_to(root.resolve()).as_posix())
    ids = df[image_col].astype(str).tolist()
    for rid, rf in zip(ids, row_file, strict=True):
        if rf is None:
            findings.append(
                Finding("missing_file", (rid,), f"row '{rid}' of column '{image_col}' matches no file under {root}")
            )
    listed = {rf for rf in row_file if rf is not None}
    for f in files:
        if f not in listed:
            findings.append(Finding("unlabeled_file", (f,), "no row of the label table names this file"))
    by_file: dict[str, list[int]] = defaultdict(list)
    for k, rf in enumerate(row_file):
        by_file[rf if rf is not None else f"id:{ids[k]}"].append(k)
    for key, rows in by_file.items():
        if len(rows) > 1:
            name = key[3:] if key.startswith("id:") else key
            findings.append(
                Finding(
                    "duplicate_id",
                    (name,),
                    f"{len(rows)} rows (table rows {', '.join(str(r + 2) for r in rows[:10])}) name this image",
                )
            )
    stats: list[dict[str, Any]] = []
    for col in label_cols:
        values = pd.to_numeric(df[col], errors="coerce")
        raw_missing = df[col].isna()
        junk = values.isna() & ~raw_missing
        for k in np.flatnonzero(raw_missing.to_numpy()).tolist():
            findings.append(
                Finding("missing_label", (row_file[k] or ids[k],), f"'{col}' is empty/NaN (table row {k + 2})")
            )
        binary = _binary_like(df[col])
        if binary:
            bad = junk | (values.notna() & ~values.isin([0, 1]))
            for k in np.flatnonzero(bad.to_numpy()).tolist():
                findings.append(
                    Finding(
                        "non_binary_label",
                        (row_file[k] or ids[k],),
                        f"'{col}' = {_show(df[col].iloc[k])} in a 0/1 column (table row {k + 2})",
                    )
                )
            v = values[values.isin([0, 1])]
            pos, neg = int((v == 1).sum()), int((v == 0).sum())
            prevalence = pos / (pos + neg) if pos + neg else math.nan
            pos_weight = neg / pos if pos else None
            stats.append(
                {
                    "label": col,
                    "kind": "binary",
                    "n": pos + neg,
                    "positives": pos,
                    "negatives": neg,
                    "prevalence": prevalence,
                    "pos_weight": pos_weight,
                }
            )
            if pos + neg and (
                pos == 0 or neg == 0 or (pos_weight or 0) > th.imbalance or neg / max(pos, 1) < 1 / th.imbalance
            ):
                findings.append(
                    Finding(
                        "label_imbalance",
                        (col,),
                        f"'{col}': {pos} positives, {neg} negatives, "
                        f"prevalence {100 * prevalence:.2f}%"
                        + (f", pos_weight {pos_weight:.1f}" if pos_weight else ""),
                    )
                )
        else:
            for k in np.flatnonzero(junk.to_numpy()).tolist():
                findings.append(
                    Finding(
                        "missing_label",
                        (row_file[k] or ids[k],),
                        f"'{col}' = {_show(df[col].iloc[k])} is not a number (table row {k + 2})",
                    )
                )
            v = values.dropna()
            counts = v.value_counts().sort_index()
            stats.append(
                {
                    "label": col,
                    "kind": "multiclass" if len(counts) <= 20 else "continuous",
                    "n": int(len(v)),
                    "classes": {str(c): int(n) for c, n in counts.items()} if len(counts) <= 20 else None,
                }
            )
    return findings, row_file, stats


def _label_columns(df: Any, spec: Any, explicit: Sequence[str] | None) -> tuple[str, ...]:
    """Label columns: explicit ones, else the spec's plus text columns that are 0/1 apart from a few junk values."""
    if explicit:
        missing = [c for c in explicit if c not in df.columns]
        if missing:
            raise UsageError(
                f"label column(s) not in the table: {', '.join(missing)}",
                hint=f"columns are: {', '.join(map(str, df.columns[:30]))}",
            )
        return tuple(explicit)
    import pandas as pd

    roles = {spec.image, spec.group, spec.series, spec.order, spec.fold, spec.split}
    cols = [c for c in spec.labels if not pd.api.types.is_bool_dtype(df[c])]
    for c in df.columns:
        if c in roles or c in cols or pd.api.types.is_numeric_dtype(df[c]) or pd.api.types.is_bool_dtype(df[c]):
            continue
        parsed = pd.to_numeric(df[c], errors="coerce")
        if parsed.notna().mean() >= 0.9 and _binary_like(df[c]):
            cols.append(c)
    return tuple(str(c) for c in cols)


def _label_key(df: Any, row: int, label_cols: Sequence[str]) -> tuple[Any, ...]:
    out = []
    for c in label_cols:
        v = df[c].iloc[row]
        out.append(None if v is None or (isinstance(v, float) and math.isnan(v)) else v)
    return tuple(out)


def _conflict_and_leak_findings(
    files: Sequence[str],
    near: np.ndarray,
    exact: np.ndarray,
    file_labels: dict[str, tuple[Any, ...]],
    label_cols: Sequence[str],
    partitions: dict[str, dict[str, str]],
) -> list[Finding]:
    findings: list[Finding] = []
    for cid, members in _groups(near).items():
        if len(members) < 2:
            continue
        names = [files[m] for m in members]
        labelled = {n: file_labels[n] for n in names if n in file_labels}
        if _disagree(list(labelled.values())):
            kinds = "exact" if len({int(exact[m]) for m in members}) == 1 else "near"
            shown = "; ".join(f"{n}: {_fmt_labels(v, label_cols)}" for n, v in list(labelled.items())[:6])
            findings.append(
                Finding(
                    "label_conflict",
                    tuple(labelled),
                    f"{kinds} duplicates with different labels (cluster {cid}): {shown}",
                )
            )
        for pname, mapping in partitions.items():
            parts = {n: mapping[n] for n in names if n in mapping}
            if len(set(parts.values())) > 1:
                by = Counter(parts.values())
                findings.append(
                    Finding(
                        "leakage",
                        tuple(parts),
                        f"duplicate cluster {cid} spans {pname}s "
                        + ", ".join(f"{k} ({v})" for k, v in sorted(by.items())),
                    )
                )
    return findings


def _disagree(keys: list[tuple[Any, ...]]) -> bool:
    """Whether some label column has two different known values (a missing label conflicts with nothing)."""
    if len(keys) < 2:
        return False
    for col in zip(*keys, strict=True):
        known = {v for v in col if v is not None}
        if len(known) > 1:
            return True
    return False


def _fmt_labels(values: tuple[Any, ...], cols: Sequence[str]) -> str:
    if len(cols) == 1:
        return f"{cols[0]}={values[0]}"
    on = [c for c, v in zip(cols, values, strict=True) if v not in (0, 0.0, None, False)]
    return "+".join(on) if on else "none"


def _group_leakage(
    df: Any, group: str, part_col: str, pname: str, row_file: Sequence[str | None], ids: Sequence[str]
) -> list[Finding]:
    findings: list[Finding] = []
    sub = df[[group, part_col]].copy()
    sub["_file"] = [rf or v for rf, v in zip(row_file, ids, strict=True)]
    sub = sub[sub[group].notna() & sub[part_col].notna()]
    sub[part_col] = sub[part_col].astype(str)
    for patient, rows in sub.groupby(group, sort=True):
        parts = Counter(rows[part_col].tolist())
        if len(parts) > 1:
            findings.append(
                Finding(
                    "leakage",
                    tuple(rows["_file"].tolist()),
                    f"{group} {patient} is in "
                    f"{len(parts)} {pname}s: " + ", ".join(f"{k} ({v})" for k, v in sorted(parts.items())),
                )
            )
    return findings


# ---------------------------------------------------------------------------------------------- the audit
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
) -> AuditReport:
    """Audit an image folder (and its label table).

    Args:
        root: The data folder, scanned recursively.
        labels: Optional label table (CSV/TSV/parquet) with one row per image.
        group: Patient column (default: detected, e.g. ``patient_id``).
        split: Split column (default: detected ``split``; else train/valid/test folder names).
        image_col: Image path/id column (default: the id column whose values match the files best).
        label_cols: Label columns (default: numeric columns that play no other role).
        workers: Worker processes (None: every core; 0: in this process).
        thresholds: Finding thresholds.
        on_start: Called with the number of files before the scan (for a progress bar).
        on_progress: Called with the number of files finished since the last call.

    Returns:
        The `AuditReport`.

    Raises:
        DataError: When ``root`` is not a folder or the table cannot be read.
        UsageError: When a named column is not in the table.
    """
    th = thresholds or Thresholds()
    target = Path(root)
    if target.is_dir():
        root, files = target, list_images(target)
    elif target.is_file():
        root, files = target.parent, [target.name]
    else:
        raise DataError(
            f"data not found: {target}", hint="pass the folder that holds the images, or one image or .npz file"
        )
    files, items, archive_labels, archive_cols = _expand_archives(root, files)
    if on_start:
        on_start(len(files))
    try:
        records = scan(items, workers=workers, on_progress=on_progress)
    finally:
        _release_archives()
    for f, r in zip(files, records, strict=True):
        r["path"] = f
    findings: list[Finding] = []
    for f, r in zip(files, records, strict=True):
        if not r.get("ok"):
            reason = str(r.get("error") or "unreadable")
            findings.append(Finding("unreadable", (f,), reason.replace(f"{root / f}: ", "").replace(str(root / f), f)))
    intensity, _ = _intensity_findings(files, records, th)
    findings += intensity
    near, exact = _duplicate_clusters(records, th.near, th.near_corr)
    findings += _duplicate_findings(files, records, near, exact)
    findings += _dicom_findings(files, records)
    findings += _geometry_findings(files, records, th)

    report = AuditReport(
        root=root, files=files, records=records, findings=findings, cluster=near, exact_cluster=exact, thresholds=th
    )
    partitions: dict[str, dict[str, str]] = {}
    file_labels: dict[str, tuple[Any, ...]] = {}
    folder_split = {f: s for f in files if (s := infer_split(f))}
    if labels is not None:
        from medkit.data.table import detect_spec, load_table

        df = load_table(labels)
        spec = detect_spec(df, image=image_col, group=group, split=split)
        col = image_col or _choose_image_column(df, root, set(files), spec.image)
        cols = _label_columns(df, spec, label_cols)
        table_findings, row_file, stats = _table_findings(df, spec, root, files, col, cols, th)
        findings += table_findings
        report.table, report.table_path, report.row_file = df, Path(labels), row_file
        report.label_cols, report.image_col, report.label_stats = cols, col, stats
        ids = df[col].astype(str).tolist()
        for k, rf in enumerate(row_file):
            if rf is not None and rf not in file_labels:
                file_labels[rf] = _label_key(df, k, cols)
        for pname, pcol in (("split", spec.split), ("fold", spec.fold)):
            if pcol is None:
                continue
            mapping = {}
            for k, rf in enumerate(row_file):
                v = df[pcol].iloc[k]
                if rf is not None and rf not in mapping and v is not None and v == v:
                    mapping[rf] = str(v)
            partitions[pname] = mapping
            if spec.group is not None:
                findings += _group_leakage(df, spec.group, pcol, pname, row_file, ids)
            report.split_source = report.split_source or f"column '{pcol}'"
        if spec.split is None and folder_split:
            partitions["split"] = folder_split
            report.split_source = "folder names"
            if spec.group is not None:
                tmp = df.assign(_folder_split=[folder_split.get(rf) if rf else None for rf in row_file])
                findings += _group_leakage(tmp, spec.group, "_folder_split", "split", row_file, ids)
    elif folder_split:
        partitions["split"] = folder_split
        report.split_source = "folder names"
    if labels is None and archive_labels:
        file_labels.update(archive_labels)
        report.label_cols = archive_cols
    findings += _conflict_and_leak_findings(files, near, exact, file_labels, report.label_cols, partitions)
    order = {k: i for i, k in enumerate(KINDS)}
    findings.sort(key=lambda f: (order[f.kind], f.files[:1]))
    report.findings = findings
    return report


# ---------------------------------------------------------------------------------------------- outputs
def write_outputs(report: AuditReport, out_dir: str | os.PathLike[str], max_sheet: int = 48) -> list[Path]:
    """Write findings.csv, duplicates.csv, the cleaned label table and a contact sheet per finding kind.

    Args:
        report: The audit.
        out_dir: Output folder (created). Input files are never touched.
        max_sheet: Most tiles (or duplicate rows) on one contact sheet.

    Returns:
        The written paths.
    """
    import pandas as pd

    from medkit._io import write_csv
    from medkit.data.table import save_table

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    rows = [
        {"kind": f.kind, "severity": f.severity, "files": ";".join(f.files), "detail": f.detail}
        for f in report.findings
    ]
    written.append(write_csv(out / "findings.csv", pd.DataFrame(rows, columns=["kind", "severity", "files", "detail"])))
    sizes = Counter(report.cluster.tolist())
    dup = pd.DataFrame(
        {
            "image": report.files,
            "cluster": report.cluster.tolist(),
            "cluster_size": [sizes[c] for c in report.cluster.tolist()],
            "exact_cluster": report.exact_cluster.tolist(),
        }
    )
    written.append(write_csv(out / "duplicates.csv", dup))
    if report.table is not None:
        written.append(save_table(clean_table(report), out / "labels_clean.csv"))
    try:
        written += _contact_sheets(report, out, max_sheet)
    finally:
        _release_archives()
    return written


def clean_table(report: AuditReport) -> Any:
    """The label table without rows of missing, unreadable or blank files, one row per exact-duplicate cluster.

    Within an exact-duplicate cluster the first file in path order is kept. Label conflicts are left for a
    person to settle (findings.csv lists them).
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


def _thumb(root: Path, rel: str, rec: dict[str, Any], size: int) -> np.ndarray:
    """A uint8 (size, size) display of an image on the scale it was judged on (dark stays dark)."""
    import cv2

    from medkit.audit._scan import archive_array
    from medkit.io.readers import read_image

    tile = np.full((size, size), 40, dtype=np.uint8)
    try:
        member = _archive_member(root, rel)
        arr = archive_array(*member[:2])[member[2]] if member else read_image(root / rel)
    except Exception:
        cv2.line(tile, (0, 0), (size - 1, size - 1), 200, 2)
        cv2.line(tile, (0, size - 1), (size - 1, 0), 200, 2)
        return tile
    if arr.ndim == 4 or (arr.ndim == 3 and arr.shape[-1] not in (1, 2, 3, 4)):
        arr = arr[arr.shape[0] // 2]
    if arr.ndim == 3:
        arr = arr[..., :3].mean(axis=-1) if arr.shape[-1] >= 3 else arr[..., 0]
    a = arr.astype(np.float32)
    dicom = rec.get("dicom") or {}
    if dicom.get("modality") == "CT":
        lo, hi = -1000.0, 1000.0
    elif arr.dtype == np.uint8:
        lo, hi = 0.0, 255.0
    elif arr.dtype == np.uint16:
        lo, hi = 0.0, float((1 << _bits_for(float(a.max()) if a.size else 0)) - 1)
    else:
        lo, hi = float(np.nanmin(a)), float(np.nanmax(a))
    img = np.clip((a - lo) / max(hi - lo, 1e-6) * 255.0, 0, 255).astype(np.uint8)
    h, w = img.shape
    scale = size / max(h, w)
    small = cv2.resize(img, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    y, x = (size - small.shape[0]) // 2, (size - small.shape[1]) // 2
    tile[y : y + small.shape[0], x : x + small.shape[1]] = small
    return tile


def _captioned(tile: np.ndarray, caption: str) -> np.ndarray:
    import cv2

    size = tile.shape[1]
    tile = tile.copy()
    cv2.rectangle(tile, (0, 0), (size - 1, tile.shape[0] - 1), 110, 1)  # a black image still shows as a tile
    band = np.full((16, size), 0, dtype=np.uint8)
    text = caption if len(caption) <= size // 6 else "..." + caption[-(size // 6 - 3) :]
    cv2.putText(band, text, (2, 12), cv2.FONT_HERSHEY_PLAIN, 0.75, 255, 1, cv2.LINE_AA)
    return np.vstack([tile, band])


def _contact_sheets(report: AuditReport, out: Path, max_items: int, size: int = 128) -> list[Path]:
    """One PNG per finding kind that has images: a grid of flagged images, or one row per duplicate cluster."""
    import cv2

    from medkit._io import atomic_write

    index = {f: k for k, f in enumerate(report.files)}
    by_kind: dict[str, list[Finding]] = defaultdict(list)
    for f in report.findings:
        if any(x in index for x in f.files):
            by_kind[f.kind].append(f)
    written = []
    cols = 8
    for kind, items in by_kind.items():
        multi = any(len(f.files) > 1 for f in items)
        rows: list[np.ndarray] = []
        if multi:
            for f in items[: max_items // 3 or 1]:
                tiles = [
                    _captioned(_thumb(report.root, x, report.records[index[x]], size), x)
                    for x in f.files[:cols]
                    if x in index
                ]
                while len(tiles) < cols:
                    tiles.append(np.zeros_like(tiles[0]))
                rows.append(np.hstack(tiles))
        else:
            tiles = [
                _captioned(_thumb(report.root, f.files[0], report.records[index[f.files[0]]], size), f.files[0])
                for f in items[:max_items]
                if f.files[0] in index
            ]
            while len(tiles) % cols:
                tiles.append(np.zeros_like(tiles[0]))
            rows = [np.hstack(tiles[i : i + cols]) for i in range(0, len(tiles), cols)]
        if not rows:
            continue
        sep = np.full((4, rows[0].shape[1]), 90, dtype=np.uint8)
        sheet = np.vstack([x for r in rows for x in (r, sep)][:-1])
        ok, buf = cv2.imencode(".png", sheet)
        if ok:
            path = out / f"sheet_{kind}.png"
            with atomic_write(path, "wb") as fh:
                fh.write(buf.tobytes())
            written.append(path)
    return written
