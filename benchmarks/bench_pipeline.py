"""Does medkit keep the GPU fed? Every feeder of `medkit train` against the synthetic ceiling, side by side in one run.

Every measurement runs the code `medkit train` runs. `medkit.engine.runtime.resolve_runtime` decides the device,
the precision (``--amp`` as in ``medkit train``: mixed precision by default on a GPU), channels-last, cuDNN
autotuning, pinning and the DataLoader workers; the model comes from `medkit.engine.components.build_model`, the
optimizer and the loss from the registries (``adamw``, ``bce``); training is `medkit.engine.loop.train_one_epoch`
(the step, the augmentation on the device, the loss read back every few steps) and inference
`medkit.engine.predict.predict`. For each image size and model, in one process:

1. the synthetic ceiling: the training loop on one random uint8 `Batch` already on the device (no feeder);
   ``--compile`` wraps the training model in ``torch.compile`` as ``medkit train --compile`` does;
2. the real path with each feeder (``--feeds``; `medkit.engine.feeders`): PNG and DICOM files generated here
   (``--n`` each) are cached with `UInt8Cache.build` (timed), and a `Split` over the cache is fed by
   ``make_feeder(..., feed=F)`` for F in ``device`` (the cache in GPU memory), ``pinned`` (in page-locked RAM,
   ring of buffers), ``stream`` (rows read from the memmap per batch) and ``workers`` (the DataLoader); the feeder
   ``--feed auto`` picks for this machine is printed and marked;
3. the inference ceiling vs `predict` fed by the feeder ``auto`` picks.

The caches of all formats hold uint8 images of the same shape, so the feeders are timed on the first format's cache
and the other formats add their cache build (and, with ``--naive``, decoding on the fly). The data path alone (each
feeder without a model) and `BatchAugment` against torchvision ``transforms.v2`` per sample are timed too. It
prints img/s and the ratio real / synthetic (goal: >= 0.90 for training, >= 0.95 for inference) and writes the
tables as Markdown and JSON to ``--out``.

On a GPU (defaults: 4,096 files per format; sized to stay within 6 minutes on an H100, not yet timed there)::

    python benchmarks/bench_pipeline.py --out bench-out
    python benchmarks/bench_pipeline.py --compile --naive --out bench-out-compile

CPU smoke run (proves the script works; the figures say nothing about a GPU)::

    python benchmarks/bench_pipeline.py --device cpu --models resnet18 --sizes 64 --n 96 --batch 16 \\
        --steps 4 --warmup 1 --native 96 --naive --out /tmp/medkit-bench
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

MODELS = ("resnet18", "resnet34", "efficientnet_b0", "efficientnet_b2")
FEEDS = ("device", "pinned", "stream", "workers")
CT_WINDOWS = ("brain", "subdural", "soft_tissue")
OUTPUTS = 6  # multilabel outputs of the benchmark model (random soft targets)
# The training augmentation (`medkit.data.augment.AugmentConfig`): margin crop, flip, affine, brightness, contrast.
TRAIN_AUGMENT = {
    "hflip": 0.5,
    "affine_p": 0.7,
    "rotate": 15,
    "scale": (0.9, 1.1),
    "translate": 0.05,
    "brightness": 0.1,
    "contrast": 0.1,
}


# ------------------------------------------------------------------------------------------------- data
def _png_one(args: tuple[str, int, int]) -> None:
    import cv2

    path, size, seed = args
    rng = np.random.default_rng(seed)
    # Smooth anatomy-like blobs plus noise: compresses like a real radiograph, not like white noise.
    base = cv2.GaussianBlur(rng.random((size, size), dtype=np.float32), (0, 0), size / 24)
    img = np.clip((base - base.min()) / (np.ptp(base) + 1e-6) * 220 + rng.normal(0, 6, (size, size)), 0, 255)
    cv2.imwrite(path, img.astype(np.uint8))


def _dicom_one(args: tuple[str, int, int]) -> None:
    import cv2
    from _dicom import write_ct

    path, size, seed = args
    rng = np.random.default_rng(seed)
    base = cv2.GaussianBlur(rng.random((size, size), dtype=np.float32), (0, 0), size / 24)
    hu = (base - base.mean()) / (base.std() + 1e-6) * 300 + 40 + rng.normal(0, 20, (size, size))
    write_ct(path, np.clip(hu + 1024, 0, 4095).astype(np.uint16))


def make_files(folder: Path, fmt: str, n: int, size: int, workers: int) -> list[Path]:
    """Generate ``n`` synthetic PNG (8-bit gray) or DICOM (CT, int16 + rescale) files of ``size`` pixels."""
    folder.mkdir(parents=True, exist_ok=True)
    suffix = ".png" if fmt == "png" else ".dcm"
    paths = [folder / f"{fmt}_{i:06d}{suffix}" for i in range(n)]
    fn = _png_one if fmt == "png" else _dicom_one
    jobs = [(str(p), size, i) for i, p in enumerate(paths)]
    if workers <= 1:
        for j in jobs:
            fn(j)
    else:
        with ProcessPoolExecutor(workers) as pool:
            list(pool.map(fn, jobs, chunksize=64))
    return paths


def _split(source: Any, targets: np.ndarray) -> Any:
    """A `Split` over every row of ``source``."""
    from medkit.data.dataset import Split

    rows = np.arange(len(source))
    return Split(source, rows, targets, [str(i) for i in rows])


def _epochs(feeder: Any) -> Iterator[Any]:
    """A feeder's batches epoch after epoch (each epoch its own permutation, as in training)."""
    for epoch in itertools.count():
        feeder.set_epoch(epoch)
        yield from feeder


