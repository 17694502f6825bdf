"""Image-quality findings from the scan's summaries: blank, dark and low-information images judged on the range
their format really uses, and odd sizes, aspect ratios and channel counts.
"""

from __future__ import annotations

import os
from collections import Counter, defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np

from medkit.audit.report import Finding, Thresholds

__all__ = [
    "PROJECTION_MODALITIES",
    "DEPTH_OUTLIERS",
    "bits_for",
    "stored_depth_max",
    "intensity_ranges",
    "intensity_findings",
    "geometry_findings",
]

#: DICOM modalities whose stored values have an absolute meaning (projection radiography): judged on BitsStored.
PROJECTION_MODALITIES = {"CR", "DX", "MG", "RF", "XA", "IO", "PX", "RG", "DR", "OT", ""}
_CHANNEL_NAMES = {1: "grey", 2: "grey+alpha", 3: "colour", 4: "colour+alpha"}

#: An intensity range ``(low, high)``; None for a CT image, judged in HU.
Range = tuple[float, float] | None


def bits_for(maximum: float) -> int:
    """The smallest common bit depth (8, 10, 12, 14, 16; else 32) that holds ``maximum``."""
    for bits in (8, 10, 12, 14, 16):
        if maximum <= (1 << bits) - 1:
            return bits
    return 32


#: Share of a group's images that may reach above the depth the rest use (burned-in markers, a few true 16-bit
#: files among 12-bit exports) without raising the depth every image is judged on.
DEPTH_OUTLIERS = 0.1


def stored_depth_max(maxima: Sequence[float]) -> float:
    """The maximum a group of wide-integer images really uses: the (1 - `DEPTH_OUTLIERS`) quantile of their maxima.

    A 12-bit image in a 16-bit PNG is judged on 0..4095, as DICOM BitsStored is used for DICOM: the container says
    16 bits, the data say 12. One image with a hot pixel at 65535 does not move a whole 12-bit set to 16 bits (that
    image is judged on its own bulk, see `intensity_ranges`).
    """
    if not len(maxima):
        return 0.0
    return float(np.quantile(np.asarray(maxima, dtype=np.float64), 1.0 - DEPTH_OUTLIERS, method="lower"))


def _stored_bits_range(d: dict[str, Any]) -> tuple[float, float]:
    """What BitsStored can hold after the rescale (so 10-bit and 15-bit radiographs are each judged on their depth)."""
    bits = int(d["bits_stored"])
    signed = int(d.get("pixel_representation") or 0) == 1
    s_lo, s_hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
    slope, intercept = d.get("slope") or 1.0, d.get("intercept") or 0.0
    lo, hi = sorted((s_lo * slope + intercept, s_hi * slope + intercept))
    return (lo, hi) if hi > lo else (lo, lo + 1.0)


def _judged_range(r: dict[str, Any], dtype: str, gmin: float, gmax: float) -> tuple[Range, bool]:
    """The range one image is judged on, and whether it is its own (relative intensities); see `intensity_ranges`."""
    d = r.get("dicom")
    if d is not None and d.get("modality") == "CT":
        return None, False  # judged in HU
    if d is not None and d.get("modality") not in PROJECTION_MODALITIES:
        # MR, US, PET...: intensities are relative, so only the image's own range means anything.
        return ((r["min"], r["max"]) if r["max"] > r["min"] else (r["min"], r["min"] + 1.0)), True
    if d is not None and d.get("bits_stored") and r["channels"] == 1:
        return _stored_bits_range(d), False
    if dtype in ("uint8", "bool"):
        return (0.0, 255.0 if dtype == "uint8" else 1.0), False
    if dtype.startswith("uint") and d is None:
        # 10/12/14-bit data is stored in 16-bit containers: judged on the depth the group's data use (gmax, a robust
        # group maximum), or the image's own bulk (its 99th percentile) when that needs more bits.
        return (0.0, float((1 << max(bits_for(gmax), bits_for(r["p99"]))) - 1)), False
    if dtype.startswith("float") and d is None and gmin >= 0 and gmax <= 1.0:
        return (0.0, 1.0), False
    return ((gmin, gmax) if gmax > gmin else (gmin, gmin + 1.0)), False


def intensity_ranges(files: Sequence[str], records: Sequence[dict[str, Any]]) -> tuple[list[Range], set[int]]:
    """The intensity range each image is judged on (None: CT in HU), and the images judged on their own range.

    The range is the dtype's (8 bit), the bit depth its format group's data use (16-bit containers: most images'
    maximum, or the image's own 99th percentile when higher; `stored_depth_max`), BitsStored
    (radiograph DICOM), or the image's own for modalities whose intensities are relative (MR, US, ...).

    Args:
        files: Audit names (their suffix, with the DICOM modality, makes a format group).
        records: The scan's summaries.

    Returns:
        ``(ranges, relative)``: a range per file (None also for unreadable files) and the indices judged on
        their own range.
    """
    groups: dict[tuple[str, str], list[int]] = defaultdict(list)
    for k, (f, r) in enumerate(zip(files, records, strict=True)):
        if r.get("ok"):
            modality = (r.get("dicom") or {}).get("modality", "")
            groups[(os.path.splitext(f)[1].lower() + modality, r["dtype"])].append(k)
    out: list[Range] = [None] * len(files)
    relative: set[int] = set()
    for (_, dtype), idx in groups.items():
        gmin = min(records[k]["min"] for k in idx)
        gmax = max(records[k]["max"] for k in idx)
        if dtype.startswith("uint") and dtype != "uint8":
            gmax = stored_depth_max([records[k]["max"] for k in idx])
        for k in idx:
            out[k], own = _judged_range(records[k], dtype, gmin, gmax)
            if own:
                relative.add(k)
    return out, relative


