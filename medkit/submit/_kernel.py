"""The offline kernel bundle of a code competition: a notebook that predicts the hidden test set with medkit.

Kaggle scores a code competition by re-running a notebook on the hidden test set, with the internet off. The
bundle holds what that notebook needs, in two folders that are pushed separately:

```
OUT/
  kernel/
    kernel-metadata.json        id, code_file, enable_internet false, competition_sources, dataset_sources
    medkit-<name>-inference.py  installs medkit from the wheels, runs `medkit predict` on the test images with the
                                bundled runs, writes submission.csv with `medkit submit --dry-run` (the preset writer)
  dataset/                      the private Kaggle dataset <owner>/medkit-<name>-weights
    dataset-metadata.json
    bundle.json                 what is inside: medkit version, competition, runs, wheels, dependencies to expect
    wheels/*.whl                medkit (built with --build-wheel, or copied from --wheels) and any dependency wheels
    runs/<run>/...              run.json (+ cv.json), oof.csv and checkpoints/best.pt of each run (and of its
                                folds): oof.csv is what `medkit predict` fits the grade cut points on
```

Everything is checked before anything is written (runs, masks, the tiling of whole-slide runs), and the bundle is
written into a temporary folder that replaces ``kernel/`` and ``dataset/`` only when it is complete.

Nothing is downloaded: dependency wheels come from a folder the user fills (``pip download`` elsewhere); the
ones that are missing are listed in bundle.json, expected on the Kaggle image (torch, timm, pandas, ...).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medkit.competitions import Competition
from medkit.errors import DataError, UsageError
from medkit.submit._tiling import tile_options

__all__ = [
    "KernelBundle",
    "KernelRuns",
    "build_kernel_bundle",
    "check_kernel_runs",
    "kernel_script",
    "run_files",
    "sub_runs",
    "expected_dependencies",
]

_OWNER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,49}$")


@dataclass(frozen=True)
class KernelBundle:
    """A kernel bundle on disk.

    Attributes:
        root: The bundle folder.
        kernel_dir: What `kaggle kernels push` takes.
        dataset_dir: What `kaggle datasets create` takes.
        kernel_id: ``owner/slug`` of the notebook.
        dataset_id: ``owner/slug`` of the weights dataset.
        runs: Run folder names under ``dataset/runs``.
        wheels: Wheel files under ``dataset/wheels``.
        missing: Dependencies of medkit without a wheel in the bundle (expected on the Kaggle image).
    """

    root: Path
    kernel_dir: Path
    dataset_dir: Path
    kernel_id: str
    dataset_id: str
    runs: tuple[str, ...]
    wheels: tuple[str, ...]
    missing: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {
            "root": str(self.root),
            "kernel_dir": str(self.kernel_dir),
            "dataset_dir": str(self.dataset_dir),
            "kernel": self.kernel_id,
            "dataset": self.dataset_id,
            "runs": list(self.runs),
            "wheels": list(self.wheels),
            "missing_wheels": list(self.missing),
        }


def _slug(text: str, limit: int = 50) -> str:
    return re.sub(r"-+", "-", re.sub(r"[^a-z0-9]+", "-", text.lower())).strip("-")[:limit].strip("-")


#: What the notebook needs of a run: oof.csv is where `medkit predict` fits the cut points of ordinal grades.
_RUN_FILES = ("run.json", "cv.json", "oof.csv", "checkpoints/best.pt")


def _folds(run: Path) -> list[Path]:
    folds = [p for p in run.glob("fold*") if p.is_dir() and p.name[4:].isdigit() and (p / "run.json").is_file()]
    return sorted(folds, key=lambda p: int(p.name[4:]))


def sub_runs(run: Path) -> list[Path]:
    """The trained runs in a run folder: the folder itself when it has a run.json, and its ``fold<k>/`` sub-runs (a
    ``--fold all`` root has only these).

    Raises:
        DataError: A folder with neither a run.json nor ``fold<k>/run.json``.
    """
    found = ([run] if (run / "run.json").is_file() else []) + _folds(run)
    if not found:
        raise DataError(
            f"{run}: not a run folder (no run.json, no fold<k>/run.json)",
            hint="pass folders that medkit train wrote (a run, or the root of a --fold all run)",
        )
    return found


def run_files(run: Path) -> list[Path]:
    """The files of a run the notebook needs, relative to the run: run.json, cv.json, oof.csv and
    checkpoints/best.pt, and the same in each ``fold<k>/`` sub-run (a ``--fold all`` root has only the sub-runs).

    Raises:
        DataError: A folder that is not a run (no run.json, no fold<k>/run.json) or has no best.pt anywhere.
    """
    files = []
    sub_runs(run)  # a run, or a --fold all root (whose cv.json and joined oof.csv come along)
    for base in [run, *_folds(run)]:
        files += [(base / name).relative_to(run) for name in _RUN_FILES if (base / name).is_file()]
    if not any(f.name == "best.pt" for f in files):
        raise DataError(f"{run}: no checkpoints/best.pt", hint="train the run to the end (or --resume it) first")
    return files


def _mask_column(run: Path) -> str | None:
    """The mask column a run stacks as an input channel (run.json ``mask_col``), or None."""
    try:
        doc = json.loads((run / "run.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DataError(f"{run / 'run.json'}: cannot read it ({exc})") from exc
    spec = doc.get("spec") if isinstance(doc.get("spec"), dict) else {}
    mask = doc.get("mask_col") or spec.get("mask_col")
    return str(mask) if mask else None


def _refuse_mask_runs(runs: Sequence[Path]) -> None:
    for run in runs:
        if mask := _mask_column(run):
            raise DataError(
                f"{run}: the run stacks the masks of column '{mask}' as an input channel, but the competition's test "
                "images have no masks, so the notebook could not predict with it",
                hint="train the submission model on the images alone: medkit train ... --mask-col none",
            )


def expected_dependencies() -> list[str]:
    """The requirement names of the installed medkit distribution (extras left out)."""
    from importlib.metadata import PackageNotFoundError, requires

    try:
        reqs = requires("medkit") or []
    except PackageNotFoundError:
        return []
    names = [re.split(r"[\s;<>=!~\[(]", r, maxsplit=1)[0] for r in reqs if "extra ==" not in r]
    return [n for n in names if n]


def _wheel_name(requirement: str) -> str:
    return re.sub(r"[-_.]+", "_", requirement).lower()


def _collect_wheels(dest: Path, wheels_from: Path | None, build_wheel: bool) -> list[str]:
    dest.mkdir(parents=True, exist_ok=True)
    if wheels_from is not None:
        found = sorted(wheels_from.glob("*.whl"))
        if not found:
            raise DataError(f"{wheels_from}: no .whl files", hint="fill it with `pip download` on a machine online")
        for wheel in found:
            shutil.copy2(wheel, dest / wheel.name)
    if build_wheel:
        _build_medkit_wheel(dest)
    return sorted(p.name for p in dest.glob("*.whl"))


def _build_medkit_wheel(dest: Path) -> None:
    """``pip wheel --no-deps --no-build-isolation``: medkit's own wheel, built offline from a copy of its source
    tree (the build leaves nothing in the user's checkout)."""
    import tempfile

    import medkit
    from medkit.console import info

    source = Path(medkit.__file__).resolve().parents[1]
    if not (source / "pyproject.toml").is_file():
        raise UsageError(
            "--build-wheel needs medkit's source tree (an editable install); this medkit is installed from a wheel",
            hint="pass the folder holding the medkit wheel with --wheels",
        )
    info(f"building the medkit wheel from {source}")
    with tempfile.TemporaryDirectory(prefix="medkit-wheel-") as tmp:
        tree = Path(tmp) / "src"
        shutil.copytree(source / "medkit", tree / "medkit", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        for name in ("pyproject.toml", "README.md", "LICENSE", "setup.cfg"):
            if (source / name).is_file():
                shutil.copy2(source / name, tree / name)
        cmd = [sys.executable, "-m", "pip", "wheel", str(tree), "--no-deps", "--no-build-isolation", "-w", str(dest)]
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise UsageError(f"building the medkit wheel failed: {' / '.join(tail)}", hint=" ".join(cmd))


def kernel_script(
    competition: Competition,
    dataset_slug: str,
    runs: list[str],
    predict_args: list[str],
    tile_args: Sequence[str] | None = None,
) -> str:
    """The notebook's Python source (a script kernel): install medkit offline, (tile,) predict, write submission.csv.

    Args:
        competition: The competition.
        dataset_slug: The weights dataset (mounted under /kaggle/input).
        runs: Run folder names under the dataset's ``runs/``.
        predict_args: Extra `medkit predict` options.
        tile_args: `medkit tile` options for the test slides (whole-slide tasks: those of the training tiles).

    Raises:
        UsageError: A whole-slide competition without ``tile_args``.
    """
    tile = list(tile_args) if tile_args else None
    if competition.task == "wsi" and tile is None:
        raise UsageError(f"{competition.name}: the notebook must tile the test slides: no `medkit tile` options given")
    return _SCRIPT.format(
        title=competition.title.replace('"', "'"),
        slug=competition.slug,
        name=repr(competition.name),
        data=repr(competition.slug),
        bundle=repr(dataset_slug),
        test_dir=repr(competition.test_dir),
        test_table=f"DATA / {competition.test_table!r}" if competition.test_table else "None",
        sample=repr(competition.sample_file),
        runs=repr(list(runs)),
        tile=repr(tile),
        predict=repr(list(predict_args)),
    )


def _run_names(runs: list[Path]) -> list[str]:
    names: list[str] = []
    for run in runs:
        name = _slug(run.resolve().name, 80) or "run"
        while name in names:
            name = f"{name}-{len(names) + 1}"
        names.append(name)
    return names


def _copy_runs(runs: list[Path], files: list[list[Path]], names: list[str], dest: Path) -> None:
    for run, rels, name in zip(runs, files, names, strict=True):
        for rel in rels:
            target = dest / name / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(run / rel, target)


def _swap_in(staged: Path, root: Path, parts: Sequence[str]) -> None:
    """Replace ``root/<part>`` by ``staged/<part>`` for each part (renames in one file system)."""
    for part in parts:
        if (root / part).exists():
            shutil.rmtree(root / part)
        (staged / part).rename(root / part)


def build_kernel_bundle(
    competition: Competition,
    runs: list[Path],
    out: str | os.PathLike[str],
    owner: str,
    *,
    wheels_from: Path | None = None,
    build_wheel: bool = False,
    predict_args: list[str] | None = None,
    tile_args: Sequence[str] | None = None,
    gpu: bool = True,
) -> KernelBundle:
    """Write the kernel bundle of a competition (see the module docstring for the layout).

    Args:
        competition: The competition (its slug, test folder and sample file are where the notebook looks).
        runs: Run folders whose best checkpoints predict the test set (their predictions are averaged by
            `medkit predict`): runs, or roots of ``--fold all`` runs (every fold is bundled).
        out: The bundle folder (created; an existing bundle there is replaced, and left as it was on failure).
        owner: The Kaggle user that will own the notebook and the dataset.
        wheels_from: A folder of wheels to bundle (medkit's and any dependency's).
        build_wheel: Build medkit's wheel from its source tree (offline).
        predict_args: Extra `medkit predict` options for the notebook (TTA, batch size, ...).
        tile_args: `medkit tile` options for the test slides of a whole-slide competition; None: those of the tile
            output the runs were trained on (found through their run.json).
        gpu: Ask for a GPU for the notebook.

    Raises:
        UsageError: No runs, or an owner that is not a Kaggle user name.
        DataError: A run without run.json or best.pt, a run that needs masks, runs whose tiling cannot be found
            (or differs), or an empty wheel folder.
    """
    plan = check_kernel_runs(competition, runs, tile_args)
    if not _OWNER.match(owner):
        raise UsageError(f"'{owner}' is not a Kaggle user name", hint="pass --owner with your Kaggle user name")
    root = Path(out)
    created = not root.exists()
    root.mkdir(parents=True, exist_ok=True)
    try:
        with tempfile.TemporaryDirectory(prefix=".medkit-kernel-", dir=root) as tmp:
            staged = _write_bundle(
                competition, plan, Path(tmp), owner, wheels_from, build_wheel, predict_args or [], gpu
            )
            _swap_in(Path(tmp), root, ("kernel", "dataset"))
    except BaseException:
        if created:
            shutil.rmtree(root, ignore_errors=True)
        raise
    return KernelBundle(
        root=root,
        kernel_dir=root / "kernel",
        dataset_dir=root / "dataset",
        kernel_id=staged.kernel_id,
        dataset_id=staged.dataset_id,
        runs=staged.runs,
        wheels=staged.wheels,
        missing=staged.missing,
    )


@dataclass(frozen=True)
class KernelRuns:
    """The checked runs of a bundle.

    Attributes:
        runs: The run folders as given.
        names: Their folder names in the bundle.
        files: The files of each run to bundle, relative to it.
        tile_args: `medkit tile` options for the test slides (None: the images are read as they are).
    """

    runs: list[Path]
    names: list[str]
    files: list[list[Path]]
    tile_args: tuple[str, ...] | None


def check_kernel_runs(
    competition: Competition, runs: Sequence[Path], tile_args: Sequence[str] | None = None
) -> KernelRuns:
    """Check that the runs can make the notebook, before anything is written.

    Args:
        competition: The competition.
        runs: Run folders, or roots of ``--fold all`` runs.
        tile_args: `medkit tile` options for the test slides (whole-slide tasks); None: read them from the tile
            output the runs were trained on.

    Raises:
        UsageError: No runs.
        DataError: A folder that is not a run or has no best.pt, a run that stacks masks as an input channel, or
            (whole-slide) a tiling that cannot be found or differs between the runs.
    """
    if not runs:
        raise UsageError("--kernel needs the runs to bundle", hint="add --run RUN (repeatable)")
    runs = [Path(r) for r in runs]
    files = [run_files(run) for run in runs]
    trained = [sub for run in runs for sub in sub_runs(run)]
    _refuse_mask_runs(trained)
    tiles: tuple[str, ...] | None = None
    if competition.task == "wsi":
        tiles = tuple(tile_args) if tile_args else tile_options(trained)
    return KernelRuns(runs, _run_names(runs), files, tiles)


def _write_bundle(
    competition: Competition,
    plan: KernelRuns,
    root: Path,
    owner: str,
    wheels_from: Path | None,
    build_wheel: bool,
    predict_args: list[str],
    gpu: bool,
) -> KernelBundle:
    from medkit import __version__
    from medkit._io import write_json, write_text

    kernel_dir, dataset_dir = root / "kernel", root / "dataset"
    kernel_slug = _slug(f"medkit-{competition.name}-inference")
    dataset_slug = _slug(f"medkit-{competition.name}-weights")
    names = plan.names
    _copy_runs(plan.runs, plan.files, names, dataset_dir / "runs")
    wheels = _collect_wheels(dataset_dir / "wheels", wheels_from, build_wheel)
    bundled = {w.split("-", 1)[0].lower() for w in wheels}
    missing = [r for r in expected_dependencies() if _wheel_name(r) not in bundled]
    if "medkit" not in bundled:
        missing.insert(0, "medkit")
    code_file = f"{kernel_slug}.py"
    write_text(kernel_dir / code_file, kernel_script(competition, dataset_slug, names, predict_args, plan.tile_args))
    write_json(
        kernel_dir / "kernel-metadata.json",
        {
            "id": f"{owner}/{kernel_slug}",
            "title": kernel_slug.replace("-", " "),
            "code_file": code_file,
            "language": "python",
            "kernel_type": "script",
            "is_private": True,
            "enable_gpu": gpu,
            "enable_tpu": False,
            "enable_internet": False,
            "dataset_sources": [f"{owner}/{dataset_slug}"],
            "competition_sources": [competition.slug],
            "kernel_sources": [],
            "model_sources": [],
        },
    )
    write_json(
        dataset_dir / "dataset-metadata.json",
        {
            "title": dataset_slug.replace("-", " ")[:50],
            "id": f"{owner}/{dataset_slug}",
            "licenses": [{"name": "CC0-1.0"}],
        },
    )
    manifest = {
        "medkit": __version__,
        "competition": competition.name,
        "slug": competition.slug,
        "runs": names,
        "tile_args": list(plan.tile_args) if plan.tile_args else None,
        "wheels": wheels,
        "missing_wheels": missing,
        "note": "missing wheels must be preinstalled on the Kaggle image, else add them to --wheels",
    }
    write_json(dataset_dir / "bundle.json", manifest)
    return KernelBundle(
        root=root,
        kernel_dir=kernel_dir,
        dataset_dir=dataset_dir,
        kernel_id=f"{owner}/{kernel_slug}",
        dataset_id=f"{owner}/{dataset_slug}",
        runs=tuple(names),
        wheels=tuple(wheels),
        missing=tuple(missing),
    )


_SCRIPT = '''"""medkit inference for {title} ({slug}), generated by `medkit submit --kernel`.

Runs offline (internet off): installs medkit from the wheels of the weights dataset, predicts the competition's
test images with the bundled runs (`medkit predict`), and writes /kaggle/working/submission.csv through the medkit
preset (`medkit submit --dry-run`), which also validates it. Edit the constants if the layout differs.
"""

import subprocess
import sys
from pathlib import Path

COMPETITION = {name}
DATA = Path("/kaggle/input") / {data}
BUNDLE = Path("/kaggle/input") / {bundle}
TEST_DIR = DATA / {test_dir}
TEST_TABLE = {test_table}
SAMPLE = DATA / {sample}
RUNS = [BUNDLE / "runs" / name for name in {runs}]
TILE = {tile}  # `medkit tile` options for whole-slide images (None: the test images are read as they are)
PREDICT_ARGS = {predict}  # extra `medkit predict` options
WORK = Path("/kaggle/working")


def run(*args):
    """Run a command, echoing it; stop the notebook when it fails."""
    args = [str(a) for a in args]
    print("+", " ".join(args), flush=True)
    subprocess.run(args, check=True)


def medkit(*args):
    """Run the medkit command line of the bundled wheel."""
    run(sys.executable, "-m", "medkit", *args)


def main():
    run(sys.executable, "-m", "pip", "install", "--no-index", "--find-links", BUNDLE / "wheels", "medkit")
    data = TEST_DIR
    labels = TEST_TABLE if TEST_TABLE is not None and TEST_TABLE.exists() else None
    if TILE is not None:
        medkit("tile", TEST_DIR, "--out", WORK / "tiles", *TILE)
        data, labels = WORK / "tiles", WORK / "tiles" / "tiles.csv"
    preds = WORK / "preds.csv"
    medkit("predict", *RUNS, "--data", data, *(["--labels", labels] if labels else []), "--out", preds, *PREDICT_ARGS)
    sample = ["--sample", SAMPLE] if SAMPLE.exists() else []
    medkit("submit", preds, "--competition", COMPETITION, *sample, "--dry-run", "--out", WORK / "submission.csv")


if __name__ == "__main__":
    main()
'''
