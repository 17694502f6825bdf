"""Preprocessing to uint8 at the training size, and the image sources a dataset reads from.

`Preprocess` turns one file (or one in-memory array) into a **uint8 (H, W, C)** array at the training size plus a
margin for random crops: read, window (CT), map to 8 bits, map channels, resize. It is a frozen, picklable
dataclass so it can travel to worker processes, and `Preprocess.key` hashes its parameters for the cache.

Bit depth: 8-bit images are kept as they are. Other integer or float images (16-bit X-rays, DICOM without
``windows``) are mapped to 0..255 per image, either by min-max (``bit_depth="minmax"``: the darkest pixel -> 0, the
brightest -> 255) or by percentiles (``bit_depth="percentile"``: the ``percentiles`` values -> 0 and 255, clipped
outside, robust to a few hot pixels or burnt-in text). A constant image maps to 0.

Sources share one interface, ``len(source)``, ``source[i] -> uint8 (H, W, C)``, ``source.get_batch(rows) ->
uint8 (B, H, W, C)``: `FileSource` decodes on the fly, `ArraySource` wraps in-memory arrays (MedMNIST ``.npz``),
and `medkit.data.cache.UInt8Cache` reads a memory-mapped cache.

Image + mask: with ``masks`` (image file -> mask file) the mask becomes one more channel after the image channels
(PANDA-style 4-channel tile mosaics). It is read as the label values themselves (first channel of an RGB mask) and
resized with INTER_NEAREST, so no new label values appear; an image without a mask gets a channel of zeros.

CT windows on DICOM files take `medkit.io.dicom.dicom_windows` (one lookup table per window on the stored
values instead of float Hounsfield units: faster, and MONOCHROME1 windows are applied before the inversion).

This module imports numpy and (inside functions) cv2 and the readers; it does not import torch.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from medkit.errors import DataError, UsageError

__all__ = ["Preprocess", "Source", "FileSource", "ArraySource", "to_uint8", "PREPROCESS_VERSION"]

# Bumped whenever the pixels Preprocess produces for the same parameters change, so old caches are not reused.
# 2: windows on MONOCHROME1 DICOM files are applied before the inversion (dicom_windows).
PREPROCESS_VERSION = 2

_BIT_DEPTHS = ("minmax", "percentile")
_INTERPOLATIONS = ("auto", "area", "linear", "cubic", "nearest")


def _as_hw(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, (int, np.integer)):
        return int(size), int(size)
    hw = tuple(int(s) for s in size)
    if len(hw) != 2:
        raise UsageError(f"image size must be an int or (height, width), got {size!r}", hint="e.g. size=256")
    return hw  # type: ignore[return-value]


def to_uint8(img: np.ndarray, mode: str = "minmax", percentiles: tuple[float, float] = (0.5, 99.5)) -> np.ndarray:
    """Map an image of any numeric dtype to uint8 (uint8 input is returned unchanged).

    Args:
        img: Array of any shape.
        mode: ``minmax`` (per-image min -> 0, max -> 255) or ``percentile`` (per-image percentiles -> 0 / 255).
        percentiles: Low and high percentiles for ``percentile``.

    Returns:
        A uint8 array of the same shape.
    """
    if img.dtype == np.uint8:
        return img
    if img.dtype == np.bool_:
        return img.astype(np.uint8) * 255
    x = img.astype(np.float32, copy=False)
    if mode == "percentile":
        lo, hi = np.percentile(x, percentiles)
    else:
        lo, hi = float(x.min()), float(x.max())
    if not np.isfinite(lo) or not np.isfinite(hi) or hi <= lo:
        return np.zeros(img.shape, dtype=np.uint8)
    y = (x - lo) * (255.0 / (hi - lo))
    return np.clip(np.rint(y), 0, 255).astype(np.uint8)


@dataclass(frozen=True)
class Preprocess:
    """Read, window, map to 8 bits, map channels and resize one image to uint8 (H, W, C).

    Args:
        size: Training size, an int or (height, width).
        margin: Extra pixels on every side for random crops; the output is (h + 2*margin, w + 2*margin).
        channels: 1 or 3: gray inputs are repeated to this many channels, RGB inputs are kept (3) or converted to
            gray (1). Ignored when ``windows`` is set.
        windows: DICOM window names (``("brain", "subdural", "soft_tissue")``) giving one channel each; None for
            images that are not CT.
        bit_depth: How images that are not 8-bit map to 0..255: ``minmax`` or ``percentile`` (see module doc).
        percentiles: Low and high percentiles for ``bit_depth="percentile"``.
        interpolation: ``auto`` (INTER_AREA when shrinking, INTER_LINEAR when enlarging), or ``area``, ``linear``,
            ``cubic``, ``nearest``.
        masks: Image file -> mask file (a mapping or (image, mask) pairs): the mask is stacked as one more
            channel (label values, INTER_NEAREST). Images missing from it get a zero channel. None: no mask.
    """

    size: int | tuple[int, int] = 256
    margin: int = 0
    channels: int = 3
    windows: tuple[str, ...] | None = None
    bit_depth: str = "minmax"
    percentiles: tuple[float, float] = (0.5, 99.5)
    interpolation: str = "auto"
    masks: Mapping[str, str] | Sequence[tuple[str, str]] | None = None
    _hw: tuple[int, int] = field(init=False, repr=False, compare=False)
    _mask_of: dict[str, str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        hw = _as_hw(self.size)
        if min(hw) < 1:
            raise UsageError(f"image size must be positive, got {self.size!r}", hint="e.g. size=256")
        object.__setattr__(self, "size", hw)
        object.__setattr__(self, "_hw", hw)
        if self.margin < 0:
            raise UsageError(f"margin must be >= 0, got {self.margin}", hint="use margin=0 for no random-crop room")
        if self.windows is not None:
            windows = (self.windows,) if isinstance(self.windows, str) else tuple(self.windows)
            if not windows:
                raise UsageError("windows is empty", hint="give window names such as ('brain',) or None")
            object.__setattr__(self, "windows", windows)
        elif self.channels not in (1, 3):
            raise UsageError(f"channels must be 1 or 3, got {self.channels}", hint="use channels=1 or channels=3")
        if self.bit_depth not in _BIT_DEPTHS:
            raise UsageError(f"unknown bit_depth '{self.bit_depth}'", hint=f"use one of: {', '.join(_BIT_DEPTHS)}")
        if self.interpolation not in _INTERPOLATIONS:
            raise UsageError(
                f"unknown interpolation '{self.interpolation}'", hint=f"use one of: {', '.join(_INTERPOLATIONS)}"
            )
        lo, hi = (float(p) for p in self.percentiles)
        if not 0.0 <= lo < hi <= 100.0:
            raise UsageError(f"percentiles must satisfy 0 <= low < high <= 100, got {self.percentiles}")
        object.__setattr__(self, "percentiles", (lo, hi))
        if self.masks is not None:
            pairs = self.masks.items() if isinstance(self.masks, Mapping) else self.masks
            # absolute paths, so a cache (which passes absolute paths) finds the mask of every image
            norm = tuple(sorted((os.path.abspath(i), os.path.abspath(m)) for i, m in pairs))
            object.__setattr__(self, "masks", norm)
            object.__setattr__(self, "_mask_of", dict(norm))
        else:
            object.__setattr__(self, "_mask_of", {})

    @property
    def image_channels(self) -> int:
        """Channels of the image itself (windows, or ``channels``), before the mask channel."""
        return len(self.windows) if self.windows else self.channels

    @property
    def out_hw(self) -> tuple[int, int]:
        """Output (height, width): the training size plus twice the margin."""
        h, w = self._hw
        return h + 2 * self.margin, w + 2 * self.margin

    @property
    def out_channels(self) -> int:
        """Number of output channels (the image's, plus one for the mask)."""
        return self.image_channels + (1 if self.masks is not None else 0)

    @property
    def out_shape(self) -> tuple[int, int, int]:
        """Output (height, width, channels)."""
        return (*self.out_hw, self.out_channels)

    def params(self) -> dict[str, Any]:
        """The parameters as a JSON-friendly dict (stored with caches and runs)."""
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.init}
        d["size"] = list(self._hw)
        d["windows"] = list(self.windows) if self.windows else None
        d["percentiles"] = list(self.percentiles)
        if self.masks is None:
            d.pop("masks")  # keeps the parameters (and keys) of mask-free preprocessing as they were
        else:
            # the pairs can number in the thousands: record their count and a digest, not the list
            digest = hashlib.sha256("\n".join(f"{i}\0{m}" for i, m in self.masks).encode()).hexdigest()[:16]
            d["masks"] = {"pairs": len(self.masks), "sha256": digest}
        return d

    def key(self) -> str:
        """A short hash of the parameters (and the preprocessing version): equal keys give equal pixels.

        With ``masks`` the size and modification time of every mask file are part of the key, so a cache built
        before a mask changed is not reused.
        """
        record: dict[str, Any] = {"v": PREPROCESS_VERSION, "cls": type(self).__name__, **self.params()}
        if self.masks is not None:
            h = hashlib.sha256()
            for _, mask in self.masks:
                try:
                    st = os.stat(mask)
                    h.update(f"{mask}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
                except OSError:
                    h.update(f"{mask}\0missing\n".encode())
            record["mask_files"] = h.hexdigest()
        blob = json.dumps(record, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def __call__(self, path: str | os.PathLike[str]) -> np.ndarray:
        """Read one file and return uint8 (H, W, C).

        Raises:
            DataError: When the file cannot be read or its content does not fit the parameters.
        """
        from medkit.io.readers import detect_reader, read_image

        out = None
        if self.windows and detect_reader(path) == "dicom":
            out = self._dicom_windows(path)
        else:
            img = read_image(path)
            ds = None
            if self.windows and "dicom" in self.windows:
                import pydicom

                # The "dicom" window comes from the file's own WindowCenter / WindowWidth.
                ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
        try:
            out = self._resize(out) if out is not None else self.from_array(img, ds=ds, with_mask=False)
        except DataError as exc:
            raise DataError(f"{path}: {exc.message}", hint=exc.hint) from exc
        except Exception as exc:  # cv2 raises its own error type for shapes it cannot resize
            shape = out.shape if out is not None else img.shape
            raise DataError(f"{path}: cannot preprocess image of shape {shape}: {exc}") from exc
        if self.masks is None:
            return out
        return np.concatenate([out, self.mask_channel(path)], axis=2)

    def _dicom_windows(self, path: str | os.PathLike[str]) -> np.ndarray:
        """CT windows of a DICOM file at its own size, through the lookup-table path of `dicom_windows`."""
        from medkit.io.dicom import dicom_windows

        out = dicom_windows(path, list(self.windows or ()))
        if out.ndim != 3:
            raise DataError(
                f"{path}: CT windows need one slice, got {out.shape[0]} frames",
                hint="split the multi-frame file into slices, or drop --windows",
            )
        return out

    def mask_channel(self, path: str | os.PathLike[str]) -> np.ndarray:
        """The mask of image ``path`` as uint8 (H, W, 1) at the output size (zeros when it has no mask).

        Raises:
            DataError: When the mask file cannot be read or holds labels above 255.
        """
        from medkit.io.readers import read_image

        oh, ow = self.out_hw
        mask_path = self._mask_of.get(os.path.abspath(path))
        if mask_path is None:
            return np.zeros((oh, ow, 1), dtype=np.uint8)
        mask = np.asarray(read_image(mask_path))
        if mask.ndim == 3:
            mask = mask[:, :, 0]  # PANDA keeps the label in the first (red) channel
        if mask.ndim != 2:
            raise DataError(f"{mask_path}: a mask must be one 2-D label image, got shape {mask.shape}")
        if mask.dtype != np.uint8:
            if mask.size and (mask.min() < 0 or mask.max() > 255):
                raise DataError(
                    f"{mask_path}: mask labels must lie in 0..255, got {mask.min()}..{mask.max()}",
                    hint="store the mask as 8-bit label values",
                )
            mask = mask.astype(np.uint8)
        if mask.shape != (oh, ow):
            import cv2

            # nearest neighbour: a label mask must not get blended values between two classes
            mask = cv2.resize(np.ascontiguousarray(mask), (ow, oh), interpolation=cv2.INTER_NEAREST)
        return mask[:, :, None]

    def from_array(self, img: np.ndarray, ds: Any = None, with_mask: bool = True) -> np.ndarray:
        """Preprocess an in-memory image: (H, W) or (H, W, C), any dtype (float = Hounsfield units with windows).

        Args:
            img: The image.
            ds: The pydicom dataset, needed only for the ``dicom`` window.
            with_mask: With ``masks`` set, append a zero mask channel (an array has no mask file), so the
                shape is always `out_shape`.

        Returns:
            uint8 (H, W, C) with the shape `out_shape` (``image_channels`` channels when ``with_mask`` is False).

        Raises:
            DataError: For an array that is not 2-D or 3-D, or a multi-channel image given CT windows.
        """
        img = np.asarray(img)
        if img.ndim == 3 and img.shape[2] == 1:
            img = img[:, :, 0]
        if img.ndim not in (2, 3):
            raise DataError(f"expected an image of shape (H, W) or (H, W, C), got {img.shape}")
        if self.windows:
            if img.ndim != 2:
                raise DataError(
                    f"CT windows need a single-channel image in Hounsfield units, got shape {img.shape}",
                    hint="drop --windows for RGB images, or check that the file is a CT slice",
                )
            from medkit.io.dicom import multi_window

            out = self._resize(multi_window(img.astype(np.float32, copy=False), list(self.windows), ds=ds))
        else:
            out = to_uint8(img, self.bit_depth, self.percentiles)
            if out.ndim == 2 and self._interpolation(out.shape) != "cubic":
                # A gray image is resized before it is repeated to 3 channels: a third of the work for the same
                # pixels (area, linear and nearest treat every channel alike; cubic not always, so it keeps the order).
                out = self._map_channels(self._resize(out[:, :, None])[:, :, 0])
            else:
                out = self._resize(self._map_channels(out))
        if self.masks is not None and with_mask:
            out = np.concatenate([out, np.zeros((*out.shape[:2], 1), dtype=np.uint8)], axis=2)
        return out

    def _map_channels(self, img: np.ndarray) -> np.ndarray:
        import cv2

        if img.ndim == 2:
            # cvtColor copies the gray channel three times, 30x faster than np.repeat
            return (
                img[:, :, None] if self.channels == 1 else cv2.cvtColor(np.ascontiguousarray(img), cv2.COLOR_GRAY2RGB)
            )
        c = img.shape[2]
        if c == 4:  # RGBA: alpha carries no anatomy
            img, c = img[:, :, :3], 3
        if c == 3:
            if self.channels == 3:
                return img
            return cv2.cvtColor(np.ascontiguousarray(img), cv2.COLOR_RGB2GRAY)[:, :, None]
        if c == self.channels:
            return img
        raise DataError(
            f"image has {c} channels, cannot map to {self.channels}",
            hint="use channels=1 or 3 with gray or RGB images",
        )

    def _interpolation(self, shape: tuple[int, ...]) -> str:
        """The interpolation that resizes an image of ``shape`` to the output size."""
        if self.interpolation != "auto":
            return self.interpolation
        (oh, ow), (h, w) = self.out_hw, shape[:2]
        return "area" if oh <= h and ow <= w else "linear"

    def _resize(self, img: np.ndarray) -> np.ndarray:
        import cv2

        oh, ow = self.out_hw
        h, w = img.shape[:2]
        if (h, w) != (oh, ow):
            flag = {
                "area": cv2.INTER_AREA,
                "linear": cv2.INTER_LINEAR,
                "cubic": cv2.INTER_CUBIC,
                "nearest": cv2.INTER_NEAREST,
            }[self._interpolation(img.shape)]
            c = img.shape[2]
            img = cv2.resize(np.ascontiguousarray(img), (ow, oh), interpolation=flag)
            if img.ndim == 2:  # cv2 drops a trailing channel axis of length 1
                img = img.reshape(oh, ow, c)
        return np.ascontiguousarray(img, dtype=np.uint8)


@runtime_checkable
class Source(Protocol):
    """What a dataset reads from: ``len(source)``, ``source[i]`` and ``source.get_batch(rows)``."""

    def __len__(self) -> int: ...

    def __getitem__(self, i: int) -> np.ndarray: ...

    def get_batch(self, rows: Sequence[int], out: np.ndarray | None = None) -> np.ndarray: ...


class FileSource:
    """Decode image files on the fly with a `Preprocess` (no cache).

    Args:
        paths: Image files, one per row.
        preprocess: How each file becomes uint8 (H, W, C).
    """

    def __init__(self, paths: Sequence[str | os.PathLike[str]], preprocess: Preprocess) -> None:
        self.paths = [Path(p) for p in paths]
        self.preprocess = preprocess

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """(N, H, W, C) of the images this source returns."""
        return (len(self.paths), *self.preprocess.out_shape)

    def __getitem__(self, i: int) -> np.ndarray:
        return self.preprocess(self.paths[int(i)])

    def get_batch(self, rows: Sequence[int], out: np.ndarray | None = None) -> np.ndarray:
        """uint8 (B, H, W, C) for the given rows (written into ``out`` when given)."""
        if out is None:
            out = np.empty((len(rows), *self.preprocess.out_shape), dtype=np.uint8)
        for j, i in enumerate(rows):
            out[j] = self[i]
        return out


class ArraySource:
    """In-memory uint8 images (a MedMNIST ``.npz``), with the same interface as the cache.

    Args:
        images: (N, H, W) or (N, H, W, C) array (any numeric dtype; not uint8 is mapped per image like files).
        preprocess: Optional `Preprocess` applied per image on access (resize, channel mapping, margin); None
            returns the images as they are (gray gets a channel axis).
    """

    def __init__(self, images: np.ndarray, preprocess: Preprocess | None = None) -> None:
        images = np.asarray(images)
        if images.ndim == 3:
            images = images[..., None]
        if images.ndim != 4:
            raise DataError(
                f"expected images of shape (N, H, W) or (N, H, W, C), got {images.shape}",
                hint="for MedMNIST .npz files pass the 'train_images' array",
            )
        if preprocess is None and images.dtype != np.uint8:
            raise DataError(
                f"ArraySource without a Preprocess needs uint8 images, got {images.dtype}",
                hint="pass preprocess=Preprocess(size=..., channels=...) to map them to 8 bits",
            )
        self.images = images
        self.preprocess = preprocess

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """(N, H, W, C) of the images this source returns."""
        if self.preprocess is None:
            return tuple(self.images.shape)  # type: ignore[return-value]
        return (len(self), *self.preprocess.out_shape)

    def __getitem__(self, i: int) -> np.ndarray:
        img = self.images[int(i)]
        return img if self.preprocess is None else self.preprocess.from_array(img)

    def get_batch(self, rows: Sequence[int], out: np.ndarray | None = None) -> np.ndarray:
        """uint8 (B, H, W, C) for the given rows (written into ``out`` when given)."""
        if out is None:
            out = np.empty((len(rows), *self.shape[1:]), dtype=np.uint8)
        for j, i in enumerate(rows):
            out[j] = self[i]
        return out
