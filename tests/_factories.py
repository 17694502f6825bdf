"""Small synthetic files that several test modules write (imported by tests only)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np


def write_dicom(
    path: Path,
    stored: np.ndarray | None,
    *,
    slope: float | None = 1.0,
    intercept: float | None = -1024.0,
    bits_stored: int = 12,
    signed: bool = False,
    photometric: str = "MONOCHROME2",
    modality: str = "CT",
    window: tuple | None = None,
    z: float | None = 0.0,
    instance: int = 1,
    patient: str = "P1",
    series: str = "1.2.3.4.5",
    frames: int | None = None,
    preamble: bool = True,
    pixel_spacing: Sequence[float] | None = (0.5, 0.75),
) -> Path:
    """A minimal uncompressed DICOM (16 bits allocated) holding the given stored values.

    ``stored=None`` writes a file without pixel data; ``z=None`` leaves out ImagePositionPatient.
    """
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
    ds.StudyInstanceUID = "1.2.3.4"
    ds.SeriesInstanceUID = series
    ds.PatientID = patient
    ds.Modality = modality
    ds.InstanceNumber = instance
    if z is not None:
        ds.ImagePositionPatient = [-10.5, 20.25, z]
        ds.SliceThickness = 2.5
    if pixel_spacing is not None:
        ds.PixelSpacing = list(pixel_spacing)
    if slope is not None:
        ds.RescaleSlope = slope
    if intercept is not None:
        ds.RescaleIntercept = intercept
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    if stored is not None:
        stored = np.asarray(stored)
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = photometric
        ds.Rows, ds.Columns = stored.shape[-2:]
        if frames:
            ds.NumberOfFrames = frames
        ds.BitsAllocated = 16
        ds.BitsStored = bits_stored
        ds.HighBit = bits_stored - 1
        ds.PixelRepresentation = 1 if signed else 0
        ds.PixelData = stored.astype(np.int16 if signed else np.uint16).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=preamble)
    return path


def write_medmnist(
    path: Path, images: dict[str, np.ndarray], labels: dict[str, np.ndarray], compressed: bool = False
) -> Path:
    """An .npz in the MedMNIST layout: ``<split>_images`` and ``<split>_labels`` for each split given."""
    arrays = {**{f"{s}_images": v for s, v in images.items()}, **{f"{s}_labels": v for s, v in labels.items()}}
    path.parent.mkdir(parents=True, exist_ok=True)
    (np.savez_compressed if compressed else np.savez)(path, **arrays)
    return path


def synthetic_medmnist(
    path: Path, counts: Sequence[int] = (40, 16, 16), size: int = 28, seed: int = 0, learnable: bool = True
) -> Path:
    """A binary MedMNIST-layout archive with train/val/test splits of ``counts`` images, labels alternating 0/1.

    ``learnable``: label 1 images are brighter (grey 170 vs 80, noise sd 25), so a model can learn them; otherwise
    the pixels are uniform noise.
    """
    rng = np.random.default_rng(seed)
    images, labels = {}, {}
    for split, count in zip(("train", "val", "test"), counts, strict=True):
        y = np.arange(count) % 2
        if learnable:
            base = np.where(y[:, None, None] == 1, 170, 80)
            images[split] = np.clip(base + rng.normal(0, 25, (count, size, size)), 0, 255).astype(np.uint8)
        else:
            images[split] = rng.integers(0, 256, (count, size, size), dtype=np.uint8)
        labels[split] = y[:, None].astype(np.uint8)
    return write_medmnist(path, images, labels)


def png_table(
    root: Path, labels: dict[str, list[int]], n: int, rgb: bool = False, folds: int = 2, seed: int = 0
) -> Path:
    """Random 40x40 PNGs under root/img plus root/labels.csv with the given label columns, patient ids and folds."""
    import cv2
    import pandas as pd

    rng = np.random.default_rng(seed)
    (root / "img").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        shape = (40, 40, 3) if rgb else (40, 40)
        cv2.imwrite(str(root / "img" / f"im{i:03d}.png"), rng.integers(0, 256, shape, dtype=np.uint8))
        row = {"image": f"img/im{i:03d}.png", "patient_id": f"p{i // 2}", "fold": (i // 2) % folds}
        row.update({k: v[i] for k, v in labels.items()})
        rows.append(row)
    path = root / "labels.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


#: Image names as each competition's test data has them (a path, a stem or bare hex for RSNA), and their ids.
COMPETITION_IMAGES: dict[str, list[tuple[str, str]]] = {
    "rsna": [
        ("stage_2_test/ID_0fbf6a978.dcm", "ID_0fbf6a978"),
        ("ID_000000e27", "ID_000000e27"),
        ("00000aa11", "ID_00000aa11"),
    ],
    "ranzcr": [
        (f"test/1.2.826.0.1.3680043.8.498.{n}.jpg", f"1.2.826.0.1.3680043.8.498.{n}")
        for n in ("10000428974990117276582711948006105617", "10001920385826381232337441004826813", "1002")
    ],
    "panda": [
        (f"tiles/{h}.png", h)
        for h in (
            "0005f7aaab2800f6170c399693a96917",
            "000920ad0b612851f8e01bcc880d9b3d",
            "0018ae58b01bdadc8e347995b69f99aa",
        )
    ],
    "siim-isic": [(f"jpeg/test/ISIC_{n}.jpg", f"ISIC_{n}") for n in ("0052060", "0052349", "0058510")],
}


def write_prediction_table(
    path: Path, images: Sequence[str], labels: Sequence[str], *, grades: Sequence[int] | None = None, seed: int = 0
) -> Path:
    """A prediction table as `medkit predict` writes it (with its sidecar): ``image``, one random ``<label>_prob``
    per label, and ``grade`` when ``grades`` are given (an ordinal run: labels are then its ``>k`` outputs)."""
    import pandas as pd

    from medkit.data.predictions import PredictionsMeta, write_predictions

    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({"image": list(images)})
    for label in labels:
        frame[f"{label}_prob"] = rng.uniform(0.05, 0.95, len(images)).round(4)
    target = "ordinal" if grades is not None else ("binary" if len(labels) == 1 else "multilabel")
    if grades is not None:
        frame["grade"] = list(grades)
    meta = PredictionsMeta(target=target, label_names=tuple(labels), num_classes=len(labels) + 1 if grades else 0)
    return write_predictions(path, frame, meta)