# ----------------------------------------------------------------------------------------- measuring
class Runner:
    """One model at one size, built and trained as `medkit train` builds and trains it.

    The synthetic and the real measurements share the model, the `StepContext` and the transforms, so they differ
    only in where the batches come from.
    """

    def __init__(self, name: str, size: int, args: argparse.Namespace, rt: Any) -> None:
        import functools

        from medkit.engine.components import InputTransforms, ModelSpec, build_model
        from medkit.engine.loop import StepContext
        from medkit.registries import LOSSES, OPTIMIZERS
        from medkit.target import MULTILABEL

        self.rt = rt
        self.size = size
        self.batch = args.batch or (128 if size <= 256 else 32)
        self.model = rt.place_model(build_model(ModelSpec(name, {"num_classes": OUTPUTS, "in_chans": 3})))
        self.train_model = rt.wrap_for_training(self.model, args.compile)
        self.transforms = InputTransforms([0.5] * 3, [0.5] * 3, size, augment=TRAIN_AUGMENT)
        self.ctx = StepContext(
            LOSSES.create("bce", num_classes=OUTPUTS).to(rt.device),
            OPTIMIZERS.create("adamw", self.model, lr=1e-4, weight_decay=0.01),
            rt,
            self.transforms,
            functools.partial(MULTILABEL.loss_target, num_classes=0),
            scaler=rt.grad_scaler(),
        )

    def synthetic_batch(self, margin: int) -> Any:
        """One random uint8 batch already on the device, channels-last as the feeders hand them out."""
        import torch

        from medkit.engine.feed import Batch

        s = self.size + 2 * margin
        dev = self.rt.device
        image = torch.randint(0, 256, (self.batch, s, s, 3), dtype=torch.uint8, device=dev).permute(0, 3, 1, 2)
        return Batch(image, torch.rand(self.batch, OUTPUTS, device=dev), torch.arange(self.batch, device=dev))

    def train(self, batches: Iterator[Any], steps: int, warmup: int) -> float:
        """img/s of `train_one_epoch` (what `medkit train` runs per epoch) over ``steps`` batches."""
        from medkit.engine.loop import EpochState, train_one_epoch

        train_one_epoch(self.train_model, itertools.islice(batches, warmup), self.ctx, EpochState())
        self.rt.synchronize()
        t0 = time.perf_counter()
        state = train_one_epoch(self.train_model, itertools.islice(batches, steps), self.ctx, EpochState())
        self.rt.synchronize()
        return state.seen / (time.perf_counter() - t0)

    def infer(self, batches: Iterator[Any], steps: int, warmup: int) -> float:
        """img/s of `predict` (validation, the test split and ``medkit predict``) over ``steps`` batches."""
        # The evaluated model is the plain one (not the compiled training wrapper), as in medkit train's
        # validation and medkit predict; predict() copies the probabilities to the host, which waits for the device.
        from medkit.engine.predict import predict
        from medkit.target import MULTILABEL

        predict(self.model, itertools.islice(batches, warmup), self.rt, MULTILABEL, self.transforms.eval)
        self.rt.synchronize()
        t0 = time.perf_counter()
        preds = predict(self.model, itertools.islice(batches, steps), self.rt, MULTILABEL, self.transforms.eval)
        return len(preds) / (time.perf_counter() - t0)


