"""Benchmark `medkit audit` against cleanvision on one folder, and the near-duplicate search on 100k hashes.

Run by hand (not a test):

    python -m venv /tmp/cvenv && /tmp/cvenv/bin/pip install cleanvision
    python benchmarks/bench_audit.py --cleanvision-python /tmp/cvenv/bin/python --workers 2 --repeat 3

1. Builds a folder (default 3,500 images) from the NIH ChestX-ray14 sample (resized to 256x256) and BreastMNIST
   (resized to 128x128) in /work/shared/data, with planted dark images, exact copies and resized JPEG
   re-compressed copies. Runs `medkit audit` (CLI, subprocess) and cleanvision (dark, exact and near duplicates,
   subprocess in its own environment) on it with the same number of worker processes, ``--repeat`` times each,
   alternating; prints the median and range of both wall times, the ratio of the medians, whether medkit's
   findings cover cleanvision's and the planted ones, and the floor: the time to only decode every file
   (OpenCV, the same number of processes, timed inside one process that has OpenCV imported).
2. Times `near_pairs` + `clusters` on 100k random 64-bit hashes with planted neighbours, and a brute-force
   all-pairs comparison on a 20k subset (extrapolated by n^2 to 100k) as the baseline.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SHARED = Path(os.environ.get("MEDKIT_SHARED_DATA", "/work/shared/data"))

CLEANVISION_SCRIPT = r"""
import json, sys, time
from cleanvision import Imagelab
root, n_jobs = sys.argv[1], int(sys.argv[2])
t = time.perf_counter()
lab = Imagelab(data_path=root)
lab.find_issues({"dark": {}, "exact_duplicates": {}, "near_duplicates": {}}, n_jobs=n_jobs, verbose=False)
issues = lab.issues
dark = sorted(issues.index[issues["is_dark_issue"]].tolist())
info = lab.info
out = {"seconds": time.perf_counter() - t, "dark": dark,
       "exact_sets": [sorted(s) for s in info["exact_duplicates"]["sets"]],
       "near_sets": [sorted(s) for s in info["near_duplicates"]["sets"]]}
print(json.dumps(out))
"""


def build_folder(root: Path, n_nih: int = 1000, n_extra: int = 2200, seed: int = 0) -> dict[str, set]:
    """Write the benchmark images; return the planted dark files and duplicate pairs (absolute paths)."""
    import cv2

    rng = np.random.default_rng(seed)
    nih = sorted((SHARED / "nih1000_kcr2019" / "NIH1000").rglob("*.png"))[:n_nih]
    bm = np.load(SHARED / "medmnist" / "breastmnist.npz")
    breast = np.concatenate([bm["train_images"], bm["val_images"], bm["test_images"]])
    (root / "nih").mkdir(parents=True)
    (root / "breast").mkdir()
    (root / "planted").mkdir()
    base: list[Path] = []
    for k, p in enumerate(nih):
        img = cv2.resize(cv2.imread(str(p), cv2.IMREAD_GRAYSCALE), (256, 256), interpolation=cv2.INTER_CUBIC)
        out = root / "nih" / f"nih_{k:05d}.png"
        cv2.imwrite(str(out), img)
        base.append(out)
    # Extra distinct images: BreastMNIST, then NIH flipped / rotated with a gamma change (not copies).
    k = 0
    while k < n_extra:
        if k < len(breast):
            img = cv2.resize(breast[k], (128, 128), interpolation=cv2.INTER_CUBIC)
        else:
            src = cv2.imread(str(base[k % len(base)]), cv2.IMREAD_GRAYSCALE)
            src = np.rot90(src, 1 + (k // len(base)) % 3).copy()
            img = np.clip(255 * (src / 255.0) ** rng.uniform(0.6, 0.8), 0, 255).astype(np.uint8)
        cv2.imwrite(str(root / "breast" / f"x_{k:05d}.png"), img)
        k += 1
    planted: dict[str, set] = {"dark": set(), "exact": set(), "near": set()}
    for k in range(100):  # dark: BreastMNIST images scaled down (their originals are in breast/: near copies too)
        src = cv2.resize(breast[-(k + 1)], (128, 128), interpolation=cv2.INTER_CUBIC).astype(np.float32)
        out = root / "planted" / f"dark_{k:03d}.png"
        cv2.imwrite(str(out), (src * rng.uniform(0.05, 0.25)).astype(np.uint8))
        planted["dark"].add(str(out))
    for k in range(100):  # exact copies under another name
        src = base[(7 * k) % len(base)]
        out = root / "planted" / f"copy_{k:03d}.png"
        out.write_bytes(src.read_bytes())
        planted["exact"].add(frozenset({str(src), str(out)}))
    for k in range(100):  # resized, JPEG re-compressed copies
        src = base[(7 * k + 3) % len(base)]
        img = cv2.imread(str(src), cv2.IMREAD_GRAYSCALE)
        img = cv2.resize(img, (192, 192), interpolation=cv2.INTER_AREA)
        out = root / "planted" / f"near_{k:03d}.jpg"
        cv2.imwrite(str(out), img, [cv2.IMWRITE_JPEG_QUALITY, 75])
        planted["near"].add(frozenset({str(src), str(out)}))
    return planted


def run_medkit(root: Path, workers: int) -> tuple[float, dict]:
    t = time.perf_counter()
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "medkit",
            "-q",
            "audit",
            str(root),
            "--json",
            "--workers",
            str(workers),
            "--fail-on",
            "none",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    seconds = time.perf_counter() - t
    if res.returncode != 0:
        raise SystemExit(f"medkit audit failed ({res.returncode}): {res.stderr[-2000:]}")
    return seconds, json.loads(res.stdout)


def run_cleanvision(python: str, root: Path, workers: int) -> tuple[float, dict]:
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as fh:
        fh.write(CLEANVISION_SCRIPT)
    t = time.perf_counter()
    res = subprocess.run([python, fh.name, str(root), str(workers)], capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - t
    os.unlink(fh.name)
    if res.returncode != 0:
        raise SystemExit(f"cleanvision failed: {res.stderr[-2000:]}")
    return seconds, json.loads(res.stdout.strip().splitlines()[-1])


DECODE_SCRIPT = r"""
import os, sys, time
from concurrent.futures import ProcessPoolExecutor
import cv2
root, workers = sys.argv[1], int(sys.argv[2])
files = sorted(os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs)

