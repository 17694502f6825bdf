"""medkit.io.windows: window presets and ``--windows`` parsing, light enough for flag-time checks."""

from __future__ import annotations

import subprocess
import sys

import pytest

from medkit.errors import UnknownNameError, UsageError
from medkit.io import dicom as D
from medkit.io import windows as W


def test_parse_windows_splits_strips_and_keeps_order():
    assert W.parse_windows(" brain, 40/80 ,,dicom,minmax ") == ["brain", "40/80", "dicom", "minmax"]
    assert W.parse_windows(["lung", " bone "]) == ["lung", "bone"]
    assert W.parse_windows(None) == []
    assert W.parse_windows("") == []


def test_parse_windows_unknown_name_is_a_usage_error_with_a_suggestion():
    with pytest.raises(UsageError, match=r"unknown window 'brian' \(did you mean 'brain'\?\)") as info:
        W.parse_windows("subdural,brian")
    # the same error is an UnknownNameError for callers that catch registry-style lookups
    assert isinstance(info.value, UnknownNameError)
    assert info.value.exit_code == 2
    assert "soft_tissue" in info.value.hint and "CENTER/WIDTH" in info.value.hint
    with pytest.raises(UsageError) as far:
        W.parse_windows("zzzzzz")
    assert str(far.value).startswith("unknown window 'zzzzzz'\n") and "did you mean" not in far.value.message


@pytest.mark.parametrize("bad", ["40/0", "40/-5", "40/abc", "abc/80", "/"])
def test_parse_windows_rejects_bad_literals(bad):
    with pytest.raises(UsageError, match="unknown window"):
        W.parse_windows(bad)


def test_fixed_window_and_check_window():
    assert W.fixed_window("lung") == (-600.0, 1500.0)
    assert W.fixed_window("-600/1500") == (-600.0, 1500.0)
    assert W.fixed_window("dicom") is None and W.fixed_window("minmax") is None and W.fixed_window("x") is None
    for name in ("dicom", "minmax", "stroke", "10/1"):
        W.check_window(name)  # no error
    with pytest.raises(W.UnknownWindowError):
        W.check_window("lugn")


def test_dicom_reexports_the_same_objects():
    assert D.WINDOWS is W.WINDOWS and D.FILE_WINDOWS is W.FILE_WINDOWS
    assert D.parse_windows is W.parse_windows
    assert D.WINDOWS["brain"] == (40.0, 80.0) and D.WINDOWS["subdural"] == (80.0, 200.0)
    # resolve_window gives the same error for an unknown name, and still resolves presets and pairs
    with pytest.raises(UsageError, match="did you mean 'subdural'"):
        D.resolve_window("subdurall")
    assert D.resolve_window("bone") == (600.0, 2800.0)
    assert D.resolve_window("minmax", check_only=True) == (0.0, 1.0)


def test_import_windows_loads_neither_numpy_nor_pydicom():
    code = (
        "import sys\n"
        "import medkit.io.windows as w\n"
        "w.parse_windows('brain,subdural')\n"
        "print(','.join(m for m in ('numpy', 'pydicom', 'cv2', 'pandas', 'torch') if m in sys.modules))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "", f"import medkit.io.windows loaded: {proc.stdout.strip()}"
