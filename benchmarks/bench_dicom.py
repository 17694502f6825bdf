"""DICOM -> 3-window uint8 (brain, subdural, soft tissue): medkit's lookup-table path against plain pydicom + numpy.

Writes N synthetic 512x512 head CT slices with pydicom (12-bit unsigned, RescaleIntercept -1024, the common
scanner layout), then converts every file with both implementations in this one process, one core
(OpenCV threads set to 1), checks that they agree within one grey level, and prints images per second (wall and
CPU time) and the ratio. Run by hand:

    python benchmarks/bench_dicom.py --n 200
    python benchmarks/bench_dicom.py path/to/series/*.dcm     # real files instead
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from medkit.io.windows import WINDOWS as PRESETS

NAMES = ("brain", "subdural", "soft_tissue")
WINDOWS = tuple(PRESETS[name] for name in NAMES)  # (center, width) pairs for the naive implementation


def phantom(rng: np.random.Generator, size: int) -> np.ndarray:
    """A head-like slice in HU: air, a skull ring, brain with noise and a small bright bleed."""
    yy, xx = np.mgrid[:size, :size]
    cy, cx = size / 2 + rng.uniform(-10, 10), size / 2 + rng.uniform(-10, 10)
    r = np.hypot((yy - cy) / (0.42 * size), (xx - cx) / (0.36 * size))
    hu = np.full((size, size), -1000.0)
    hu[r < 1.0] = 1200.0
    hu[r < 0.92] = 35.0
    hu += rng.normal(0, 8, hu.shape) * (r < 0.92)
    by, bx = cy + rng.uniform(-60, 60), cx + rng.uniform(-60, 60)
    hu[np.hypot(yy - by, xx - bx) < size / 30] = 70.0
    return hu


def write_series(folder: Path, n: int, size: int) -> list[Path]:
    """N synthetic CT DICOM files (uncompressed, 16 bits allocated, 12 stored)."""
    from _dicom import write_ct

    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        stored = np.clip(np.rint(phantom(rng, size) + 1024), 0, 4095).astype(np.uint16)
        path = folder / f"slice_{i:04d}.dcm"
        write_ct(
            path,
            stored,
            PatientID="BENCH",
            InstanceNumber=i + 1,
            SeriesInstanceUID="1.2.826.0.1.3680043.8.498.1",
            ImagePositionPatient=[0.0, 0.0, 5.0 * i],
            PixelSpacing=[0.45, 0.45],
            SliceThickness=5.0,
            WindowCenter=40,
            WindowWidth=80,
        )
        paths.append(path)
    return paths


def naive(path: Path) -> np.ndarray:
    """The common Kaggle kernel: pydicom pixel_array, float rescale, clip and scale each window."""
    import pydicom

    ds = pydicom.dcmread(path)
    hu = ds.pixel_array.astype(np.float32) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    channels = []
    for c, w in WINDOWS:
        lo, hi = c - w / 2, c + w / 2
        x = (np.clip(hu, lo, hi) - lo) / (hi - lo)
        channels.append(np.rint(x * 255).astype(np.uint8))
    return np.stack(channels, axis=-1)


def fast(path: Path) -> np.ndarray:
    """medkit.io.dicom.dicom_windows (lookup table on the stored values)."""
    from medkit.io.dicom import dicom_windows

    return dicom_windows(path, NAMES)


def timed(impls: dict[str, Callable[[Path], np.ndarray]], paths: list[Path], repeat: int) -> dict[str, tuple]:
    """Best wall and CPU seconds per implementation over ``repeat`` passes through every file.

    The passes alternate between implementations, so both see the same load on a shared machine.
    """
    best = {name: (float("inf"), float("inf")) for name in impls}
    for _ in range(repeat):
        for name, fn in impls.items():
            w0, c0 = time.perf_counter(), time.process_time()
            for p in paths:
                fn(p)
            wall, cpu = time.perf_counter() - w0, time.process_time() - c0
            best[name] = (min(best[name][0], wall), min(best[name][1], cpu))
    return best


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the table; exit 1 when the outputs disagree by more than one grey level."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200, help="number of synthetic slices")
    parser.add_argument("--size", type=int, default=512, help="slice size (pixels)")
    parser.add_argument("--repeat", type=int, default=5, help="passes per implementation (best is kept)")
    parser.add_argument("files", nargs="*", type=Path, help="real CT DICOM files to time instead of synthetic ones")
    args = parser.parse_args(argv)

    import cv2

    cv2.setNumThreads(1)  # one core for both implementations
    with tempfile.TemporaryDirectory(prefix="bench_dicom_") as tmp:
        if args.files:
            paths = list(args.files)
        else:
            t0 = time.perf_counter()
            paths = write_series(Path(tmp), args.n, args.size)
            took = time.perf_counter() - t0
            print(f"wrote {len(paths)} DICOMs {args.size}x{args.size} in {took:.1f} s", file=sys.stderr)
        max_diff = 0
        for p in paths:  # also warms the page cache and the lookup-table cache
            a, b = naive(p), fast(p)
            if a.shape != b.shape:
                print(f"shape mismatch on {p.name}: {a.shape} vs {b.shape}", file=sys.stderr)
                return 1
            max_diff = max(max_diff, int(np.abs(a.astype(np.int16) - b.astype(np.int16)).max()))
        impls = {"naive pydicom + float numpy": naive, "medkit dicom_windows (LUT)": fast}
        results = timed(impls, paths, args.repeat)
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} logical cores, "
        f"python {platform.python_version()}, numpy {np.__version__}"
    )
    print(f"{'implementation':<30} {'img/s (wall)':>13} {'img/s (cpu)':>12}")
    for name, (wall, cpu) in results.items():
        print(f"{name:<30} {len(paths) / wall:>13.1f} {len(paths) / cpu:>12.1f}")
    (nw, nc), (fw, fc) = results.values()
    print(f"speed-up: {nw / fw:.2f}x wall, {nc / fc:.2f}x per core (cpu time); max abs diff {max_diff} grey level(s)")
    return 0 if max_diff <= 1 else 1


if __name__ == "__main__":
    sys.exit(main())
