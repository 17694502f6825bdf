"""One writer per output folder: a lock file holding the writer's PID, host and start time.

``medkit train`` (and ``medkit tile``) take the lock of their ``--out`` before anything else, so a second command
writing the same folder stops at once with a message naming the first one, instead of both finishing with a
folder of mixed files. The lock file is created with ``O_CREAT | O_EXCL`` (atomic on local file systems and on
NFSv3+). A lock whose process is gone (same host, no such PID, or a PID reused by a process started later) is
stale: it is taken over with a note. Creating the lock file is also the first proof that ``--out`` is writable,
and while the lock is held the temporary files a killed writer left there are removed.

It lives at the top of the package because `medkit.engine` (train) and `medkit.tile` both use it. This module
imports neither torch nor typer.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from medkit._io import output_error, remove_stale_temps
from medkit.errors import UsageError

__all__ = ["LOCK_NAME", "RunLock", "run_lock"]

LOCK_NAME = ".medkit.lock"
#: A lock file still empty after this many seconds belongs to a writer killed between creating and filling it.
_EMPTY_GRACE_SECONDS = 10.0


def _proc_stat(pid: int) -> list[str]:
    """The fields of ``/proc/<pid>/stat`` after the command name (Linux; empty elsewhere or when gone)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return []


def _proc_start(pid: int) -> int | None:
    """The start time of process ``pid`` in clock ticks since boot (Linux), to tell a reused PID apart."""
    try:
        return int(_proc_stat(pid)[19])
    except (ValueError, IndexError):
        return None


def _alive(pid: int, start: int | None) -> bool:
    """Whether process ``pid`` (started at ``start`` when known) still runs on this host."""
    if os.name == "nt":  # os.kill(pid, 0) would send Ctrl-C there: assume alive (the message says how to clear it)
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    except OSError:
        return True
    if _proc_stat(pid)[:1] in (["Z"], ["X"]):  # killed, not yet reaped by its parent
        return False
    now = _proc_start(pid)
    return start is None or now is None or now == start


class RunLock:
    """The lock of one output folder (``<folder>/.medkit.lock``); use it as a context manager.

    Args:
        folder: The folder written (created when missing).
        command: The command holding it, for the message a second writer sees.
        clean: Sub-folders (relative; ``""`` is the folder itself) where the temporary files of a killed writer
            (``.*.tmp``, `medkit._io.atomic_write`) are removed once the lock is held.
        recursive: Look for them in the sub-folders of the named sub-folders too (never below the folder itself).
    """

    def __init__(
        self,
        folder: str | os.PathLike[str],
        command: str = "medkit",
        clean: Sequence[str] = ("",),
        recursive: bool = False,
    ) -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self.command = command
        self.clean = tuple(clean)
        self.recursive = recursive
        self.held = False
        self.created = False
        self.notes: list[str] = []

    def _record(self) -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "proc_start": _proc_start(os.getpid()),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "command": self.command,
        }

    def acquire(self) -> RunLock:
        """Take the lock (taking over a stale one).

        Raises:
            UsageError: When a live process holds it (named with its PID, host and start time).
            DataError: When the folder cannot be created or written.
        """
        try:
            if self.folder.exists() and not self.folder.is_dir():
                raise NotADirectoryError(20, "a file is there, not a folder", str(self.folder))
            self.created = not self.folder.exists()
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise output_error(self.folder, exc, "--out") from None
        for _ in range(5):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self._refuse_or_take_over()
                continue
            except OSError as exc:
                self._drop_folder()
                raise output_error(self.folder, exc, "--out") from None
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as fh:
                    json.dump(self._record(), fh)
            except OSError as exc:  # a full disk: the folder cannot take the run's outputs either
                with contextlib.suppress(OSError):
                    self.path.unlink()
                self._drop_folder()
                raise output_error(self.folder, exc, "--out") from None
            self.held = True
            # Never recursive in the folder itself: an --out such as "." must not be searched whole.
            removed = [
                p for sub in self.clean for p in remove_stale_temps(self.folder / sub, bool(self.recursive and sub))
            ]
            if removed:
                self.notes.append(f"removed {len(removed)} temporary file(s) left by an interrupted run")
            return self
        raise UsageError(f"could not take the lock {self.path}", hint=f"delete {self.path} if no medkit run uses it")

    def _read(self) -> tuple[dict[str, Any] | None, str]:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None, ""
        except OSError:
            text = ""
        try:
            record = json.loads(text)
        except ValueError:
            return {}, text
        return (record if isinstance(record, dict) else {}), text

    def _refuse_or_take_over(self) -> None:
        """Raise when the holder lives; otherwise move the stale lock away (only if it is still the one judged)."""
        holder, text = self._read()
        if holder is None:  # released meanwhile
            return
        try:
            pid = int(holder.get("pid", 0))
        except (TypeError, ValueError):
            pid = 0
        if pid <= 0:  # empty or unreadable
            try:
                age = time.time() - self.path.stat().st_mtime
            except OSError:
                return
            if age < _EMPTY_GRACE_SECONDS:  # a writer between creating and filling it
                raise UsageError(
                    f"{self.folder} is being written by another medkit process (lock {self.path})",
                    hint="wait for it to finish, or choose another --out",
                )
            stale = "an empty or unreadable lock file"
        else:
            host = str(holder.get("host", ""))
            if host != socket.gethostname() or _alive(pid, holder.get("proc_start")):
                raise UsageError(
                    f"{self.folder} is in use by another {holder.get('command', 'medkit')} run "
                    f"(PID {pid} on {host}, started {holder.get('started', '?')})",
                    hint=f"wait for it to finish or choose another --out; if that process is gone, delete {self.path}",
                )
            stale = f"the lock of PID {pid} (no longer running)"
        aside = self.path.with_name(f"{LOCK_NAME}.stale.{os.getpid()}")
        try:
            os.replace(self.path, aside)
        except FileNotFoundError:
            return
        if aside.read_text(encoding="utf-8", errors="replace") != text:  # a new writer's lock: put it back
            with contextlib.suppress(OSError):
                os.link(aside, self.path)
        else:
            self.notes.append(f"took over {stale} in {self.folder}")
        with contextlib.suppress(OSError):
            aside.unlink()

    def release(self) -> None:
        """Remove the lock file if this process still holds it (and the folder, when it made it and it is empty:
        a command that failed before writing anything leaves no trace)."""
        if not self.held:
            return
        self.held = False
        holder, _ = self._read()
        if holder and holder.get("pid") == os.getpid():
            with contextlib.suppress(OSError):
                self.path.unlink()
            self._drop_folder()

    def _drop_folder(self) -> None:
        """Remove the folder when this lock made it and nothing was written into it."""
        if self.created:
            with contextlib.suppress(OSError):
                self.folder.rmdir()  # only succeeds when empty

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


@contextlib.contextmanager
def run_lock(
    folder: str | os.PathLike[str],
    command: str = "medkit train",
    enabled: bool = True,
    clean: Sequence[str] = ("",),
    recursive: bool = False,
) -> Iterator[RunLock | None]:
    """Hold the lock of ``folder`` for the block (nothing when ``enabled`` is false: a DDP rank other than 0),
    printing the notes (a stale lock taken over, temporary files removed) on stderr.

    Raises:
        UsageError: When another live process writes ``folder``.
        DataError: When ``folder`` cannot be created or written.
    """
    if not enabled:
        yield None
        return
    with RunLock(folder, command, clean, recursive) as lock:
        if lock.notes:
            from medkit.console import info

            for note in lock.notes:
                info(note)
        yield lock