def decode(chunk):
    t = time.process_time()
    for f in chunk:
        cv2.imread(f, cv2.IMREAD_UNCHANGED)
    return time.process_time() - t

chunks = [files[i : i + 64] for i in range(0, len(files), 64)]
t = time.perf_counter()
with ProcessPoolExecutor(workers) as pool:
    cpu = sum(pool.map(decode, chunks))
print(time.perf_counter() - t, cpu, len(files))
"""


def decode_floor(root: Path, workers: int) -> tuple[float, float, int]:
    """(wall s, CPU s, files) to decode every file with OpenCV in ``workers`` processes: what no audit can beat."""
    res = subprocess.run(
        [sys.executable, "-c", DECODE_SCRIPT, str(root), str(workers)], capture_output=True, text=True, check=True
    )
    wall, cpu, n = res.stdout.split()
    return float(wall), float(cpu), int(n)


def _spread(times: list[float]) -> str:
    return f"median {np.median(times):.2f} s (range {min(times):.2f}-{max(times):.2f}, n={len(times)})"


def compare(root: Path, mk: dict, cv: dict, planted: dict[str, set]) -> None:
    def absolute(files: list[str]) -> list[str]:
        return [str(root / f) for f in files]

    mk_dark = {str(root / f["files"][0]) for f in mk["findings"] if f["kind"] in ("dark", "blank")}
    # A medkit duplicate cluster is the union of its exact and near findings' files.
    cluster_of: dict[str, int] = {}
    for n, f in enumerate(x for x in mk["findings"] if x["kind"] in ("exact_duplicate", "near_duplicate")):
        files = absolute(f["files"])
        ids = {cluster_of[x] for x in files if x in cluster_of} | {n}
        target = min(ids)
        for x, c in list(cluster_of.items()):
            if c in ids:
                cluster_of[x] = target
        for x in files:
            cluster_of[x] = target

    def together(files: list[str] | frozenset) -> bool:
        ids = {cluster_of.get(str(x)) for x in files}
        return len(ids) == 1 and None not in ids

    cv_dark = set(cv["dark"])
    print(
        f"dark: cleanvision {len(cv_dark)}, medkit dark/blank {len(mk_dark)}, cleanvision's covered by medkit "
        f"{len(cv_dark & mk_dark)}/{len(cv_dark)}, "
        f"planted found {len(planted['dark'] & mk_dark)}/{len(planted['dark'])}"
        f" (cleanvision {len(planted['dark'] & cv_dark)})"
    )
    for name in ("exact", "near"):
        sets = cv[f"{name}_sets"]
        covered = sum(together(s) for s in sets)
        found = sum(together(p) for p in planted[name])
        cv_found = sum(any(set(p) <= set(s) for s in sets) for p in planted[name])
        print(
            f"{name} duplicates: cleanvision sets {len(sets)}, covered by a medkit cluster {covered}/{len(sets)}; "
            f"planted pairs found by medkit {found}/{len(planted[name])}, by cleanvision {cv_found}"
        )
    missed = [s for s in cv["near_sets"] if not together(s)]
    for s in missed[:5]:
        print("  cleanvision near set not joined by medkit:", [Path(x).name for x in s])


def bench_hashes(n: int = 100_000, threshold: int = 6, brute_n: int = 20_000) -> None:
    from medkit.audit.phash import clusters, hamming, near_pairs

    rng = np.random.default_rng(1)
    h = rng.integers(0, np.iinfo(np.uint64).max, size=n, dtype=np.uint64, endpoint=True)
    planted = 1000
    for k in range(planted):  # neighbour at distance 1..threshold
        v = int(h[k])
        for b in rng.choice(64, size=1 + k % threshold, replace=False):
            v ^= 1 << int(b)
        h[n - 1 - k] = v
    t = time.perf_counter()
    i, j, _ = near_pairs(h, threshold)
    labels = clusters(n, i, j)
    mih = time.perf_counter() - t
    found = sum(labels[k] == labels[n - 1 - k] for k in range(planted))
    t = time.perf_counter()
    sub = h[:brute_n]
    count = 0
    for lo in range(0, brute_n, 2000):
        count += int((hamming(sub[lo : lo + 2000, None], sub[None, :]) <= threshold).sum())
    brute = (time.perf_counter() - t) * (n / brute_n) ** 2
    print(
        f"near-duplicate search, {n} hashes, threshold {threshold}: multi-index {mih:.2f} s ({len(i)} pairs, "
        f"planted {found}/{planted} joined); brute force all pairs ~{brute:.1f} s (measured on {brute_n}, "
        f"scaled by n^2); ratio {brute / mih:.1f}x"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cleanvision-python", default="/tmp/cvenv/bin/python")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--extra", type=int, default=2200, help="images beyond the 1000 NIH ones")
    ap.add_argument("--data", type=Path, default=None, help="reuse a folder built earlier (skips planting checks)")
    ap.add_argument("--repeat", type=int, default=3, help="runs of each tool (the machine may be shared)")
    ap.add_argument("--skip-folder", action="store_true", help="only the 100k hash benchmark")
    ap.add_argument("--skip-hashes", action="store_true", help="only the folder benchmark")
    args = ap.parse_args()
    if not args.skip_folder:
        with tempfile.TemporaryDirectory(prefix="bench_audit_") as tmp:
            if args.data is not None:
                root, planted = args.data, {"dark": set(), "exact": set(), "near": set()}
            else:
                root = Path(tmp) / "data"
                planted = build_folder(root, n_extra=args.extra)
            n = sum(1 for _ in root.rglob("*.*"))
            print(f"folder: {n} images; {os.cpu_count()} cores visible; workers {args.workers}")
            cv_times, mk_times = [], []
            for _ in range(args.repeat):  # alternating, so a change in the machine's load hits both tools
                cv_s, cv = run_cleanvision(args.cleanvision_python, root, args.workers)
                mk_s, mk = run_medkit(root, args.workers)
                cv_times.append(cv_s)
                mk_times.append(mk_s)
            floor_wall, floor_cpu, _ = decode_floor(root, args.workers)
            print(f"cleanvision (dark + exact + near): {_spread(cv_times)}")
            print(f"medkit audit (all checks):         {_spread(mk_times)}")
            print(
                f"speed-up (ratio of medians) {np.median(cv_times) / np.median(mk_times):.1f}x; per run "
                + ", ".join(f"{c / m:.1f}x" for c, m in zip(cv_times, mk_times, strict=True))
            )
            print(
                f"floor: decoding every file with OpenCV in {args.workers} processes takes {floor_wall:.2f} s "
                f"({floor_cpu:.2f} CPU s, {1e3 * floor_cpu / n:.2f} ms per image), without Python's start-up"
            )
            print(f"medkit findings: {mk['counts']}")
            compare(root, mk, cv, planted)
    if not args.skip_hashes:
        bench_hashes()


if __name__ == "__main__":
    main()