def _ct_blank(f: str, r: dict[str, Any], th: Thresholds) -> Finding | None:
    tissue = r.get("tissue_frac") or 0.0
    if tissue < th.ct_tissue or r["std"] < 2.0:
        return Finding(
            "blank",
            (f,),
            f"CT slice without body: {100 * tissue:.2f}% of pixels above -500 HU, HU {r['min']:.0f}..{r['max']:.0f}",
        )
    return None


def _range_finding(
    f: str, r: dict[str, Any], rng: tuple[float, float], relative: bool, th: Thresholds
) -> Finding | None:
    """blank, dark or low_information for an image judged on ``rng`` (at most one, in that order)."""
    lo, hi = rng
    span = hi - lo
    # No absolute scale for relative intensities: blank only when constant, low information only by entropy.
    std_frac = 1.0 if relative else r["std"] / span
    if r["max"] == r["min"] or std_frac < th.blank_std or r["mode_frac"] >= th.blank_mode:
        return Finding(
            "blank",
            (f,),
            f"near-constant: value {r['min']:.6g}..{r['max']:.6g}, std {r['std']:.3g} on a {r['dtype']} range of "
            f"{span:.6g}, {100 * r['mode_frac']:.1f}% of pixels at one value",
        )
    if not relative and (r["p99"] - lo) / span < th.dark:
        return Finding(
            "dark",
            (f,),
            f"99th percentile {r['p99']:.6g} is {100 * (r['p99'] - lo) / span:.1f}% "
            f"of the {r['dtype']} range {lo:.6g}..{hi:.6g}",
        )
    if r["entropy"] < th.low_entropy or std_frac < th.low_std:
        if relative:
            detail = (
                f"entropy {r['entropy']:.2f} bits ({r['dicom'].get('modality') or 'DICOM'} image: "
                "relative intensities, judged on entropy only)"
            )
        else:
            detail = f"entropy {r['entropy']:.2f} bits, std {r['std']:.3g} ({100 * std_frac:.2f}% of the range)"
        return Finding("low_information", (f,), detail)
    return None


def intensity_findings(
    files: Sequence[str], records: Sequence[dict[str, Any]], th: Thresholds
) -> tuple[list[Finding], set[int]]:
    """blank, dark and low-information images, each judged on the range its format uses (`intensity_ranges`).

    Args:
        files: Audit names.
        records: The scan's summaries.
        th: The thresholds.

    Returns:
        ``(findings, blank)``: the findings and the indices of the blank images.
    """
    findings: list[Finding] = []
    blank: set[int] = set()
    ranges, relative = intensity_ranges(files, records)
    for k, (f, r, rng) in enumerate(zip(files, records, ranges, strict=True)):
        if not r.get("ok"):
            continue
        found = _ct_blank(f, r, th) if rng is None else _range_finding(f, r, rng, k in relative, th)
        if found is not None:
            findings.append(found)
            if found.kind == "blank":
                blank.add(k)
    return findings, blank


def _shape_findings(
    files: Sequence[str], records: Sequence[dict[str, Any]], ok: list[int], th: Thresholds
) -> list[Finding]:
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
    return findings


def _channel_findings(files: Sequence[str], records: Sequence[dict[str, Any]], ok: list[int]) -> list[Finding]:
    eff = Counter(records[k]["eff_channels"] for k in ok)
    if len(eff) <= 1:
        return []
    findings: list[Finding] = []
    common, n_common = eff.most_common(1)[0]
    for c, n in eff.items():
        if c != common:
            idx = [k for k in ok if records[k]["eff_channels"] == c]
            findings.append(
                Finding(
                    "mixed_channels",
                    tuple(files[k] for k in idx),
                    f"{n} {_CHANNEL_NAMES.get(c, str(c))} images among {n_common} "
                    f"{_CHANNEL_NAMES.get(common, str(common))} ones" + _diff_note(records, idx),
                )
            )
    return findings


def _diff_note(records: Sequence[dict[str, Any]], idx: list[int]) -> str:
    """The measured difference between the colour channels of images stored as colour (on a 0..255 scale)."""
    from medkit.audit._scan import GREY_MAX_DIFF, GREY_MEAN_DIFF

    diffs = [records[k]["chan_diff"] for k in idx if records[k].get("chan_diff")]
    if not diffs:
        return ""
    mx = [d[0] for d in diffs]
    mean = [d[1] for d in diffs]
    return (
        f"; colour channels differ by up to {min(mx):.0f}..{max(mx):.0f} of 255 "
        f"(mean {min(mean):.2f}..{max(mean):.2f}; grey with noise below {GREY_MAX_DIFF:.0f} / {GREY_MEAN_DIFF:.0f} "
        "counts as grey)"
    )


def geometry_findings(files: Sequence[str], records: Sequence[dict[str, Any]], th: Thresholds) -> list[Finding]:
    """Odd sizes and aspect ratios against the median, and minority channel counts (grey stored as RGB is grey).

    Args:
        files: Audit names.
        records: The scan's summaries.
        th: The thresholds.

    Returns:
        The findings (none with fewer than 3 readable images: there is no "rest" to compare with).
    """
    ok = [k for k, r in enumerate(records) if r.get("ok")]
    if len(ok) < 3:
        return []
    return _shape_findings(files, records, ok, th) + _channel_findings(files, records, ok)
