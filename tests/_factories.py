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
