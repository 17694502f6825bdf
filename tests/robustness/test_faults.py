"""Runs that collide, die at the wrong moment or cannot write: two trainings into one --out, kill -9 during the
cache build and during `medkit tile` (then the same command again), Ctrl-C during `medkit tile`, workers outliving
their parent, a run killed between last.pt and its outputs, outputs that cannot be written.

The process-level cases run medkit in a subprocess (``python -m medkit``) and kill it for real.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import tifffile
from _factories import synthetic_medmnist
from typer.testing import CliRunner

from medkit._lock import LOCK_NAME, RunLock
from medkit.cli.main import app
from medkit.errors import UsageError

REPO = Path(__file__).resolve().parents[2]
ENV = {
    **os.environ,
    "PYTHONPATH": str(REPO),
    "MEDKIT_QUIET": "1",
    "OMP_NUM_THREADS": "1",
    "MEDKIT_DISABLE_PLUGINS": "1",
}
FAST = ["--model", "cnn_small", "--img-size", "28", "--batch-size", "8", "--device", "cpu", "--workers", "0"]
runner = CliRunner()


# ---------------------------------------------------------------------------------------------------- helpers
def medkit(*args: str | Path, **kw: object) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "medkit", *map(str, args)],
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        **kw,  # type: ignore[arg-type]
    )


def wait_for(condition: Callable[[], bool], proc: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    """Poll ``condition`` while ``proc`` runs; fail when the process ends first or time runs out."""
    end = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            raise AssertionError(f"process ended (rc {proc.returncode}) first: {proc.stderr.read().decode()[-2000:]}")
        if time.monotonic() > end:
            proc.kill()
            raise AssertionError("timed out waiting")
        time.sleep(0.02)


def descendants(pid: int) -> list[int]:
    """Every live process below ``pid`` (children, their children: a fork server's workers), from /proc."""
    parents: dict[int, int] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
            except OSError:
                continue
            parents[int(d.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = [], [pid]
    while frontier:
        kids = [p for p, pp in parents.items() if pp in frontier]
        found += kids
        frontier = kids
    return found


def running(pid: int) -> bool:
    """Whether ``pid`` exists and is not a zombie waiting to be reaped."""
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def assert_gone(pids: list[int], timeout: float = 5.0) -> None:
    end = time.monotonic() + timeout
    while any(running(p) for p in pids) and time.monotonic() < end:
        time.sleep(0.05)
    assert not [p for p in pids if running(p)], "worker processes outlived their parent"


def write_slides(folder: Path, n: int) -> Path:
    """``n`` small single-level tiled TIFF slides: white background, a random dark block of tissue each."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        img = np.full((160, 160, 3), 245, np.uint8)
        y, x = rng.integers(0, 80, 2)
        img[y : y + 70, x : x + 70] = rng.integers(0, 180, (70, 70, 3), dtype=np.uint8)
        tifffile.imwrite(folder / f"s{i:03d}.tiff", img, tile=(32, 32))
    return folder


def tree_bytes(root: Path, pattern: str) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.glob(pattern)) if p.is_file()}


TILE = ["--n", "4", "--size", "32", "--workers", "2"]


# ---------------------------------------------------------------------------------------------------- the lock
def test_lock_refuses_a_live_holder_and_takes_over_a_dead_one(tmp_path: Path) -> None:
    with RunLock(tmp_path / "new") as lock:  # a folder made for nothing is not left behind
        assert (tmp_path / "new" / LOCK_NAME).is_file()
    assert not (tmp_path / "new").exists()
    (tmp_path / "run").mkdir()
    with RunLock(tmp_path / "run") as first:
        assert (tmp_path / "run" / LOCK_NAME).is_file()
        with pytest.raises(UsageError, match=f"PID {os.getpid()}"):
            RunLock(tmp_path / "run").acquire()
    assert not (tmp_path / "run" / LOCK_NAME).exists() and not first.held
    # A lock whose process is gone (a killed run), and a temp file it left, are cleared by the next writer.
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / "run" / LOCK_NAME).write_text(json.dumps({"pid": dead.pid, "host": os.uname().nodename}))
    (tmp_path / "run" / ".last.pt.abc123_z.tmp").write_bytes(b"half a checkpoint")
    (tmp_path / "run" / ".notes.tmp").write_text("a user's own file")  # not a medkit temp file: kept
    with RunLock(tmp_path / "run") as lock:
        assert any(f"PID {dead.pid}" in n for n in lock.notes) and any("temporary" in n for n in lock.notes)
        assert json.loads((tmp_path / "run" / LOCK_NAME).read_text())["pid"] == os.getpid()
    assert [p.name for p in (tmp_path / "run").glob(".*.tmp")] == [".notes.tmp"]


def test_two_trainings_into_one_out_the_second_refuses(tmp_path: Path) -> None:
    npz = synthetic_medmnist(tmp_path / "mini.npz")
    out = tmp_path / "run"
    first = medkit("train", "binary", "--data", npz, *FAST, "--epochs", "200", "--out", out)
    try:
        wait_for(lambda: (out / LOCK_NAME).is_file(), first)
        res = runner.invoke(app, ["train", "binary", "--data", str(npz), *FAST, "--epochs", "1", "--out", str(out)])
        assert res.exit_code == 2, res.output
        assert f"in use by another medkit train run (PID {first.pid}" in res.stderr and "Traceback" not in res.stderr
    finally:
        first.kill()
        first.wait()


# ---------------------------------------------------------------------------------------------------- train
def test_run_killed_after_last_pt_but_before_its_outputs_completes_with_resume(tmp_path: Path) -> None:
    import torch

    npz = synthetic_medmnist(tmp_path / "mini.npz", (16, 8, 8))
    out = tmp_path / "run"
    args = ["train", "binary", "--data", str(npz), *FAST, "--epochs", "1", "--out", str(out)]
    assert runner.invoke(app, args, catch_exceptions=False).exit_code == 0
    last = out / "checkpoints" / "last.pt"
    assert torch.load(last, weights_only=False)["finished"]
    # The state of a run killed after its last epoch's last.pt: not yet marked finished, no outputs written.
    state = torch.load(last, weights_only=False)
    state["finished"] = False
    torch.save(state, last)
    for name in ("metrics.csv", "curve.png", "test.json"):
        (out / name).unlink()
    stale = out / "checkpoints" / ".last.pt.k2j3x9ab.tmp"  # what a kill during a checkpoint write leaves
    stale.write_bytes(b"half a checkpoint")
    res = runner.invoke(app, [*args, "--resume"], catch_exceptions=False)
    assert res.exit_code == 0, res.stderr
    assert "writing the outputs" in res.stderr and not stale.exists()
    assert all((out / name).is_file() for name in ("metrics.csv", "curve.png", "test.json"))
    assert torch.load(last, weights_only=False)["finished"]
    res = runner.invoke(app, [*args, "--resume"], catch_exceptions=False)
    assert res.exit_code == 2 and "already finished" in res.stderr


def test_outputs_that_cannot_be_written_fail_first_with_the_path_named(tmp_path: Path) -> None:
    npz = synthetic_medmnist(tmp_path / "mini.npz")
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    table = tmp_path / "t.csv"
    table.write_text("image,label\n" + "".join(f"{i}.png,{i % 2}\n" for i in range(12)))
    slides = write_slides(tmp_path / "slides", 1)
    cases = [
        ["train", "binary", "--data", str(npz), *FAST, "--out", str(blocker / "run")],
        ["tile", str(slides), "--out", str(blocker)],
        ["split", str(table), "--out", str(blocker / "folds.csv")],
        ["audit", str(tmp_path), "--out", str(blocker / "audit")],
    ]
    for args in cases:
        res = runner.invoke(app, args)
        assert res.exit_code == 2, (args, res.output)
        assert "cannot write" in res.stderr and "a_file" in res.stderr and "internal error" not in res.stderr, args
    if os.geteuid() != 0:  # root writes into read-only folders anyway
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        try:
            res = runner.invoke(app, ["train", "binary", "--data", str(npz), *FAST, "--out", str(ro / "run")])
            assert res.exit_code == 2 and "cannot write --out" in res.stderr
        finally:
            ro.chmod(0o700)
    # `split --out FOLDER` writes FOLDER/folds.csv, as its help says ("file or folder").
    (tmp_path / "folder").mkdir()
    res = runner.invoke(app, ["split", str(table), "--n-folds", "2", "--out", str(tmp_path / "folder")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "folder" / "folds.csv").is_file()


# ---------------------------------------------------------------------------------------------------- kill -9
CACHE_SCRIPT = """
import sys, time
from pathlib import Path
from medkit.data.cache import UInt8Cache
from medkit.data.pipeline import Preprocess

root, out, slow = Path(sys.argv[1]), Path(sys.argv[2]), float(sys.argv[3])
marks = [0]

def on_row(_row):
    marks[0] += 1
    (out.parent / "marked").write_text(str(marks[0]))
    time.sleep(slow)  # the parent marks rows slowly, so the build is still running when it is killed

paths = sorted(str(p) for p in root.glob("*.png"))
UInt8Cache.build(paths, Preprocess(size=24, channels=1), out, workers=2, progress=False, on_row=on_row)
"""


def test_kill_9_during_the_cache_build_then_the_same_command_completes_it(tmp_path: Path) -> None:
    import cv2

    from medkit.data.cache import UInt8Cache
    from medkit.data.pipeline import Preprocess

    rng = np.random.default_rng(0)
    (tmp_path / "img").mkdir()
    for i in range(160):
        cv2.imwrite(str(tmp_path / "img" / f"{i:03d}.png"), rng.integers(0, 256, (40, 40), dtype=np.uint8))
    script = tmp_path / "build.py"
    script.write_text(CACHE_SCRIPT)
    cmd = [sys.executable, str(script), str(tmp_path / "img"), str(tmp_path / "cache"), "0.02"]
    proc = subprocess.Popen(cmd, env=ENV, stderr=subprocess.PIPE)
    marked = tmp_path / "marked"
    # Past the first flush of the done-mask (2 s), so the killed build leaves some rows marked done on disk.
    wait_for(lambda: marked.is_file() and int(marked.read_text() or 0) >= 110, proc)
    workers = descendants(proc.pid)
    assert workers, "the build runs in worker processes"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert_gone(workers)
    (key,) = [d for d in (tmp_path / "cache").iterdir() if d.is_dir()]
    done = np.load(key / "done.npy")
    assert 0 < done.sum() < len(done), "the build was interrupted part way"
    rerun = subprocess.run([*cmd[:-1], "0"], env=ENV, capture_output=True, timeout=120)
    assert rerun.returncode == 0, rerun.stderr.decode()[-2000:]
    resumed_rows = int(marked.read_text())  # rows computed by the second build (its own counter)
    assert resumed_rows < len(done)
    paths = sorted(str(p) for p in (tmp_path / "img").glob("*.png"))
    clean = UInt8Cache.build(paths, Preprocess(size=24, channels=1), tmp_path / "clean", workers=0, progress=False)
    resumed = UInt8Cache.build(paths, Preprocess(size=24, channels=1), tmp_path / "cache", workers=0, progress=False)
    assert np.load(key / "done.npy").all()
    np.testing.assert_array_equal(resumed.get_batch(np.arange(len(paths))), clean.get_batch(np.arange(len(paths))))
    assert not list(key.glob(".*.tmp"))


@pytest.mark.slow
def test_kill_9_and_ctrl_c_during_tile_then_the_same_command_gives_the_same_tiles(tmp_path: Path) -> None:
    slides = write_slides(tmp_path / "slides", 120)
    out = tmp_path / "out"
    done = lambda: len(list((out / "index").glob("*.done.json"))) if (out / "index").is_dir() else 0  # noqa: E731

    # kill -9: the workers die with the parent (nothing left holding the caller's stdout), a rerun completes.
    proc = medkit("tile", slides, "--out", out, *TILE)
    wait_for(lambda: done() >= 5, proc)
    workers = descendants(proc.pid)
    proc.kill()
    proc.wait()
    assert workers and 5 <= done() < 120
    assert_gone(workers)
    assert (out / LOCK_NAME).is_file()  # the killed run's lock: stale now

    # Ctrl-C (to the whole process group, as a terminal sends it): pending slides are cancelled and running ones
    # stopped; exit 130 with most slides still to do.
    before = done()
    proc = medkit("tile", slides, "--out", out, *TILE, start_new_session=True)
    wait_for(lambda: done() >= before + 5, proc)
    workers = descendants(proc.pid)
    os.killpg(proc.pid, signal.SIGINT)
    proc.wait(timeout=20)
    assert proc.returncode == 130, proc.stderr.read().decode()[-2000:]
    assert done() < 120 and "Traceback" not in proc.stderr.read().decode()
    assert_gone(workers)

    rerun = subprocess.run([sys.executable, "-m", "medkit", "tile", slides, "--out", out, *TILE], env=ENV, timeout=120)
    assert rerun.returncode == 0 and done() == 120
    reference = tmp_path / "reference"
    res = runner.invoke(
        app, ["tile", str(slides), "--out", str(reference), "--n", "4", "--size", "32", "--workers", "0"]
    )
    assert res.exit_code == 0, res.output
    tiles = tree_bytes(out, "tiles/*/*.png")
    assert len(tiles) == 480 and tiles == tree_bytes(reference, "tiles/*/*.png")
    assert (out / "tiles.csv").read_bytes() == (reference / "tiles.csv").read_bytes()
    assert not (out / LOCK_NAME).exists() and not list(out.rglob(".*.tmp"))


def test_kill_9_of_audit_leaves_no_worker_holding_its_stdout(tmp_path: Path) -> None:
    import cv2

    rng = np.random.default_rng(0)
    (tmp_path / "img").mkdir()
    for i in range(1200):
        cv2.imwrite(str(tmp_path / "img" / f"{i:04d}.png"), rng.integers(0, 256, (160, 160), dtype=np.uint8))
    # `medkit audit ... | wc -c`: the reader sees the end of the pipe only when every writer is gone.
    proc = subprocess.Popen(
        [sys.executable, "-m", "medkit", "audit", str(tmp_path / "img"), "--workers", "2"],
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    wait_for(lambda: len(descendants(proc.pid)) >= 2, proc)
    workers = descendants(proc.pid)
    proc.kill()
    proc.wait()
    reader = threading.Thread(target=proc.stdout.read)  # type: ignore[union-attr]
    reader.start()
    reader.join(timeout=10)
    assert not reader.is_alive(), "a worker still holds the killed audit's stdout"
    assert_gone(workers)


def test_an_audit_into_a_folder_another_live_command_writes_is_refused(tmp_path: Path) -> None:
    import cv2

    data = tmp_path / "data"
    data.mkdir()
    for i in range(3):
        assert cv2.imwrite(str(data / f"{i}.png"), np.full((8, 8), 40 * (i + 1), np.uint8))
    out = tmp_path / "audit"
    with RunLock(out, "medkit audit"):  # this process holds the folder, as a running audit would
        res = runner.invoke(app, ["audit", str(data), "--out", str(out), "--workers", "0"])
        assert res.exit_code == 2, res.output
        assert f"PID {os.getpid()}" in res.output and not (out / "findings.csv").exists()
    res = runner.invoke(app, ["audit", str(data), "--out", str(out), "--workers", "0", "--fail-on", "none"])
    assert res.exit_code == 0, res.output
    assert (out / "findings.csv").is_file() and not (out / LOCK_NAME).exists()
