"""What every reader checks before it decodes: the file is there and not empty, and the image is not too large.

Shared by `medkit.io.readers`, `medkit.io.dicom` and `medkit.io.medmnist`, which import this module and nothing
of each other's internals. This module imports neither numpy nor the decoders.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import stat
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

from medkit.errors import ImageReadError

__all__ = [
    "MAX_PIXELS",
    "MAX_BYTES",
    "BYTES_PER_CAPPED_PIXEL",
    "TILE_HINT",
    "check_file",
    "check_pixels",
    "check_bytes",
    "quiet_native_stderr",
    "quiet_tifffile",
]

#: Largest image (pixels, all frames and channels' planes counted once) a reader loads without being asked:
#: a whole-slide level 0 is billions of pixels and would exhaust memory. Override with ``max_pixels=``.
MAX_PIXELS = 1 << 28

#: Decoded bytes (pixels x channels x bytes per sample) allowed per pixel of the cap: the pixel cap alone would let
#: a 16-bit RGBA image take 8 bytes per pixel. ``max_pixels=N`` allows ``4 N`` bytes, so `MAX_BYTES` is 1 GiB.
BYTES_PER_CAPPED_PIXEL = 4
MAX_BYTES = MAX_PIXELS * BYTES_PER_CAPPED_PIXEL

TILE_HINT = "cut whole-slide images into tiles with `medkit tile`, or pass page=N to read a smaller level"


def check_file(path: Path) -> None:
    """Refuse a path that is missing, unreadable, a folder or an empty file, before any decoder sees it.

    Args:
        path: The image file.

    Raises:
        ImageReadError: Naming the file, with a hint for each case.
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise ImageReadError(f"{path}: no such file", hint="check the path (relative to the current folder)") from None
    except OSError as exc:
        raise ImageReadError(f"{path}: cannot open ({exc.strerror})", hint="check the file's permissions") from None
    if stat.S_ISDIR(st.st_mode):
        raise ImageReadError(f"{path}: is a folder, not an image file", hint="pass the image files inside it")
    if st.st_size == 0:
        raise ImageReadError(f"{path}: empty file (0 bytes)", hint="the file was not fully written; copy it again")


def check_pixels(path: Path, shape: Sequence[int], max_pixels: int | None, what: str = "image") -> None:
    """Refuse an image whose pixel count (the product of ``shape``) is above ``max_pixels``.

    Args:
        path: The file, for the message.
        shape: The size to check, without the channel axis (pixels, not samples, are counted).
        max_pixels: The limit; None means no limit.
        what: What the shape is of ("image", "page 2", "slide level 0", ...), for the message.

    Raises:
        ImageReadError: When the image is too large; the hint points at `medkit tile` and ``max_pixels=``.
    """
    if max_pixels is None:
        return
    n = math.prod(int(s) for s in shape) if len(shape) else 0
    if n > max_pixels:
        raise ImageReadError(
            f"{path}: {what} of shape {tuple(shape)} has {n:,} pixels, above the limit of {max_pixels:,}",
            hint=f"{TILE_HINT}; or raise the limit with max_pixels=",
        )


def check_bytes(path: Path, shape: Sequence[int], channels: int, itemsize: int, max_pixels: int | None) -> None:
    """Refuse an image whose decoded size (pixels x ``channels`` x ``itemsize``) is above 4 bytes per capped pixel.

    Checked before decoding wherever the header gives the size, with the pixel cap (`MAX_BYTES` for the default
    cap); ``max_pixels=None`` lifts both.

    Args:
        path: The file, for the message.
        shape: The size in pixels, without the channel axis.
        channels: Samples per pixel once decoded.
        itemsize: Bytes per sample once decoded (2 for 16-bit data).
        max_pixels: The pixel limit; None means no limit at all.

    Raises:
        ImageReadError: When the decoded image would take more than `MAX_BYTES`.
    """
    if max_pixels is None:
        return
    n = math.prod(int(s) for s in shape) if len(shape) else 0
    size = n * max(int(channels), 1) * max(int(itemsize), 1)
    limit = max_pixels * BYTES_PER_CAPPED_PIXEL
    if size > limit:
        raise ImageReadError(
            f"{path}: image of shape {tuple(shape)} x {channels} channel(s) x {8 * itemsize} bit decodes to "
            f"{size / 2**30:.2f} GiB, above the limit of {limit / 2**30:.2f} GiB",
            hint=f"{TILE_HINT}; or lift the limit with max_pixels=None",
        )


@contextlib.contextmanager
def quiet_native_stderr() -> Iterator[None]:
    """Send what C decoders write straight to file descriptor 2 (libpng's "libpng error: ...") to /dev/null.

    The readers raise their own error naming the file; the library's line would only repeat it, before medkit's
    message and in the middle of a progress bar. Python-level writes are flushed first so none is lost.
    """
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):  # no fd 2 (a detached process): nothing to silence
        yield
        return
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, 2)
        finally:
            os.close(devnull)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


@contextlib.contextmanager
def quiet_tifffile() -> Iterator[None]:
    """tifffile's log lines (``<tifffile.TiffPages @8> invalid page offset ...``) off while the block runs.

    The readers report what they are about once, naming the file (`medkit.io.slide.pyramid_problems` for slides).
    """
    log = logging.getLogger("tifffile")
    level = log.level
    log.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        log.setLevel(level)
