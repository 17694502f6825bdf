"""Quality of medkit's recommended small-image recipe on a MedMNIST binary archive, beside the MedMNIST v2 table.

What it does, per seed, through the command line a user types:

1. ``medkit train binary --recipe small-image --data ARCHIVE --seed S`` (the recipe, chosen on the validation
   split; the model kept is the one with the best validation AUC);
2. ``medkit predict RUN --split val|test`` without and with ``--tta`` (the recipe's views);

then ``medkit ensemble`` averages the seeds' test predictions (a seed ensemble). Every member and the ensemble
are scored on the official test split and on the test split without the images whose near-duplicate cluster
(``medkit audit``: `medkit.audit.run.run_audit`) also holds a training or validation image. Accuracy is given at
0.5 and at the threshold that maximises accuracy on the validation split (the test split never chooses anything).

Run by hand (not a test), in the background on a shared machine::

    nohup python benchmarks/quality.py --data examples/data/breastmnist.npz --out /tmp/quality/bench --jobs 3 \\
        > /tmp/quality/bench.log 2>&1 &

A seed whose run already finished is not trained again (its ``test.json`` exists), so the script can be rerun to
add views or rescore. ``--json`` writes the whole table as JSON too.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

# MedMNIST v2 (Yang et al., Sci Data 2023), BreastMNIST test split: (AUC, ACC); AutoML Vision reports AUC only.
PAPER_ROWS: dict[str, tuple[float, float | None]] = {
    "ResNet-18 (28)": (0.901, 0.863),
    "ResNet-18 (224)": (0.891, 0.833),
    "ResNet-50 (28)": (0.857, 0.812),
    "ResNet-50 (224)": (0.866, 0.842),
    "auto-sklearn": (0.836, 0.803),
    "AutoKeras": (0.871, 0.831),
    "Google AutoML Vision": (0.919, None),
}


@dataclass
class Score:
    """Scores of one prediction set on one version of the test split."""

    auc: float
    acc: float
    acc_val_threshold: float
    threshold: float
    n: int


def _medkit(*args: str) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "medkit", "--quiet", *args], env=env, check=True, stdout=subprocess.DEVNULL)


def train_and_predict(seed: int, args: argparse.Namespace) -> Path:
    """Train one seed with the recipe (unless done) and predict its validation and test splits, plain and TTA."""
    run = Path(args.out) / f"seed{seed}"
    if not (run / "test.json").exists():
        cmd = ["train", "binary", "--recipe", args.recipe, "--data", args.data, "--seed", str(seed)]
        cmd += ["--out", str(run), "--device", args.device]
        if args.epochs:
            cmd += ["--epochs", str(args.epochs)]
        if (run / "checkpoints" / "last.pt").exists():
            cmd.append("--resume")
        _medkit(*cmd)
    for split in ("val", "test"):
        for view, tta in (("plain", None), ("tta", args.tta)):
            path = run / f"{split}_{view}.csv"
            if not path.exists():
                cmd = ["predict", str(run), "--data", args.data, "--split", split, "--out", str(path)]
                cmd += ["--device", args.device]
                _medkit(*cmd, *(["--tta", tta] if tta else []))
    print(f"seed {seed} done: {run}", flush=True)
    return run


def leaked_test_ids(data: str) -> set[str]:
    """Test images (``test/<index>``) whose near-duplicate cluster also holds a training or validation image."""
    from medkit.audit.run import run_audit

    report = run_audit(data, workers=0)
    split_of = [Path(name).parent.name for name in report.files]  # "breastmnist.npz/test/012" -> "test"
    clusters: dict[int, set[str]] = {}
    for split, cluster in zip(split_of, report.cluster, strict=True):
        clusters.setdefault(int(cluster), set()).add(split)
    leaked = set()
    for name, split, cluster in zip(report.files, split_of, report.cluster, strict=True):
        if split == "test" and clusters[int(cluster)] - {"test"}:
            leaked.add(f"test/{int(Path(name).name)}")
    return leaked


def _probs(path: Path) -> tuple[list[str], np.ndarray]:
    import pandas as pd

    frame = pd.read_csv(path)
    col = [c for c in frame.columns if c.endswith("_prob")][0]
    return [str(v) for v in frame["image"]], frame[col].to_numpy(dtype=float)


def _labels(data: str, split: str, ids: list[str]) -> np.ndarray:
    with np.load(data) as z:
        y = np.asarray(z[f"{split}_labels"]).reshape(-1)
    return y[[int(i.split("/")[1]) for i in ids]].astype(int)


def val_threshold(y: np.ndarray, p: np.ndarray) -> float:
    """The threshold that maximises accuracy on (y, p); ties go to the one closest to 0.5."""
    cands = np.unique(np.concatenate([p, [0.5]]))
    accs = np.array([np.mean((p >= t) == y) for t in cands])
    best = np.flatnonzero(accs == accs.max())
    return float(cands[best[np.argmin(np.abs(cands[best] - 0.5))]])


def score(y: np.ndarray, p: np.ndarray, threshold: float) -> Score:
    """AUC, accuracy at 0.5 and at ``threshold``."""
    from sklearn.metrics import roc_auc_score

    return Score(
        float(roc_auc_score(y, p)),
        float(np.mean((p >= 0.5) == y)),
        float(np.mean((p >= threshold) == y)),
        threshold,
        len(y),
    )


def score_member(data: str, val_csv: Path, test_csv: Path, leaked: set[str]) -> dict[str, Score]:
    """One prediction set scored on the official test split and on the de-duplicated one."""
    vids, vp = _probs(val_csv)
    t = val_threshold(_labels(data, "val", vids), vp)
    ids, p = _probs(test_csv)
    y = _labels(data, "test", ids)
    keep = np.array([i not in leaked for i in ids])
    return {"official": score(y, p, t), "dedup": score(y[keep], p[keep], t)}


def ensemble(runs: list[Path], view: str, out: Path) -> tuple[Path, Path]:
    """``medkit ensemble`` (equal-weight mean) of the seeds' validation and test predictions."""
    paths = []
    for split in ("val", "test"):
        path = out / f"ensemble_{split}_{view}.csv"
        _medkit("ensemble", *[str(r / f"{split}_{view}.csv") for r in runs], "--method", "mean", "--out", str(path))
        paths.append(path)
    return paths[0], paths[1]


