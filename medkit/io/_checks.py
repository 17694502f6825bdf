"""What every reader checks before it decodes: the file is there and not empty, and the image is not too large.

Shared by `medkit.io.readers`, `medkit.io.dicom` and `medkit.io.medmnist`, which import this module and nothing
of each other's internals. This module imports neither numpy nor the decoders.
"""

from __future__ import annotations

import math
import os
import stat
from collections.abc import Sequence
from pathlib import Path

from medkit.errors import ImageReadError

__all__ = ["MAX_PIXELS", "TILE_HINT", "check_file", "check_pixels"]

#: Largest image (pixels, all frames and channels' planes counted once) a reader loads without being asked:
#: a whole-slide level 0 is billions of pixels and would exhaust memory. Override with ``max_pixels=``.
MAX_PIXELS = 1 << 28

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