def bench_augment(rt: Any, batch: int, size: int, margin: int, reps: int) -> tuple[float, float]:
    """img/s of BatchAugment on the runtime's device vs torchvision.transforms.v2 per sample on the CPU (baseline)."""
    import torch
    from torchvision.transforms import v2

    from medkit.data.augment import AugmentConfig, BatchAugment

    s = size + 2 * margin
    x = torch.randint(0, 256, (batch, 3, s, s), dtype=torch.uint8)
    cfg = AugmentConfig(**{**TRAIN_AUGMENT, "affine_p": 1.0})
    aug = BatchAugment(cfg, size=size)
    tv = v2.Compose([
        v2.RandomCrop(size),
        v2.RandomHorizontalFlip(),
        v2.RandomAffine(degrees=15, translate=(0.05, 0.05), scale=(0.9, 1.1)),
        v2.ColorJitter(brightness=0.1, contrast=0.1),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize([0.5] * 3, [0.5] * 3),
    ])  # fmt: skip
    xd = x.to(rt.device)
    g = torch.Generator().manual_seed(0)
    aug(xd, g)
    rt.synchronize()
    t0 = time.perf_counter()
    for _ in range(reps):
        aug(xd, g)
    rt.synchronize()
    batched = reps * batch / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    for _ in range(reps):
        torch.stack([tv(img) for img in x])
    per_sample = reps * batch / (time.perf_counter() - t0)
    return batched, per_sample


def feed_rate(feeder: Any, rt: Any, steps: int, warmup: int = 2) -> float:
    """img/s of a feeder alone (no model; batches on the device): the most the data path can deliver."""
    batches = _epochs(feeder)
    for _ in range(warmup):
        next(batches)
    rt.synchronize()
    t0 = time.perf_counter()
    n = sum(len(next(batches)) for _ in range(steps))
    rt.synchronize()
    return n / (time.perf_counter() - t0)


# ----------------------------------------------------------------------------------------------- results
@dataclass
class Results:
    """Everything measured, as the JSON written to ``--out`` (img/s unless said otherwise)."""

    setup: dict[str, Any] = field(default_factory=dict)
    auto: dict[str, dict[str, str]] = field(default_factory=dict)  # px -> {"feed", "reason"}
    train: list[dict[str, Any]] = field(default_factory=list)  # model, px, batch, synthetic, <feed>..., naive
    infer: list[dict[str, Any]] = field(default_factory=list)  # model, px, batch, synthetic, feed, real
    builds: list[dict[str, Any]] = field(default_factory=list)  # format, px, img_per_s, gib, workers
    data_path: list[dict[str, Any]] = field(default_factory=list)  # px, feed, img_per_s
    augment: list[dict[str, Any]] = field(default_factory=list)  # px, batch, batched, per_sample

    def markdown(self, naive: list[str]) -> str:
        """The tables, as Markdown."""
        s = self.setup
        feeds = [f for f in FEEDS if any(f in r for r in self.train)]
        lines = [
            f"## medkit feeding benchmark: {s['device']} ({s['gpu']}), {s['precision']}, {s['cores']} cores, "
            f"torch {s['torch']}",
            "",
            "img/s; ratio = real / synthetic (goal: >= 0.90 training, >= 0.95 inference); `*` = the feeder "
            "`--feed auto` picks here ("
            + "; ".join(f"{px} px: {a['feed']}, {a['reason']}" for px, a in self.auto.items())
            + ")",
            "",
        ]
        head = ["model", "px", "batch", "synthetic", *feeds, *[f"{f} no cache" for f in naive]]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in self.train:
            auto = self.auto[str(r["px"])]["feed"]
            cells = [r["model"], str(r["px"]), str(r["batch"]), f"{r['synthetic']:.0f}"]
            for f in feeds:
                mark = "*" if f == auto else ""
                cells.append(f"{r[f]:.0f} ({r[f] / r['synthetic']:.2f}){mark}" if f in r else "")
            cells += [f"{r['naive_' + f]:.0f} ({r['naive_' + f] / r['synthetic']:.2f})" for f in naive]
            lines.append("| " + " | ".join(cells) + " |")
        lines += ["", "| inference | px | batch | synthetic | feed | real | ratio |", "|---|---|---|---|---|---|---|"]
        for r in self.infer:
            lines.append(
                f"| {r['model']} | {r['px']} | {r['batch']} | {r['synthetic']:.0f} | {r['feed']} | {r['real']:.0f} "
                f"| {r['real'] / r['synthetic']:.2f} |"
            )
        lines += ["", "| cache build | px | img/s | GiB | workers |", "|---|---|---|---|---|"]
        lines += [
            f"| {b['format']} | {b['px']} | {b['img_per_s']:.0f} | {b['gib']:.2f} | {b['workers']} |"
            for b in self.builds
        ]
        lines += ["", "| data path alone (no model) | px | img/s |", "|---|---|---|"]
        lines += [f"| {d['feed']} | {d['px']} | {d['img_per_s']:.0f} |" for d in self.data_path]
        lines += [
            "",
            "| augmentation | px | batch | BatchAugment img/s | torchvision v2 per sample (CPU) img/s | ratio |",
            "|---|---|---|---|---|---|",
        ]
        lines += [
            f"| train | {a['px']} | {a['batch']} | {a['batched']:.0f} | {a['per_sample']:.0f} "
            f"| {a['batched'] / a['per_sample']:.1f}x |"
            for a in self.augment
        ]
        ratios = [r[self.auto[str(r["px"])]["feed"]] / r["synthetic"] for r in self.train]
        if ratios:
            lines += [
                "",
                f"worst train ratio with the auto feeder {min(ratios):.2f} (goal >= 0.90); geometric mean "
                f"{math.exp(np.mean(np.log(ratios))):.2f}",
            ]
        return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------- main