def _best_val(run: Path) -> float:
    import pandas as pd

    return float(pd.read_csv(run / "metrics.csv")["auc"].max())


def _fmt(values: list[float]) -> str:
    v = np.asarray(values, dtype=float)
    return f"{v.mean():.3f} +- {v.std():.3f}"


def table(rows: dict[str, list[dict[str, Score]]]) -> list[str]:
    """Markdown rows: each prediction set (mean +- std over seeds) on the official and de-duplicated test split."""
    lines = [
        "| model | test split | n | AUC | ACC @0.5 | ACC @val threshold |",
        "|---|---|---|---|---|---|",
    ]
    for name, members in rows.items():
        for version in ("official", "dedup"):
            s = [m[version] for m in members]
            lines.append(
                f"| {name} | {version} | {s[0].n} | {_fmt([x.auc for x in s])} | {_fmt([x.acc for x in s])} | "
                f"{_fmt([x.acc_val_threshold for x in s])} |"
            )
    for name, (auc, acc) in PAPER_ROWS.items():
        lines.append(
            f"| MedMNIST v2: {name} | official | 156 | {auc:.3f} | {'-' if acc is None else f'{acc:.3f}'} | - |"
        )
    return lines


def main() -> None:
    """Train the seeds, predict, ensemble and print the table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="examples/data/breastmnist.npz")
    ap.add_argument("--recipe", default="small-image")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=0, help="override the recipe's epochs (0: the recipe's)")
    ap.add_argument("--tta", default="hflip", help="views of medkit predict --tta")
    ap.add_argument("--out", default="/tmp/medkit-bench/quality")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--jobs", type=int, default=1, help="seeds trained at a time (one CPU thread each)")
    ap.add_argument("--json", action="store_true", help="also write OUT/quality.json")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        runs = list(pool.map(lambda s: train_and_predict(s, args), args.seeds))
    leaked = leaked_test_ids(args.data)
    rows: dict[str, list[dict[str, Score]]] = {}
    for view in ("plain", "tta"):
        label = f"medkit {args.recipe}" + (f" + TTA {args.tta}" if view == "tta" else "")
        rows[f"{label}, single seed"] = [
            score_member(args.data, r / f"val_{view}.csv", r / f"test_{view}.csv", leaked) for r in runs
        ]
        if len(runs) > 1:
            rows[f"{label}, {len(runs)}-seed ensemble"] = [score_member(args.data, *ensemble(runs, view, out), leaked)]
    val = [_best_val(r) for r in runs]
    print(f"{Path(args.data).name}: recipe {args.recipe}, seeds {args.seeds}; {len(leaked)} test images share a")
    print("near-duplicate cluster with train/val and are dropped from the 'dedup' test split")
    print(f"validation AUC of the kept checkpoints: {_fmt(val)}")
    print("\n".join(table(rows)))
    if args.json:
        record = {k: [{v: asdict(s) for v, s in m.items()} for m in ms] for k, ms in rows.items()}
        (out / "quality.json").write_text(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
