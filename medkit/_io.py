"""Atomic file writing: outputs appear whole or not at all, so an interrupted run never leaves a half file."""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

__all__ = [
    "atomic_write",
    "write_json",
    "write_text",
    "write_csv",
    "sha256_file",
    "same_file",
    "refuse_overwrite_inputs",
]


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike[str], mode: str = "w", **kwargs: Any) -> Iterator[IO[Any]]:
    """Open a temporary file next to ``path``; on success fsync it and rename it over ``path``.

    Args:
        path: Final destination; its folder is created when missing.
        mode: ``"w"`` (text) or ``"wb"`` (binary).
        **kwargs: Passed to `open` (encoding, newline).

    Yields:
        The open temporary file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    # mkstemp makes the file owner-only; give the output the permissions a plain open() would have.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    if "b" not in mode:
        kwargs.setdefault("encoding", "utf-8")
    try:
        with open(tmp, mode, **kwargs) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write text atomically and return the path."""
    with atomic_write(path, "w") as fh:
        fh.write(text)
    return Path(path)


def write_json(path: str | os.PathLike[str], data: Any) -> Path:
    """Write JSON (indented, numpy scalars converted) atomically and return the path."""

    def default(obj: Any) -> Any:
        if hasattr(obj, "tolist"):  # numpy arrays and scalars alike
            return obj.tolist()
        if hasattr(obj, "item"):
            return obj.item()
        return str(obj)

    return write_text(path, json.dumps(data, indent=2, default=default) + "\n")


def write_csv(path: str | os.PathLike[str], frame: Any, **kwargs: Any) -> Path:
    """Write a pandas DataFrame as CSV atomically (index off unless asked) and return the path."""
    kwargs.setdefault("index", False)
    with atomic_write(path, "w", newline="") as fh:
        frame.to_csv(fh, **kwargs)
    return Path(path)


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def same_file(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> bool:
    """Whether two paths name the same file (links and ``..`` resolved; a path that does not exist is no file)."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def refuse_overwrite_inputs(
    outputs: Iterable[str | os.PathLike[str]], inputs: Iterable[str | os.PathLike[str] | None], flag: str = "--out"
) -> None:
    """Refuse to start when a file a command would write is one of the files it reads.

    Called before any work, so a re-run such as ``medkit audit --labels OUT/labels_clean.csv --out OUT`` stops
    with a clear message instead of replacing its own input.

    Args:
        outputs: The files the command would write.
        inputs: The files it reads (None entries are skipped).
        flag: The option that chose the outputs, named in the message.

    Raises:
        UsageError: Naming the input and the fix.
    """
    from medkit.errors import UsageError

    ins = [Path(p) for p in inputs if p is not None]
    for out in outputs:
        for src in ins:
            if same_file(out, src):
                raise UsageError(
                    f"{flag} would overwrite the input {src} (the output {out} is the same file)",
                    hint=f"write to another place with {flag}, or copy the input elsewhere first",
                )


def output_error(path: str | os.PathLike[str], exc: OSError, what: str = "output") -> Any:
    """A `medkit.errors.DataError` naming the output ``path`` that could not be written and why (full disk, no
    permission, read-only file system, a file where a folder is expected)."""
    import errno

    from medkit.errors import DataError

    reason = exc.strerror or str(exc)
    where = Path(exc.filename) if getattr(exc, "filename", None) else Path(path)
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        hint = f"free space on the disk that holds {where.parent}, then run the command again"
    elif exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        hint = f"choose a writable {what} folder, or fix the permissions of {where.parent}"
    elif exc.errno in (errno.ENOTDIR, errno.EEXIST):
        hint = f"a file is in the way of a folder on {where}: remove it or choose another {what}"
    else:
        hint = f"check {where.parent}"
    return DataError(f"cannot write {what} {where}: {reason}", hint=hint)


def check_writable_dir(path: str | os.PathLike[str], what: str = "--out") -> Path:
    """Create the folder ``path`` when missing and prove it writable (a probe file written and removed), before
    any work is done.

    Raises:
        DataError: Naming ``path`` when it is a file, cannot be created or cannot be written.
    """
    path = Path(path)
    try:
        if path.exists() and not path.is_dir():
            raise NotADirectoryError(20, "a file is there, not a folder", str(path))
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".medkit-probe.", suffix=".tmp", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise output_error(path, exc, what) from None
    return path


def check_writable_file(path: str | os.PathLike[str], what: str = "--out") -> Path:
    """Prove that the output file ``path`` can be written, creating nothing: a probe file in its folder, or in the
    nearest folder above it that exists (the writer creates the rest).

    Raises:
        DataError: Naming ``path`` when it is a folder, a file is in the way of its folder, or it cannot be written.
    """
    path = Path(path)
    if path.is_dir():
        raise output_error(path, IsADirectoryError(21, "a folder is there, not a file", str(path)), what)
    folder = path.absolute().parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise output_error(path, NotADirectoryError(20, f"{folder} is a file, not a folder", str(path)), what)
    try:
        fd, probe = tempfile.mkstemp(prefix=".medkit-probe.", suffix=".tmp", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise output_error(path, exc, what) from None
    return path


#: Temporary files of `atomic_write` and the probes of `check_writable_dir`: ``.<name>.<8 random chars>.tmp``
#: (`tempfile.mkstemp` names), so that other hidden ``.tmp`` files of a user are never taken for them.
_TEMP_GLOB = ".*.tmp"
_TEMP_NAME = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp$")


def remove_stale_temps(directory: str | os.PathLike[str], recursive: bool = False) -> list[Path]:
    """Remove the temporary files a killed writer left in ``directory`` (``.<name>.<random>.tmp``).

    Call it only while holding the folder's lock (`medkit.engine.lock.RunLock`): a live writer's temporary file
    looks the same.

    Returns:
        The files removed.
    """
    root = Path(directory)
    if not root.is_dir():
        return []
    removed = []
    for p in root.rglob(_TEMP_GLOB) if recursive else root.glob(_TEMP_GLOB):
        with contextlib.suppress(OSError):
            if _TEMP_NAME.match(p.name) and p.is_file() and not p.is_symlink():
                p.unlink()
                removed.append(p)
    return removed


__all__ += ["output_error", "check_writable_dir", "check_writable_file", "remove_stale_temps"]
