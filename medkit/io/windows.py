"""CT window presets and the ``--windows`` list: names checked at flag time, without numpy or pydicom.

A window is a preset from `WINDOWS`, ``dicom`` (the file's own WindowCenter/WindowWidth), ``minmax`` (the image's
own range) or a literal ``CENTER/WIDTH`` such as ``40/80``. Turning a name into (center, width) for a file, and
windowing pixels, is `medkit.io.dicom` (`resolve_window`, `window`, `dicom_windows`).

This module imports only `medkit.errors`, so a task preset or a CLI flag can validate ``--windows brian``
before anything heavy is loaded.
"""

from __future__ import annotations

from collections.abc import Sequence

from medkit.errors import UnknownNameError, UsageError, did_you_mean

__all__ = ["WINDOWS", "FILE_WINDOWS", "UnknownWindowError", "fixed_window", "check_window", "parse_windows"]

#: Window presets, name -> (center, width) in HU. Brain, subdural and soft tissue are the three channels of the
#: RSNA intracranial hemorrhage solutions; the others are the usual radiology presets (Radiopaedia "Windowing
#: (CT)": brain W80 L40, subdural W200 L80, soft tissue W380 L40 (W350-400 L20-60), bone W2800 L600,
#: lung W1500 L-600, mediastinum W350 L50, stroke W40 L40).
WINDOWS: dict[str, tuple[float, float]] = {
    "brain": (40.0, 80.0),
    "subdural": (80.0, 200.0),
    "soft_tissue": (40.0, 380.0),
    "bone": (600.0, 2800.0),
    "lung": (-600.0, 1500.0),
    "mediastinum": (50.0, 350.0),
    "stroke": (40.0, 40.0),
}

#: Window names resolved from the file itself rather than a preset.
FILE_WINDOWS: tuple[str, ...] = ("dicom", "minmax")


class UnknownWindowError(UsageError, UnknownNameError):
    """A window name that is no preset, file window or ``CENTER/WIDTH``: a usage error and an unknown name."""


def fixed_window(name: str) -> tuple[float, float] | None:
    """(center, width) of a preset name or a literal ``"C/W"`` with W > 0; None for anything else.

    Args:
        name: A window name.

    Returns:
        The pair, or None for file windows (``dicom``, ``minmax``) and names that are not windows.
    """
    if name in WINDOWS:
        return WINDOWS[name]
    if "/" in name:
        try:
            c, w = (float(v) for v in name.split("/", 1))
        except ValueError:
            return None
        if w > 0:
            return c, w
    return None


def check_window(name: str) -> None:
    """Check one window name (a preset, ``dicom``, ``minmax`` or ``CENTER/WIDTH``).

    Args:
        name: The name as typed.

    Raises:
        UnknownWindowError: For a name that is none of these, with the closest preset as a suggestion.
    """
    if name in FILE_WINDOWS or fixed_window(name) is not None:
        return
    known = [*WINDOWS, *FILE_WINDOWS]
    raise UnknownWindowError(
        f"unknown window '{name}'{did_you_mean(name, known)}", hint=f"windows: {', '.join(known)}, or CENTER/WIDTH"
    )


def parse_windows(spec: str | Sequence[str] | None) -> list[str]:
    """Split a window list (``"brain,subdural,soft_tissue"``) and check each name.

    Args:
        spec: Comma-separated names, a sequence of names, or None.

    Returns:
        The names, stripped, empty ones dropped, in order (``[]`` for None).

    Raises:
        UnknownWindowError: For a name that is no window (a `UsageError` and an `UnknownNameError`), with a
            suggestion: ``unknown window 'brian' (did you mean 'brain'?)``.
    """
    if spec is None:
        return []
    names = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
    for name in names:
        check_window(name)
    return names
