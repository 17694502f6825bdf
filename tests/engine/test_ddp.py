"""DDP on the CPU (gloo, 2 processes via `--gpus 2` -> torch.distributed.run): gathered OOF = single-process OOF."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from _factories import synthetic_medmnist

from medkit.engine.ddp import DistInfo, dist_info, relaunch_argv
from medkit.engine.feed import EpochBatches


def _npz(path: Path) -> Path:
    # 17 validation images: not a multiple of 2 processes x 4, so padding and de-duplication are exercised.
    return synthetic_medmnist(path, (24, 17, 8))


def test_dist_info_reads_torchrun_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    info = dist_info()
    assert (info.world_size, info.rank, info.local_rank, info.enabled, info.is_main) == (4, 3, 1, True, False)
    assert info.on_this_node == 4  # without LOCAL_WORLD_SIZE: every process shares this machine
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert dist_info().on_this_node == 2
    monkeypatch.delenv("LOCAL_WORLD_SIZE")
    monkeypatch.delenv("WORLD_SIZE")
    monkeypatch.delenv("RANK")
    monkeypatch.delenv("LOCAL_RANK")
    assert dist_info() == DistInfo()


def test_relaunch_argv_runs_medkit_under_torchrun() -> None:
    argv = relaunch_argv(2, ["train", "binary", "--data", "x.npz"])
    assert argv[:3] == [sys.executable, "-m", "torch.distributed.run"]
    assert "--nproc_per_node=2" in argv and argv[-4:] == ["train", "binary", "--data", "x.npz"]


def test_training_batches_cover_the_epoch_once_across_ranks() -> None:
    ranks = [EpochBatches(24, 8, True, seed=3, world_size=2, rank=r) for r in range(2)]
    for r in ranks:
        r.set_epoch(1)
    steps = [r.batches() for r in ranks]
    assert len(steps[0]) == len(steps[1]) == 3  # the same number of optimizer steps as one process with batch 8
    rows = np.concatenate([np.concatenate(s) for s in steps])
    assert sorted(rows.tolist()) == list(range(24))


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed not built")
def test_two_process_gloo_run_matches_single_process_oof(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from medkit.cli.main import app

    npz = _npz(tmp_path / "mini.npz")
    args = [
        "train",
        "binary",
        "--data",
        str(npz),
        "--model",
        "cnn_small",
        "--img-size",
        "28",
        "--batch-size",
        "8",
        "--device",
        "cpu",
        "--workers",
        "0",
        "--epochs",
        "1",
        "--seed",
        "1",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MEDKIT_QUIET": "1"}
    # `--gpus 2` re-executes medkit under torch.distributed.run; the children detect WORLD_SIZE / RANK and use gloo.
    proc = subprocess.run(
        [sys.executable, "-m", "medkit", *args, "--gpus", "2", "--out", str(tmp_path / "ddp"), "--json"],
        capture_output=True,
        text=True,
        timeout=240,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    # Rank 0 alone reports: exactly one JSON document on stdout.
    summary = json.loads(proc.stdout)
    assert summary["steps"] == 3 and summary["test"]["n"] == 8
    single = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "one"), "--json"], catch_exceptions=False)
    assert single.exit_code == 0, single.stderr
    ddp_oof = pd.read_csv(tmp_path / "ddp" / "oof.csv")
    one_oof = pd.read_csv(tmp_path / "one" / "oof.csv")
    assert len(ddp_oof) == len(one_oof) == 17
    assert ddp_oof["image"].tolist() == one_oof["image"].tolist()  # same rows, same order, no padded duplicates
    assert np.array_equal(ddp_oof["label0"], one_oof["label0"])
    run = json.loads((tmp_path / "ddp" / "run.json").read_text())
    assert run["world_size"] == 2
    assert json.loads(single.stdout)["steps"] == summary["steps"]
