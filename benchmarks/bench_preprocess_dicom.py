"""Preprocess on CT DICOM files with windows: the lookup-table path (dicom_windows) against the float path.

The float path is what `Preprocess` did before: ``read_image`` (float32 Hounsfield units) then ``multi_window``
and the resize. The table path windows the stored 16-bit values through one 65536-entry table per window. Both give
the same pixels on MONOCHROME2 files (tests/data/test_pipeline.py checks it); this script times them side by side on
synthetic 512x512 int16 CT slices and prints the ratio.

Run by hand (not a test)::

    python benchmarks/bench_preprocess_dicom.py --n 200 --size 256
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path


def _write(path: Path, hu: object) -> None:
    import numpy as np
    from _dicom import write_ct

    write_ct(path, (np.asarray(hu) + 1024).astype(np.int16), bits_stored=16, signed=True)


def main() -> None:
    """Time both paths over the same files, best of ``--repeat`` passes each, and print img/s and the ratio."""
    import numpy as np

    from medkit.data.pipeline import Preprocess
    from medkit.io.readers import read_image

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200, help="files")
    ap.add_argument("--native", type=int, default=512, help="side of the DICOM images")
    ap.add_argument("--size", type=int, default=256, help="training size")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    pre = Preprocess(size=args.size, windows=("brain", "subdural", "soft_tissue"))
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory(prefix="medkit-bench-dicom-") as tmp:
        files = []
        for i in range(args.n):
            p = Path(tmp) / f"{i:05d}.dcm"
            _write(p, rng.integers(-1024, 2500, (args.native, args.native)).astype(np.int16))
            files.append(p)

        def float_path(p: Path) -> np.ndarray:
            return pre.from_array(read_image(p))

        timings = {}
        for name, fn in (("float path (before)", float_path), ("table path (dicom_windows)", pre)):
            best = float("inf")
            for _ in range(args.repeat):
                t0 = time.perf_counter()
                for p in files:
                    fn(p)
                best = min(best, time.perf_counter() - t0)
            timings[name] = args.n / best
        same = all(np.array_equal(float_path(p), pre(p)) for p in files[:20])
    print(f"{args.n} CT DICOM files {args.native} px -> 3 windows at {args.size} px, best of {args.repeat}")
    for name, ips in timings.items():
        print(f"  {name:28s} {ips:8.1f} img/s")
    base, new = timings["float path (before)"], timings["table path (dicom_windows)"]
    print(f"  ratio {new / base:.2f}x; identical pixels on the first 20 files: {same}")


if __name__ == "__main__":
    main()
