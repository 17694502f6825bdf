"""The synthetic CT DICOM writer the benchmarks share (imported by benchmark scripts only)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def write_ct(path: str | Path, stored: np.ndarray, *, bits_stored: int = 12, signed: bool = False, **tags: Any) -> None:
    """An uncompressed single-frame CT slice (16 bits allocated, rescale -1024 / 1) holding ``stored``.

    ``tags`` are further DICOM attributes set as given (``PatientID="BENCH"``, ``WindowCenter=40``, ...).
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = CTImageStorage, meta.MediaStorageSOPInstanceUID, "CT"
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, bits_stored, bits_stored - 1, int(signed)
    ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
    for name, value in tags.items():
        setattr(ds, name, value)
    ds.PixelData = stored.tobytes()
    ds.save_as(path, enforce_file_format=True)
