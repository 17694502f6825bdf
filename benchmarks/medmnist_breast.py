"""BreastMNIST with the MedMNIST v2 protocol, trained by the medkit engine, against the paper's ResNet-18 (28).

Protocol (Yang et al., Sci Data 2023): ResNet-18 (28) at 28 px, Adam lr 1e-3 decayed x0.1 at 50% and 75% of 100
epochs, batch 128, images normalised with mean 0.5 / std 0.5, no augmentation, the model with the best validation
AUC is scored on the test split (binary AUC on the positive score, and accuracy at 0.5). The paper reports
0.901 AUC / 0.863 ACC. The default model, medkit's ``resnet18_cifar``, is the paper's network: timm's ResNet-18
stages behind a 3x3 stride-1 stem without max-pool. ``--model resnet18`` gives timm's ImageNet stem for comparison.

Run by hand (not a test)::

    python benchmarks/medmnist_breast.py --data /work/shared/data/medmnist/breastmnist.npz --seeds 0 1 2 --jobs 2

``--jobs N`` trains N seeds at a time in child processes with one CPU thread each (OMP_NUM_THREADS=1). Each seed
writes ``OUT/seed<k>/bench.json``; the script prints one line per seed and the mean test AUC / ACC next to the
paper's figures, with their ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

PAPER = {"auc": 0.901, "acc": 0.863}


def _run_children(args: argparse.Namespace) -> list[dict]:
    """Train each seed in its own single-threaded child process, ``args.jobs`` at a time."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}

    def one(seed: int) -> dict:
        cmd = [sys.executable, __file__, "--data", args.data, "--seeds", str(seed), "--epochs", str(args.epochs)]
        cmd += ["--model", args.model, "--out", args.out, "--device", args.device, "--jobs", "1"]
        subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
        row = json.loads((Path(args.out) / f"seed{seed}" / "bench.json").read_text())
        print(json.dumps(row), flush=True)
        return row

    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        return list(pool.map(one, args.seeds))


def main() -> None:
    """Train one model per seed and compare the mean test scores with the paper's."""
    import numpy as np

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="/work/shared/data/medmnist/breastmnist.npz")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=100)
    ap.add_argument("--model", default="resnet18_cifar")
    ap.add_argument("--out", default="/tmp/medkit-bench/breastmnist")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--jobs", type=int, default=1, help="seeds trained at a time, one CPU thread each")
    args = ap.parse_args()
    rows = _run_children(args) if args.jobs > 1 else _run_here(args)
    auc = np.array([r["test_auc"] for r in rows], dtype=float)
    acc = np.array([r["test_acc"] for r in rows], dtype=float)
    print(f"BreastMNIST {args.model} (28), {len(rows)} seed(s), {args.epochs} epochs, device {args.device}")
    for name, vals in (("AUC", auc), ("ACC", acc)):
        ref = PAPER[name.lower()]
        print(f"  test {name} {vals.mean():.3f} +- {vals.std():.3f}  (paper {ref:.3f}, ratio {vals.mean() / ref:.3f})")
    print(f"  minutes per seed: {np.mean([r['minutes'] for r in rows]):.1f}")


def _run_here(args: argparse.Namespace) -> list[dict]:
    """Train the seeds one after another in this process."""
    from medkit.console import set_verbosity
    from medkit.engine.fit import TrainConfig, fit
    from medkit.registries import TASKS

    set_verbosity(quiet=True)

    task = TASKS.create(
        "binary",
        model=args.model,
        img_size=28,
        in_chans=1,
        optimizer="adam",
        lr=1e-3,
        weight_decay=0.0,
        scheduler="step",
        epochs=args.epochs,
        batch_size=128,
        mean=(0.5,),
        std=(0.5,),
        augment={},
    )
    rows = []
    for seed in args.seeds:
        out = Path(args.out) / f"seed{seed}"
        t0 = time.perf_counter()
        cfg = TrainConfig(
            task=task,
            data=args.data,
            out=str(out),
            seed=seed,
            device=args.device,
            scheduler_kwargs={"milestones": [0.5, 0.75], "gamma": 0.1},
        )
        if (out / "checkpoints" / "last.pt").exists():
            cfg.resume = True  # a finished seed refuses to resume: remove its folder to rerun it
        res = fit(cfg)
        minutes = (time.perf_counter() - t0) / 60
        rows.append(
            {
                "seed": seed,
                "val_auc": res.best_metric,
                "best_epoch": res.best_epoch,
                "test_auc": res.test.get("auc"),
                "test_acc": res.test.get("acc"),
                "minutes": minutes,
            }
        )
        (out / "bench.json").write_text(json.dumps(rows[-1]))
        print(json.dumps(rows[-1]), flush=True)
    return rows


if __name__ == "__main__":
    main()
