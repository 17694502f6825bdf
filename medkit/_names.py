"""File names that are not valid UTF-8, written to CSV and JSON without losing a byte.

On POSIX a file name is bytes; Python hands out a name that is not valid UTF-8 (a latin-1 ``café`` from a Windows
archive: ``b"caf\\xe9.png"``) as text with surrogate escapes (``"caf\\udce9.png"``). Such text opens the file but
cannot be encoded as UTF-8, so it cannot go into a CSV, a JSON document or a terminal. medkit writes it in an
escaped form instead:

- every byte that is not UTF-8 becomes ``\\xNN`` (two lowercase hex digits): ``caf\\xe9.png``;
- a backslash in the name is doubled (``\\\\``), so the escape is lossless: `unescape_name` gives back the exact name.

Names that are valid UTF-8 and hold no backslash (nearly all) are written unchanged. This module imports nothing
beyond the standard library.
"""

from __future__ import annotations

import re

__all__ = ["escape_name", "unescape_name", "is_undecodable", "escape_text"]

_ESCAPED = re.compile(r"\\(\\|x[89a-f][0-9a-f])")


def is_undecodable(name: str) -> bool:
    """Whether a name came from bytes that are not valid UTF-8 (it holds surrogate escapes)."""
    return any("\udc80" <= c <= "\udcff" for c in name)


def escape_name(name: str) -> str:
    """The lossless, valid-UTF-8 form of a file name (see the module docstring); inverse of `unescape_name`."""
    if "\\" not in name and not is_undecodable(name):
        return name
    out = []
    for c in name:
        if "\udc80" <= c <= "\udcff":
            out.append(f"\\x{ord(c) - 0xDC00:02x}")
        elif c == "\\":
            out.append("\\\\")
        else:
            out.append(c)
    return "".join(out)


def unescape_name(text: str) -> str:
    """The file name (surrogate escapes for non-UTF-8 bytes, usable with `open`) of an `escape_name` form."""
    if "\\" not in text:
        return text

    def back(m: re.Match[str]) -> str:
        code = m.group(1)
        return "\\" if code == "\\" else chr(0xDC00 + int(code[1:], 16))

    return _ESCAPED.sub(back, text)


def escape_text(text: str) -> str:
    """A message with the undecodable bytes of the names in it shown as ``\\xNN`` (backslashes left alone)."""
    if not is_undecodable(text):
        return text
    return "".join(f"\\x{ord(c) - 0xDC00:02x}" if "\udc80" <= c <= "\udcff" else c for c in text)