def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--sizes", default="256,512")
    parser.add_argument("--formats", default="png,dicom")
    parser.add_argument("--feeds", default=",".join(FEEDS), help="feeders timed (medkit train --feed)")
    parser.add_argument("--n", type=int, default=4096, help="files generated per format")
    parser.add_argument("--native", type=int, default=512, help="pixel size of the generated files")
    parser.add_argument("--batch", type=int, default=0, help="batch size (0 = 128 up to 256 px, else 32)")
    parser.add_argument("--steps", type=int, default=60, help="timed steps per measurement")
    parser.add_argument("--warmup", type=int, default=8)
    parser.add_argument("--workers", type=int, default=None, help="DataLoader workers of --feed workers")
    parser.add_argument("--cache-workers", type=int, default=None, help="processes building the cache (default: all)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--amp", default="auto", help="precision as medkit train: auto | on | bf16 | fp16 | off")
    parser.add_argument("--compile", action="store_true", help="torch.compile the training model (medkit --compile)")
    parser.add_argument("--naive", action="store_true", help="also time decoding files on the fly (no cache)")
    parser.add_argument("--workdir", default=None, help="where files and caches go (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the generated files and caches")
    parser.add_argument("--out", default=None, help="folder for results.md and results.json")
    return parser.parse_args(argv)


def _preprocess(fmt: str, size: int, margin: int) -> Any:
    from medkit.data.pipeline import Preprocess

    return Preprocess(size=size, margin=margin, channels=3, windows=CT_WINDOWS if fmt == "dicom" else None)


def _cache(files: list[Path], pre: Any, fmt: str, work: Path, args: argparse.Namespace, res: Results) -> Any:
    """Build (and time) the cache of one format at one size."""
    from medkit.data.cache import UInt8Cache
    from medkit.parallel import pool_size

    t0 = time.perf_counter()
    cache = UInt8Cache.build(files, pre, work / "cache", workers=args.cache_workers, progress=False)
    rate = len(files) / (time.perf_counter() - t0)
    gib = cache.array.nbytes / 2**30
    px = pre.size[0]
    res.builds.append(
        {"format": fmt, "px": px, "img_per_s": rate, "gib": gib, "workers": pool_size(args.cache_workers)}
    )
    print(f"cache {fmt} {px}px: {rate:.0f} img/s, {gib:.2f} GiB", flush=True)
    return cache


