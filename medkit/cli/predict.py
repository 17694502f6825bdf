"""`medkit predict RUN_DIR...`: predict images with trained runs; one row per image, one probability per label."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from medkit.cli._options import (
    AmpDtypeOpt,
    AmpOpt,
    DataOpt,
    DeviceOpt,
    FeedOpt,
    ImageColOpt,
    JsonOpt,
    LabelsOpt,
    OutOpt,
    device_spec,
    precision,
)
from medkit.console import out, print_json

if TYPE_CHECKING:
    from medkit.engine.inference import PredictResult

__all__ = ["predict"]

RunsArg = Annotated[
    list[Path],
    typer.Argument(
        help="Run folders of `medkit train` (a run, the root of a --fold all run, or several).", show_default=False
    ),
]
SplitOpt = Annotated[
    str | None,
    typer.Option(
        "--split", help="MedMNIST split to predict: test (default), val, train; or the rows of a table's split column."
    ),
]
TtaOpt = Annotated[
    str | None,
    typer.Option("--tta", help="Test-time views, comma-separated: hflip, vflip, shift (the identity is always in)."),
]
NeighboursOpt = Annotated[
    str | None,
    typer.Option(
        "--neighbours",
        help="Odd-length weights combining each CT slice's logits with its neighbours' (e.g. 0.25,0.5,0.25); "
        "'none' switches off the runs' own.",
    ),
]
CamOpt = Annotated[int, typer.Option("--cam", help="Write Grad-CAM overlays for N images (+ a contact sheet).", min=0)]
BatchSizeOpt = Annotated[
    int | None, typer.Option("--batch-size", "-b", help="Images per batch (default: the run's).", min=1)
]
PredictWorkersOpt = Annotated[
    int | None,
    typer.Option(
        "--workers",
        "-j",
        help="DataLoader processes reading batches (default: cores - 1 on a GPU; 0 on a CPU).",
        min=0,
    ),
]
CacheOpt = Annotated[
    Path | None,
    typer.Option("--cache", help="Preprocess the files once into a uint8 cache in this folder.", file_okay=False),
]


def predict(
    ctx: typer.Context,
    runs: RunsArg,
    data: DataOpt,
    labels: LabelsOpt = None,
    image_col: ImageColOpt = None,
    split: SplitOpt = None,
    tta: TtaOpt = None,
    neighbours: NeighboursOpt = None,
    cam: CamOpt = 0,
    out_path: OutOpt = None,
    batch_size: BatchSizeOpt = None,
    workers: PredictWorkersOpt = None,
    amp: AmpOpt = None,
    amp_dtype: AmpDtypeOpt = "auto",
    feed: FeedOpt = "auto",
    cache: CacheOpt = None,
    device: DeviceOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Predict images with trained runs (folds averaged, TTA, neighbour aggregation, Grad-CAM) into a table.

    Writes one row per image: `image`, `patient_id`/`series`/`order` when the table has them, one `<label>_prob`
    column per output and, for ordinal and multiclass runs, `grade`; plus the JSON sidecar `medkit submit` reads.
    Default --out: RUN/predictions/<split, table or folder name>.csv of the first run.
    """
    from medkit._io import check_writable_file, refuse_overwrite_inputs
    from medkit.data.predictions import sidecar_path
    from medkit.engine.inference import PredictOptions, predict_runs

    if out_path is not None:
        check_writable_file(out_path)  # before the images are read, not after
        refuse_overwrite_inputs([out_path, sidecar_path(out_path)], [labels])
    options = PredictOptions(
        data=data,
        labels=labels,
        image_col=image_col,
        split=split,
        tta=tta,
        neighbours=neighbours,
        cam=cam,
        out=out_path,
        batch_size=batch_size,
        workers=workers,
        device=device_spec(ctx, device),
        amp=precision(amp, amp_dtype),
        feed=feed,
        cache_dir=cache,
    )
    result = predict_runs(runs, options)
    if json_out:
        print_json(_record(result))
    else:
        _print(result)


def _record(result: PredictResult) -> dict[str, object]:
    meta = result.meta
    return {
        "out": str(result.out),
        "rows": len(result.frame),
        "columns": [str(c) for c in result.frame.columns],
        "runs": [str(r) for r in result.runs],
        "views": result.views,
        "seconds": result.seconds,
        "img_per_s": result.img_per_s,
        "metric": meta.metric,
        "score": result.score if result.score is not None and math.isfinite(result.score) else None,
        "cut_points": list(meta.cut_points),
        "cam": [str(p) for p in result.cam],
    }


def _print(result: PredictResult) -> None:
    meta = result.meta
    out.print(
        f"wrote {result.out} ({len(result.frame)} images, {len(meta.label_names)} probability column(s); "
        f"{len(result.runs)} run(s) x {len(result.views)} view(s), {result.img_per_s:.0f} img/s)"
    )
    if meta.cut_points:
        out.print(f"grade cut points: {', '.join(f'{c:.3f}' for c in meta.cut_points)}")
    if result.score is not None:
        out.print(f"{meta.metric}: {result.score:.4f} (on the labels of these images)")
    if result.cam:
        out.print(f"Grad-CAM: {len(result.cam) - 1} overlay(s) and {result.cam[-1]}")
