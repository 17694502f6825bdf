"""DICOM header findings: the 12-bit RescaleIntercept defect, MONOCHROME1, window tags, BitsStored against the
pixel range, slice spacing and missing slices per series, and mixed modalities.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np

from medkit.audit.report import Finding

__all__ = ["dicom_findings", "window_problem", "series_findings"]

#: Series with fewer slices than this are not checked for spacing (two slices have no "usual" step).
_MIN_SERIES = 3


def _stored_limits(bits: int, signed: bool) -> tuple[int, int]:
    return (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)


def _bits_findings(f: str, r: dict[str, Any], d: dict[str, Any]) -> list[Finding]:
    """Stored values outside what BitsStored holds, and BitsStored above BitsAllocated."""
    stored = r.get("stored_range")
    bits = d.get("bits_stored")
    if stored is None or not bits:
        return []
    findings: list[Finding] = []
    bits = int(bits)
    signed = int(d.get("pixel_representation") or 0) == 1
    lo, hi = _stored_limits(bits, signed)
    if stored[0] < lo - 0.5 or stored[1] > hi + 0.5:
        findings.append(
            Finding(
                "dicom_bits_stored",
                (f,),
                f"stored values {stored[0]:.0f}..{stored[1]:.0f} exceed BitsStored {bits} "
                f"({'signed' if signed else 'unsigned'} {lo}..{hi})",
            )
        )
    allocated = d.get("bits_allocated")
    if allocated and bits > allocated:
        findings.append(Finding("dicom_bits_stored", (f,), f"BitsStored {bits} > BitsAllocated {allocated:.0f}"))
    return findings


def _file_findings(f: str, r: dict[str, Any], d: dict[str, Any]) -> list[Finding]:
    """The findings one file gets on its own: the 12-bit defect and BitsStored problems."""
    findings: list[Finding] = []
    if d.get("intercept_defect"):
        findings.append(
            Finding(
                "dicom_rescale_12bit",
                (f,),
                f"BitsStored 12, unsigned, RescaleIntercept {d.get('intercept')}: air is stored wrapped to the top "
                "of the 12-bit range",
            )
        )
    return findings + _bits_findings(f, r, d)


def _shared_problems(d: dict[str, Any]) -> list[tuple[str, str]]:
    """``(kind, detail)`` of header quirks reported once for all the files that share them."""
    out = []
    if d.get("photometric") == "MONOCHROME1":
        out.append(("dicom_monochrome1", "MONOCHROME1 (inverted grey scale)"))
    problem = window_problem(d)
    if problem:
        out.append(("dicom_window", problem))
    return out


def _modality_finding(files: Sequence[str], modalities: dict[str, list[int]]) -> list[Finding]:
    if len(modalities) <= 1:
        return []
    common = max(modalities, key=lambda m: len(modalities[m]))
    counts = ", ".join(f"{m} {len(v)}" for m, v in sorted(modalities.items(), key=lambda kv: -len(kv[1])))
    minority = tuple(files[k] for m, v in modalities.items() if m != common for k in v)
    return [Finding("dicom_mixed_modality", minority, f"modalities: {counts}")]


def dicom_findings(files: Sequence[str], records: Sequence[dict[str, Any]]) -> list[Finding]:
    """Header findings of the readable DICOM files: per file, per shared quirk, per series and across modalities.

    Args:
        files: Audit names.
        records: The scan's summaries (DICOM ones carry a ``dicom`` header dict).

    Returns:
        The findings.
    """
    findings: list[Finding] = []
    series: dict[str, list[int]] = defaultdict(list)
    modalities: dict[str, list[int]] = defaultdict(list)
    grouped: dict[tuple[str, str], list[str]] = defaultdict(list)
    for k, r in enumerate(records):
        d = r.get("dicom")
        if not r.get("ok") or d is None:
            continue
        modalities[d.get("modality") or "(none)"].append(k)
        if d.get("series"):
            series[d["series"]].append(k)
        findings += _file_findings(files[k], r, d)
        for key in _shared_problems(d):
            grouped[key].append(files[k])
    # Header quirks usually come per scanner or export: one finding per distinct problem, all its files listed.
    for (kind, detail), members in grouped.items():
        findings.append(Finding(kind, tuple(members), f"{len(members)} file(s): {detail}"))
    for uid, members in series.items():
        findings.extend(series_findings(uid, [files[k] for k in members], [records[k]["dicom"] for k in members]))
    return findings + _modality_finding(files, modalities)


def window_problem(d: dict[str, Any]) -> str | None:
    """What is wrong with a header's WindowCenter / WindowWidth, or None when they look usable."""
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


def _position_findings(label: str, files: list[str], zs: list[float]) -> list[Finding]:
    """Uneven steps and gaps of whole missing slices along ImagePositionPatient z."""
    order = np.argsort(zs, kind="stable")
    z = np.asarray(zs, dtype=np.float64)[order]
    diffs = np.diff(z)
    step = float(np.median(diffs))
    if step <= 1e-6:
        return [Finding("dicom_slice_spacing", tuple(files), f"series {label}: slices share one position")]
    out: list[Finding] = []
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
                    f"series {label}: spacing {d:.3g} mm between these slices, the series' step is {step:.3g} mm",
                )
            )
    if missing:
        out.append(
            Finding(
                "dicom_missing_slices",
                tuple(files),
                f"series {label}: {missing} slice(s) missing at {step:.3g} mm spacing ({'; '.join(gaps[:3])})",
            )
        )
    return out


def _instance_findings(label: str, files: list[str], nums: list[float]) -> list[Finding]:
    """Holes and repeats in InstanceNumber (for series without ImagePositionPatient)."""
    out: list[Finding] = []
    values = sorted(int(v) for v in nums)
    holes = sorted(set(range(values[0], values[-1] + 1)) - set(values))
    if holes:
        out.append(
            Finding(
                "dicom_missing_slices",
                tuple(files),
                f"series {label}: instance numbers {', '.join(map(str, holes[:10]))} missing "
                "(no ImagePositionPatient to check spacing)",
            )
        )
    if len(set(values)) < len(values):
        out.append(Finding("dicom_slice_spacing", tuple(files), f"series {label}: repeated instance numbers"))
    return out


def series_findings(uid: str, files: list[str], headers: list[dict[str, Any]]) -> list[Finding]:
    """Spacing and missing-slice findings of one series: by slice position, else by instance number.

    Args:
        uid: The SeriesInstanceUID.
        files: The series' audit names.
        headers: Their header dicts.

    Returns:
        The findings (none for a series of fewer than 3 slices).
    """
    if len(files) < _MIN_SERIES:
        return []
    label = uid if len(uid) <= 24 else "..." + uid[-21:]
    zs = [h.get("z") for h in headers]
    if all(z is not None for z in zs):
        return _position_findings(label, files, zs)
    nums = [h.get("instance") for h in headers]
    if all(v is not None for v in nums):
        return _instance_findings(label, files, nums)
    return []
