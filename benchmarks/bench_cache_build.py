"""How close is the cache build to the decode floor? `UInt8Cache.build` against a plain cv2 loop, per core.

The floor is the plainest loop that produces the same pixels, in one process and without a cache: for PNG files
``cv2.imread`` + ``cv2.resize`` (INTER_AREA) + ``cv2.cvtColor`` (gray to 3 channels); for CT DICOM files
`medkit.io.dicom.dicom_windows` (3 windows through lookup tables) + ``cv2.resize``. Every result is written into
one preallocated array, so the loop pays for decoding and resizing only. Against it, side by side in one run over
the same files (already in the page cache), the script times `UInt8Cache.build` in this process (``workers=1``)
and with a pool of each ``--workers`` count (start-up included, the cache written and synced to disk), and prints
img/s, img/s per core and the ratio per core / plain loop (goal: >= 0.8 per core, and the rate growing with the
cores). The load average before and after is printed too: on a machine shared with other jobs a pool gets fewer
cores than it asked for, and its rate per core drops.

Run by hand (not a test)::

    python benchmarks/bench_cache_build.py                      # 1000 files per format, 1 and every core
    python benchmarks/bench_cache_build.py --n 4000 --workers 1,4,16 --formats png
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

CT_WINDOWS = ("brain", "subdural", "soft_tissue")


def _make_png(path: Path, size: int, seed: int) -> None:
    import cv2

    rng = np.random.default_rng(seed)
    base = cv2.GaussianBlur(rng.random((size, size), dtype=np.float32), (0, 0), size / 24)
    img = np.clip((base - base.min()) / (np.ptp(base) + 1e-6) * 220 + rng.normal(0, 6, (size, size)), 0, 255)
    cv2.imwrite(str(path), img.astype(np.uint8))


def _make_dicom(path: Path, size: int, seed: int) -> None:
    import cv2
    from _dicom import write_ct

    rng = np.random.default_rng(seed)
    base = cv2.GaussianBlur(rng.random((size, size), dtype=np.float32), (0, 0), size / 24)
    hu = (base - base.mean()) / (base.std() + 1e-6) * 300 + 40 + rng.normal(0, 20, (size, size))
    write_ct(path, np.clip(hu + 1024, 0, 4095).astype(np.uint16))


def make_files(folder: Path, fmt: str, n: int, size: int) -> list[Path]:
    """``n`` synthetic 8-bit gray PNG or CT DICOM files of ``size`` pixels."""
    folder.mkdir(parents=True, exist_ok=True)
    make = _make_png if fmt == "png" else _make_dicom
    paths = [folder / f"{i:06d}.{'png' if fmt == 'png' else 'dcm'}" for i in range(n)]
    for i, p in enumerate(paths):
        make(p, size, i)
    return paths


def plain_loop(fmt: str, out_hw: tuple[int, int]) -> Callable[[str], np.ndarray]:
    """The decode floor of one file: read, window (CT), resize, 3 channels; nothing else."""
    import cv2

    oh, ow = out_hw
    if fmt == "png":

        def one(path: str) -> np.ndarray:
            img = cv2.imread(path, cv2.IMREAD_UNCHANGED)
            return cv2.cvtColor(cv2.resize(img, (ow, oh), interpolation=cv2.INTER_AREA), cv2.COLOR_GRAY2RGB)

        return one
    from medkit.io.dicom import dicom_windows

    def one_ct(path: str) -> np.ndarray:
        return cv2.resize(dicom_windows(path, CT_WINDOWS), (ow, oh), interpolation=cv2.INTER_AREA)

    return one_ct


def time_plain(paths: list[Path], fmt: str, out_shape: tuple[int, int, int], repeat: int) -> tuple[float, np.ndarray]:
    """Best-of-``repeat`` img/s of the plain loop, and its pixels (to check the cache holds the same)."""
    import cv2

    cv2.setNumThreads(1)  # one core, as one cache worker
    one = plain_loop(fmt, out_shape[:2])
    out = np.empty((len(paths), *out_shape), np.uint8)
    best = 0.0
    for _ in range(repeat):
        t0 = time.perf_counter()
        for i, p in enumerate(paths):
            out[i] = one(str(p))
        best = max(best, len(paths) / (time.perf_counter() - t0))
    return best, out


def time_build(paths: list[Path], pre: object, root: Path, workers: int, repeat: int) -> tuple[float, np.ndarray]:
    """Best-of-``repeat`` img/s of `UInt8Cache.build` from scratch with ``workers`` processes, and its pixels."""
    from medkit.data.cache import UInt8Cache

    best, pixels = 0.0, np.zeros(0, np.uint8)
    for _ in range(repeat):
        shutil.rmtree(root, ignore_errors=True)
        t0 = time.perf_counter()
        cache = UInt8Cache.build(paths, pre, root, workers=workers, progress=False)
        best = max(best, len(paths) / (time.perf_counter() - t0))
        pixels = np.asarray(cache.array[cache.rows])
    shutil.rmtree(root, ignore_errors=True)
    return best, pixels


def main(argv: list[str] | None = None) -> int:
    """Time the plain loop and the cache build on the same files and print the table."""
    from medkit.data.pipeline import Preprocess
    from medkit.parallel import usable_cores

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=1000, help="files per format")
    ap.add_argument("--native", type=int, default=512, help="side of the generated files")
    ap.add_argument("--size", type=int, default=256, help="training size")
    ap.add_argument("--margin", type=int, default=16, help="random-crop margin stored with each image")
    ap.add_argument("--formats", default="png,dicom")
    ap.add_argument("--workers", default=None, help="comma-separated pool sizes (default: 1 and every core)")
    ap.add_argument("--repeat", type=int, default=2, help="passes per measurement (best is kept)")
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args(argv)

    cores = usable_cores()
    pools = [int(w) for w in args.workers.split(",")] if args.workers else sorted({1, cores})
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="medkit-bench-cache-"))
    rows = []
    load_before = os.getloadavg()[0]
    try:
        for fmt in [f for f in args.formats.split(",") if f]:
            paths = make_files(work / fmt, fmt, args.n, args.native)
            for p in paths:  # into the page cache: both sides read warm files
                p.read_bytes()
            pre = Preprocess(
                size=args.size, margin=args.margin, channels=3, windows=CT_WINDOWS if fmt == "dicom" else None
            )
            plain, want = time_plain(paths, fmt, pre.out_shape, args.repeat)
            print(f"{fmt}: plain loop, 1 process: {plain:.0f} img/s", flush=True)
            for w in pools:
                rate, got = time_build(paths, pre, work / "cache", w, args.repeat)
                same = bool(np.array_equal(got, want))
                rows.append((fmt, w, plain, rate, same))
                print(f"{fmt}: cache build, {w} worker(s): {rate:.0f} img/s, same pixels: {same}", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print()
    print(
        f"## cache build vs the plain loop ({args.n} files per format, {args.native} -> {args.size} + "
        f"2x{args.margin} px, {cores} cores, load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after)"
    )
    print("| format | workers | plain loop img/s (1 core) | build img/s | per core | per core / plain | same pixels |")
    print("|---|---|---|---|---|---|---|")
    for fmt, w, plain, rate, same in rows:
        per_core = rate / w
        print(f"| {fmt} | {w} | {plain:.0f} | {rate:.0f} | {per_core:.0f} | {per_core / plain:.2f} | {same} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
