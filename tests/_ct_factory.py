"""A synthetic head-CT dataset for series tests: series of slices where a lesion spans several adjacent slices.

Every series is a head (an ellipse of brain inside a bright skull) seen on ``n_slices`` axial slices. Some series
carry one or two lesions: a bright blob whose subtype decides where it sits (epidural / subdural at the rim,
intraventricular in the centre, intraparenchymal in between, subarachnoid as a thin crescent), spanning 3 to 7
adjacent slices. The blob is faint on the first and last slice of its span.

``mimics`` adds look-alikes: a blob of a lesion's size, place and brightness on one slice only, labelled negative
(as a calcification or a beam-hardening streak on one head-CT slice looks like blood). One slice alone cannot tell
a look-alike from a lesion; its neighbours can, since a bleed spans several slices: the case neighbour context is
meant for. With ``mimics=0`` (the default) the files are those of earlier versions.

PNG (uint8, brain window already applied) or DICOM (int16 HU with a -1024 intercept, real ImagePositionPatient /
ImageOrientationPatient, RSNA-like random file names) plus a table labels.csv with image, patient_id, series_id,
slice_index and one 0/1 column per label (``any`` = any of the others).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

RSNA_LABELS = ("epidural", "intraparenchymal", "intraventricular", "subarachnoid", "subdural", "any")

# Where each subtype's blob sits, as a fraction of the head radius (centre distance), and its radius in pixels at
# 128 px (scaled with the image size).
_PLACE = {
    "epidural": (0.78, 7.0),
    "subdural": (0.82, 5.0),
    "intraparenchymal": (0.45, 8.0),
    "intraventricular": (0.08, 6.0),
    "subarachnoid": (0.62, 4.0),
}


def _head(size: int, rng: np.random.Generator) -> np.ndarray:
    """HU image of a plain head slice: air, skull ring, brain with texture."""
    yy, xx = np.mgrid[:size, :size].astype(np.float32)
    c = size / 2
    r = ((yy - c) / (0.42 * size)) ** 2 + ((xx - c) / (0.36 * size)) ** 2
    img = np.full((size, size), -1000.0, dtype=np.float32)
    img[r <= 1.0] = 800.0  # skull
    img[r <= 0.85] = 35.0  # brain
    img += rng.normal(0, 6, img.shape).astype(np.float32) * (r <= 1.0)
    return img


def make_ct_dataset(
    root: str | Path,
    n_series: int = 40,
    n_slices: int = 24,
    size: int = 128,
    seed: int = 0,
    dicom: bool = False,
    labels: Sequence[str] = RSNA_LABELS,
    mimics: float = 0.0,
) -> Path:
    """Write the dataset under ``root`` and return the path of its table (labels.csv).

    Args:
        root: Output folder (created).
        n_series: Series (one per patient).
        n_slices: Slices per series.
        size: Image side in pixels.
        seed: Random seed (same seed, same files).
        dicom: DICOM slices with geometry instead of PNG.
        labels: Label columns; subtypes not in ``_PLACE`` are never positive except ``any``.
        mimics: Mean number of single-slice look-alikes per series (Poisson), each on a slice whose neighbours hold
            no finding; drawn from a random stream of their own, so the lesions are the same as with 0.

    Returns:
        Path of labels.csv (image paths relative to ``root``).
    """
    import cv2
    import pandas as pd

    root = Path(root)
    rng = np.random.default_rng(seed)
    mimic_rng = np.random.default_rng([seed, 1])
    subtypes = [name for name in labels if name in _PLACE]
    rows = []
    for s in range(n_series):
        series_id = f"S{s:03d}"
        patient = f"P{s:03d}"
        volume = np.stack([_head(size, rng) for _ in range(n_slices)])
        truth = np.zeros((n_slices, len(labels)), dtype=np.int64)
        # Two series in three carry lesions, so positives and negatives both show up in every fold.
        n_lesions = 0 if s % 3 == 2 else int(rng.integers(1, 3))
        for _ in range(n_lesions if subtypes else 0):
            kind = subtypes[int(rng.integers(len(subtypes)))]
            span = min(int(rng.integers(3, 8)), n_slices)
            start = int(rng.integers(0, n_slices - span + 1))
            blob = _blob(size, kind, rng)
            for k in range(span):
                # Faint at both ends of the span, strong in the middle.
                edge = k in (0, span - 1)
                volume[start + k][blob] += 12.0 if edge else 40.0
                truth[start + k, labels.index(kind)] = 1
        if mimics > 0 and subtypes:
            _add_mimics(volume, truth, mimic_rng, mimics, size)
        if "any" in labels:
            others = [i for i, name in enumerate(labels) if name != "any"]
            truth[:, labels.index("any")] = truth[:, others].max(axis=1)
        tilt = np.deg2rad(rng.uniform(0, 15)) if dicom else 0.0
        for z in range(n_slices):
            name = f"ID_{rng.integers(16**9):09x}"
            if dicom:
                rel = f"{series_id}/{name}.dcm"
                _write_ct_slice(root / rel, volume[z], z, n_slices, series_id, patient, tilt)
            else:
                rel = f"{series_id}/{name}.png"
                u8 = np.clip((volume[z] - 0.0) / 80.0 * 255.0, 0, 255).astype(np.uint8)  # brain window 40/80
                (root / rel).parent.mkdir(parents=True, exist_ok=True)
                cv2.imwrite(str(root / rel), u8)
            rows.append([rel, patient, series_id, z, *truth[z].tolist()])
    table = pd.DataFrame(rows, columns=["image", "patient_id", "series_id", "slice_index", *labels])
    path = root / "labels.csv"
    table.to_csv(path, index=False)
    return path


def _blob(size: int, kind: str, rng: np.random.Generator) -> np.ndarray:
    """Mask of a blob at a random angle, at the distance and radius of ``kind``."""
    dist, radius = _PLACE[kind]
    angle = rng.uniform(0, 2 * np.pi)
    cy = size / 2 + dist * 0.36 * size * np.sin(angle)
    cx = size / 2 + dist * 0.30 * size * np.cos(angle)
    rad = radius * size / 128
    yy, xx = np.mgrid[:size, :size]
    return ((yy - cy) ** 2 + (xx - cx) ** 2) <= rad**2


def _add_mimics(volume: np.ndarray, truth: np.ndarray, rng: np.random.Generator, mean: float, size: int) -> None:
    """Bright lesion-like blobs, each on one slice whose neighbours (and itself) hold no finding; labels untouched."""
    n = volume.shape[0]
    found = truth.max(axis=1) > 0
    free = [z for z in range(n) if not found[max(z - 1, 0) : z + 2].any()]
    kinds = list(_PLACE)
    for z in rng.permutation(free)[: int(rng.poisson(mean))]:
        volume[int(z)][_blob(size, kinds[int(rng.integers(len(kinds)))], rng)] += 40.0


def _write_ct_slice(
    path: Path, hu: np.ndarray, z: int, n: int, series: str, patient: str, tilt: float, spacing: float = 5.0
) -> None:
    """One CT slice: stored = HU + 1024, gantry tilt ``tilt`` (radians) about the x axis."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = f"1.2.826.0.1.{int(patient[1:]) + 1}"
    ds.SeriesInstanceUID = f"1.2.826.0.1.{int(patient[1:]) + 1}.{int(series[1:]) + 1}"
    ds.PatientID = patient
    ds.Modality = "CT"
    ds.InstanceNumber = z + 1
    # The table moves along z; a tilted gantry tilts the image plane, not the table motion.
    ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, float(np.cos(tilt)), float(-np.sin(tilt))]
    ds.ImagePositionPatient = [-120.0, -120.0, float(z * spacing)]
    ds.SliceThickness = spacing
    ds.PixelSpacing = [0.5, 0.5]
    ds.RescaleSlope = 1.0
    ds.RescaleIntercept = -1024.0
    ds.WindowCenter, ds.WindowWidth = 40.0, 80.0
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = hu.shape
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.PixelData = np.clip(np.round(hu + 1024.0), 0, 4095).astype(np.uint16).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
