"""MedMNIST archives: one ``.npz`` per dataset holding ``train_images``/``train_labels``, ``val_*`` and ``test_*``.

`load_medmnist` reads a whole archive as ``{split: (images, labels)}``; `medmnist_image_size` reads only the
array header of ``train_images`` to learn the image side before anything is loaded. Both are re-exported by
`medkit.io.readers`.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from medkit.errors import ImageReadError
from medkit.io._checks import check_file

__all__ = ["MEDMNIST_SPLITS", "MEDMNIST_LABELS", "load_medmnist", "medmnist_image_size", "medmnist_label_names"]

#: The splits of a MedMNIST archive, in the order `load_medmnist` returns them.
MEDMNIST_SPLITS: tuple[str, ...] = ("train", "val", "test")

_ORGAN = (
    "bladder", "femur-left", "femur-right", "heart", "kidney-left", "kidney-right", "liver", "lung-left",
    "lung-right", "pancreas", "spleen",
)  # fmt: skip
#: What each label value (single-label sets) or label column (chestmnist) of the 2-D MedMNIST v2 sets means, keyed
#: by the file's flag; the .npz files carry no names (MedMNIST's published INFO table).
MEDMNIST_LABELS: dict[str, tuple[str, ...]] = {
    "pathmnist": (
        "adipose", "background", "debris", "lymphocytes", "mucus", "smooth muscle", "normal colon mucosa",
        "cancer-associated stroma", "colorectal adenocarcinoma epithelium",
    ),
    "chestmnist": (
        "atelectasis", "cardiomegaly", "effusion", "infiltration", "mass", "nodule", "pneumonia", "pneumothorax",
        "consolidation", "edema", "emphysema", "fibrosis", "pleural", "hernia",
    ),
    "dermamnist": (
        "actinic keratoses and intraepithelial carcinoma", "basal cell carcinoma", "benign keratosis-like lesions",
        "dermatofibroma", "melanoma", "melanocytic nevi", "vascular lesions",
    ),
    "octmnist": ("choroidal neovascularization", "diabetic macular edema", "drusen", "normal"),
    "pneumoniamnist": ("normal", "pneumonia"),
    "retinamnist": ("grade 0", "grade 1", "grade 2", "grade 3", "grade 4"),
    "breastmnist": ("malignant", "normal, benign"),
    "bloodmnist": (
        "basophil", "eosinophil", "erythroblast", "immature granulocytes", "lymphocyte", "monocyte", "neutrophil",
        "platelet",
    ),
    "tissuemnist": (
        "collecting duct, connecting tubule", "distal convoluted tubule", "glomerular endothelial cells",
        "interstitial endothelial cells", "leukocytes", "podocytes", "proximal tubule segments",
        "thick ascending limb",
    ),
    "organamnist": _ORGAN,
    "organcmnist": _ORGAN,
    "organsmnist": _ORGAN,
}  # fmt: skip


def load_medmnist(path: str | os.PathLike[str]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Load a MedMNIST .npz (``train_images``, ``train_labels``, ``val_*``, ``test_*``) as a ready dataset.

    Args:
        path: The MedMNIST file, e.g. ``breastmnist.npz``.

    Returns:
        ``{split: (images, labels)}`` for each split present, in the order train, val, test. Images are uint8
        (N, H, W) or (N, H, W, C) (3D sets: (N, D, H, W)); labels are (N, K) (K=1 for single-label sets).

    Raises:
        ImageReadError: When the file is not a MedMNIST archive or a split's images and labels disagree.
    """
    path = Path(path)
    check_file(path)
    try:
        npz = np.load(path, allow_pickle=False)
    except Exception as exc:
        raise ImageReadError(
            f"{path}: cannot read as .npz ({type(exc).__name__}: {exc})",
            hint="re-download the MedMNIST file (medmnist.com lists each file's md5)",
        ) from exc
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    with npz:
        for split in MEDMNIST_SPLITS:
            pair = _read_split(npz, path, split)
            if pair is not None:
                out[split] = pair
    if not out:
        raise ImageReadError(
            f"{path}: not a MedMNIST archive (arrays: {', '.join(npz.files)})",
            hint="MedMNIST files hold train_images/train_labels, val_*, test_*; else use read_image(path, key=...)",
        )
    return out


def _read_split(npz: Any, path: Path, split: str) -> tuple[np.ndarray, np.ndarray] | None:
    """(images, labels (N, K)) of one split, None when the archive has neither array, checked for agreement."""
    ik, lk = f"{split}_images", f"{split}_labels"
    if ik not in npz.files and lk not in npz.files:
        return None
    if ik not in npz.files or lk not in npz.files:
        have, missing = (ik, lk) if ik in npz.files else (lk, ik)
        raise ImageReadError(f"{path}: has {have} but not {missing}", hint="re-download the file")
    try:
        images, labels = npz[ik], npz[lk]
    except Exception as exc:  # a truncated member fails only when read
        raise ImageReadError(f"{path}: cannot read '{ik}'/'{lk}' ({exc})", hint="re-download the file") from exc
    if labels.ndim == 1:
        labels = labels[:, None]
    if len(images) != len(labels):
        raise ImageReadError(
            f"{path}: {ik} has {len(images)} images but {lk} has {len(labels)} rows",
            hint="the archive is inconsistent; re-download it",
        )
    if images.dtype != np.uint8:
        raise ImageReadError(f"{path}: {ik} is {images.dtype}, MedMNIST images are uint8")
    return images, labels


def medmnist_image_size(path: str | os.PathLike[str]) -> int | None:
    """Side of the square images in a MedMNIST .npz (28, 64, 128 or 224), read from the array header only.

    Args:
        path: The MedMNIST file.

    Returns:
        The side in pixels; None when the file holds no ``train_images`` member or its images are not square
        2-D images (the full read with `load_medmnist` then reports what is wrong).
    """
    try:
        with zipfile.ZipFile(path) as zf, zf.open("train_images.npy") as fh:
            version = np.lib.format.read_magic(fh)
            read_header = (
                np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            )
            shape, _, _ = read_header(fh)  # the header only: no image is read
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return None
    if len(shape) not in (3, 4) or shape[1] != shape[2]:
        return None
    return int(shape[1])


def medmnist_label_names(path: str | os.PathLike[str]) -> tuple[str, ...]:
    """The meaning of each label of a MedMNIST file, from its flag (``breastmnist_64.npz`` -> ``breastmnist``).

    Returns:
        One name per label value (single-label sets) or per label column (chestmnist); ``()`` for a file whose
        name is not a 2-D MedMNIST flag.
    """
    stem = Path(path).stem.lower()
    flag, _, size = stem.rpartition("_")
    return MEDMNIST_LABELS.get(stem) or (MEDMNIST_LABELS.get(flag, ()) if size.isdigit() else ())