def _one_size(
    size: int, files: dict[str, list[Path]], work: Path, args: argparse.Namespace, rt: Any, res: Results
) -> None:
    """Every measurement at one image size."""
    from medkit.data.pipeline import FileSource
    from medkit.engine.feed import make_feeder
    from medkit.engine.feeders import plan_feed

    margin = max(0, size // 16)
    batch = args.batch or (128 if size <= 256 else 32)
    batched, per_sample = bench_augment(rt, batch, size, margin, max(2, args.steps // 10))
    res.augment.append({"px": size, "batch": batch, "batched": batched, "per_sample": per_sample})
    formats = list(files)
    pres = {fmt: _preprocess(fmt, size, margin) for fmt in formats}
    caches = {fmt: _cache(files[fmt], pres[fmt], fmt, work, args, res) for fmt in formats}
    targets = np.random.default_rng(0).random((args.n, OUTPUTS)).astype(np.float32)
    cached = _split(caches[formats[0]], targets)
    auto = plan_feed([cached], rt, "auto")  # before any feeder holds the rows
    res.auto[str(size)] = {"feed": auto.name, "reason": auto.reason}
    print(f"{size}px: {auto}", flush=True)
    feeds = [f for f in args.feeds.split(",") if f]
    feeds += [] if auto.name in feeds else [auto.name]  # the feeder medkit train would use is always timed
    decoded = {fmt: _split(FileSource(files[fmt], pres[fmt]), targets) for fmt in formats} if args.naive else {}
    for feed in feeds:
        rate = feed_rate(make_feeder(cached, batch, rt, train=True, feed=feed), rt, args.steps)
        res.data_path.append({"px": size, "feed": feed, "img_per_s": rate})
        print(f"data path alone {size}px, {feed}: {rate:.0f} img/s", flush=True)
    for fmt, split in decoded.items():
        rate = feed_rate(make_feeder(split, batch, rt, train=True, feed="workers"), rt, max(2, args.steps // 4), 1)
        res.data_path.append({"px": size, "feed": f"workers, decoding {fmt} files", "img_per_s": rate})
    for name in [m for m in args.models.split(",") if m]:
        _one_model(name, size, margin, cached, decoded, auto.name, feeds, args, rt, res)
    for cache in caches.values():
        rt.held.pop(cache, None)
        shutil.rmtree(cache.directory, ignore_errors=True)  # 4k x 512 px caches are ~3.6 GB each


def _one_model(
    name: str,
    size: int,
    margin: int,
    cached: Any,
    decoded: dict[str, Any],
    auto: str,
    feeds: list[str],
    args: argparse.Namespace,
    rt: Any,
    res: Results,
) -> None:
    """One model at one size: the synthetic ceiling, each feeder, decoding on the fly, inference."""
    import torch

    from medkit.engine.feed import make_feeder

    r = Runner(name, size, args, rt)
    synth = r.synthetic_batch(margin)
    row: dict[str, Any] = {"model": name, "px": size, "batch": r.batch}
    row["synthetic"] = r.train(itertools.repeat(synth), args.steps, args.warmup)
    for feed in feeds:
        feeder = make_feeder(cached, r.batch, rt, train=True, feed=feed)
        row[feed] = r.train(_epochs(feeder), args.steps, args.warmup)
    for fmt, split in decoded.items():
        naive = make_feeder(split, r.batch, rt, train=True, feed="workers")
        row["naive_" + fmt] = r.train(_epochs(naive), max(2, args.steps // 4), 1)
    res.train.append(row)
    infer: dict[str, Any] = {"model": name, "px": size, "batch": r.batch, "feed": auto}
    infer["synthetic"] = r.infer(itertools.repeat(synth), args.steps, args.warmup)
    feeder = make_feeder(cached, r.batch, rt, train=False, feed=auto)
    infer["real"] = r.infer(_epochs(feeder), args.steps, args.warmup)
    res.infer.append(infer)
    rates = ", ".join(f"{f} {row[f]:.0f}" for f in feeds)
    print(f"{name} {size}px train img/s: synthetic {row['synthetic']:.0f}, {rates}", flush=True)
    del r, synth, feeder
    if rt.cuda:
        torch.cuda.empty_cache()


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, print the tables and write them to ``--out``."""
    import torch

    from medkit._io import write_json, write_text
    from medkit.engine.runtime import resolve_runtime
    from medkit.parallel import usable_cores

    args = _parse(argv)
    # The runtime medkit train would use: device, precision, channels-last, cuDNN autotuning, pinning, workers.
    rt = resolve_runtime(args.device, args.amp, args.workers)
    res = Results()
    res.setup = {
        "device": str(rt.device),
        "gpu": torch.cuda.get_device_name(rt.device) if rt.cuda else "none",
        "precision": str(rt.amp_dtype).replace("torch.", "") if rt.amp_dtype is not None else "fp32",
        "cores": usable_cores(),
        "loader_workers": rt.workers,
        "torch": torch.__version__,
        "args": vars(args),
    }
    print(json.dumps({k: v for k, v in res.setup.items() if k != "args"}), flush=True)
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="medkit-bench-"))
    formats = [f for f in args.formats.split(",") if f]
    try:
        files = {}
        for fmt in formats:
            t0 = time.perf_counter()
            files[fmt] = make_files(work / "files" / fmt, fmt, args.n, args.native, max(1, usable_cores() - 1))
            print(f"generated {args.n} {fmt} files in {time.perf_counter() - t0:.1f} s", flush=True)
        for size in [int(s) for s in args.sizes.split(",") if s]:
            _one_size(size, files, work, args, rt, res)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    table = res.markdown(formats if args.naive else [])
    print()
    print(table)
    if args.out:
        out = Path(args.out)
        print(write_text(out / "results.md", table))
        print(write_json(out / "results.json", asdict(res)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
