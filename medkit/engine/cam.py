"""Grad-CAM: where in the image a medkit classifier looked for a label, drawn over the image.

`cam_layer` finds the last convolutional feature map of a model by running it once: the last module, at or after the
first convolution, whose output is a 4-D map with more than one pixel (for a timm CNN the last stage, for
``cnn_small`` its conv body; when the network pools a small input down to 1x1 before its last stage, the stage
before it). `grad_cam` weights that map's
channels by the mean gradient of the chosen output (a label's logit, a class's logit, or for an ordinal head the
sum of its cumulative logits, which rises with the grade) and keeps the positive part, upsampled to the input and
scaled to 0..1 per image. With several runs (folds) the maps are averaged.

`select_cams` picks which images to show: the highest-scoring ones of each label in turn, and about a quarter of
the picks from the lowest-scoring ones (negatives for contrast). `write_cams` writes one PNG per pick (the image
next to the overlay, caption with label, score and id) and a ``contact_sheet.png`` of them all.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medkit.errors import UsageError

__all__ = ["CamPick", "CamRequest", "select_cams", "cam_layer", "grad_cam", "overlay", "contact_sheet", "write_cams"]

_PANEL = 224  # pixels per panel side in the PNGs
_CAPTION_H = 44


@dataclass(frozen=True)
class CamPick:
    """One image chosen for a Grad-CAM overlay.

    Attributes:
        row: Row of the image in the prediction table.
        output: Model output explained (label or class index; 0 for the ordinal grade).
        label: Its name (``grade`` for ordinal runs).
        score: The ensemble's probability for it (the expected grade for ordinal runs).
        positive: Picked among the highest scores (True) or the lowest (False).
    """

    row: int
    output: int
    label: str
    score: float
    positive: bool


@dataclass
class CamRequest:
    """The models to explain and how their inputs are made.

    Attributes:
        models: One model per run, on its device, in eval mode.
        normalizers: Each run's uint8 batch -> model input (``InputTransforms.eval``).
        sources: Each run's image source (``get_batch(rows) -> uint8 (B, H, W, C)``).
        target: The `medkit.target.TargetKind` of the outputs.
        label_names: Output names.
    """

    models: list[Any]
    normalizers: list[Any]
    sources: list[Any]
    target: Any
    label_names: list[str]


def select_cams(probs: np.ndarray, label_names: Sequence[str], target: Any, n: int) -> list[CamPick]:
    """Choose ``n`` images, each shown once: round-robin over the labels (highest top score first), each label's
    highest-scoring image not yet chosen, for ``n - n // 4`` picks; then the same over the lowest scores (negatives,
    for contrast) for the rest.

    Ordinal runs are ranked by their expected grade (one "label", ``grade``).
    """
    probs = np.asarray(probs, dtype=np.float64)
    if target.cumulative:
        scores, names = probs.sum(axis=1, keepdims=True), ["grade"]
    else:
        scores, names = probs, list(label_names)
    n = min(int(n), len(scores))
    n_neg = n // 4
    picks: list[CamPick] = []
    shown: set[int] = set()
    for positive, count in ((True, n - n_neg), (False, n_neg)):
        order = np.argsort(-scores if positive else scores, axis=0, kind="stable")  # (N, L) rows per label
        labels = np.argsort(-scores.max(axis=0) if positive else scores.min(axis=0), kind="stable")
        ptr = dict.fromkeys(labels.tolist(), 0)
        taken = 0
        while taken < count:
            before = taken
            for j in labels.tolist():
                while ptr[j] < len(order) and int(order[ptr[j], j]) in shown:
                    ptr[j] += 1
                if taken == count or ptr[j] == len(order):
                    continue
                row = int(order[ptr[j], j])
                shown.add(row)
                picks.append(CamPick(row, j, names[j], float(scores[row, j]), positive))
                taken += 1
            if taken == before:
                break
    return picks


def cam_layer(model: Any, x: Any) -> str:
    """Name of the module whose output is the last convolutional feature map: the last 4-D output with more than
    one pixel, at or after the first convolution (a pooled copy of the input is no feature map).

    Raises:
        UsageError: A model without convolutions (an MLP, an LSTM over rows).
    """
    import torch
    from torch import nn

    fired: list[tuple[str, tuple[int, ...], bool]] = []
    hooks = []
    for name, module in model.named_modules():
        if name:
            conv = isinstance(module, nn.modules.conv._ConvNd)
            hooks.append(module.register_forward_hook(lambda m, i, o, n=name, c=conv: fired.append((n, _shape(o), c))))
    try:
        with torch.no_grad():
            model(x[:1])
    finally:
        for h in hooks:
            h.remove()
    first_conv = next((i for i, (_, _, conv) in enumerate(fired) if conv), len(fired))
    maps = [name for name, shape, _ in fired[first_conv:] if len(shape) == 4 and shape[2] * shape[3] > 1]
    if not maps:
        raise UsageError(
            f"model {type(model).__name__} has no convolutional feature map for Grad-CAM",
            hint="--cam works with CNN runs (timm CNNs, cnn_small); drop --cam for this run",
        )
    return maps[-1]


def _shape(out: Any) -> tuple[int, ...]:
    return tuple(out.shape) if hasattr(out, "shape") else ()


def grad_cam(model: Any, x: Any, outputs: Any, cumulative: bool = False) -> np.ndarray:
    """Grad-CAM maps of a batch: ``(B, H, W)`` float32 in [0, 1] at the input's size.

    Args:
        model: A classifier returning logits ``(B, K)``.
        x: Model inputs ``(B, C, H, W)`` (normalised, on the model's device).
        outputs: ``(B,)`` output index to explain for each image (ignored when ``cumulative``).
        cumulative: Explain the sum of the logits (ordinal grade) instead of one output.
    """
    import torch
    import torch.nn.functional as F

    layer = dict(model.named_modules())[cam_layer(model, x)]
    store: dict[str, Any] = {}

    def keep(module: Any, inputs: Any, out: Any) -> None:
        store["a"] = out
        out.register_hook(lambda g: store.__setitem__("g", g))

    handle = layer.register_forward_hook(keep)
    try:
        with torch.enable_grad():
            logits = model(x.detach().float().requires_grad_(True)).float()
            if cumulative:
                chosen = logits.sum(dim=1)
            else:
                idx = torch.as_tensor(outputs, device=logits.device).long().view(-1, 1)
                chosen = logits.gather(1, idx)[:, 0]
            chosen.sum().backward()
    finally:
        handle.remove()
        model.zero_grad(set_to_none=True)
    a, g = store["a"].detach().float(), store["g"].detach().float()
    cam = F.relu((g.mean(dim=(2, 3), keepdim=True) * a).sum(dim=1, keepdim=True))
    cam = F.interpolate(cam, size=tuple(x.shape[-2:]), mode="bilinear", align_corners=False)[:, 0]
    peak = cam.flatten(1).amax(dim=1).clamp_min(1e-12).view(-1, 1, 1)
    return (cam / peak).cpu().numpy().astype(np.float32)


def _display(image: np.ndarray) -> np.ndarray:
    """uint8 (H, W, C) model input -> BGR picture: gray repeated, RGB (or 3 CT windows) as colour, mask dropped."""
    import cv2

    if image.ndim == 2:
        image = image[:, :, None]
    if image.shape[2] >= 3:
        return cv2.cvtColor(np.ascontiguousarray(image[:, :, :3]), cv2.COLOR_RGB2BGR)
    return np.repeat(image[:, :, :1], 3, axis=2)


def overlay(image: np.ndarray, cam: np.ndarray, caption: Sequence[str], side: int = _PANEL) -> np.ndarray:
    """The image and its Grad-CAM overlay side by side, caption lines underneath (BGR uint8).

    Args:
        image: uint8 (H, W, C) as the model saw it.
        cam: (H, W) map in [0, 1].
        caption: One or two short lines (label and score, image id).
        side: Panel side in pixels.
    """
    import cv2

    pic = cv2.resize(_display(image), (side, side), interpolation=cv2.INTER_LINEAR)
    if float(np.max(cam)) > 0:
        heat = cv2.resize(np.clip(cam, 0, 1), (side, side), interpolation=cv2.INTER_LINEAR)
        heat = cv2.applyColorMap(np.round(heat * 255).astype(np.uint8), cv2.COLORMAP_JET)
        blend = cv2.addWeighted(pic, 0.55, heat, 0.45, 0)
    else:  # nothing in the image raises this output: say so rather than wash it in the colour of zero
        blend = pic.copy()
        for colour, width in (((0, 0, 0), 3), ((255, 255, 255), 1)):
            cv2.putText(blend, "no positive evidence", (6, side - 10), cv2.FONT_HERSHEY_SIMPLEX, 0.45, colour, width)
    tile = np.concatenate([pic, np.full((side, 4, 3), 255, np.uint8), blend], axis=1)
    strip = np.zeros((_CAPTION_H, tile.shape[1], 3), np.uint8)
    for i, line in enumerate(caption[:2]):
        text = line if len(line) <= 52 else line[:24] + "..." + line[-25:]
        cv2.putText(strip, text, (6, 17 + 20 * i), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1, cv2.LINE_AA)
    return np.concatenate([tile, strip], axis=0)


def contact_sheet(tiles: Sequence[np.ndarray], columns: int = 4, gap: int = 8) -> np.ndarray:
    """Tiles of one size on a grid, white gaps between them."""
    if not tiles:
        raise UsageError("no Grad-CAM tiles to put on a sheet", hint="this is a bug; please report it")
    h, w = tiles[0].shape[:2]
    cols = max(1, min(columns, len(tiles)))
    rows = -(-len(tiles) // cols)
    sheet = np.full((rows * h + (rows + 1) * gap, cols * w + (cols + 1) * gap, 3), 255, np.uint8)
    for i, tile in enumerate(tiles):
        r, c = divmod(i, cols)
        y, x = gap + r * (h + gap), gap + c * (w + gap)
        sheet[y : y + h, x : x + w] = tile
    return sheet


def _maps(request: CamRequest, rows: np.ndarray, outputs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The mean Grad-CAM of every run for ``rows`` (each map resized to the first run's input) and the images
    (uint8 (B, h, w, C), center-cropped as the first run's model saw them)."""
    import cv2
    import torch

    maps: list[np.ndarray] = []
    shown = None
    for model, normalize, source in zip(request.models, request.normalizers, request.sources, strict=True):
        batch = np.ascontiguousarray(source.get_batch(rows))
        device = next(model.parameters()).device
        x = normalize(torch.from_numpy(batch).permute(0, 3, 1, 2).to(device))
        cams = grad_cam(model, x, outputs, request.target.cumulative)
        if shown is None:
            h, w = x.shape[-2:]
            top, left = (batch.shape[1] - h) // 2, (batch.shape[2] - w) // 2
            shown = batch[:, top : top + h, left : left + w]
            if (plan := getattr(source, "plan", None)) is not None:  # 2.5D stacks: show the slice itself
                shown = shown[..., list(plan.centre)]
        else:
            cams = np.stack([cv2.resize(c, (shown.shape[2], shown.shape[1])) for c in cams])
        maps.append(cams)
    return np.mean(maps, axis=0), shown


def write_cams(
    request: CamRequest, ids: Sequence[str], probs: np.ndarray, y: Any, n: int, out_dir: str | Path
) -> list[Path]:
    """Write ``n`` Grad-CAM overlays (`select_cams`) and ``contact_sheet.png`` into ``out_dir``.

    Args:
        request: Models, inputs and outputs.
        ids: Image id of every row of ``probs``.
        probs: ``(N, K)`` probabilities of the ensemble.
        y: Targets of the rows (shown in the caption), or None.
        n: Number of overlays.
        out_dir: Folder to write into (created).

    Returns:
        The PNGs written, the contact sheet last.
    """
    picks = select_cams(probs, request.label_names, request.target, n)
    if not picks:
        return []
    rows = np.array([p.row for p in picks])
    maps, shown = _maps(request, rows, np.array([p.output for p in picks]))
    out_dir = Path(out_dir)
    files, tiles = [], []
    for k, (pick, cam, image) in enumerate(zip(picks, maps, shown, strict=True)):
        tile = overlay(image, cam, _caption(pick, ids[pick.row], y, request.target))
        stem = str(Path(ids[pick.row]).with_suffix(""))
        name = f"{k:02d}_{_safe(pick.label)}_{_safe(stem)}.png"
        files.append(_write_png(out_dir / name, tile))
        tiles.append(tile)
    files.append(_write_png(out_dir / "contact_sheet.png", contact_sheet(tiles)))
    return files


def _caption(pick: CamPick, image_id: str, y: Any, target: Any) -> list[str]:
    what = "top" if pick.positive else "low"
    if target.cumulative:
        first = f"grade: expected {pick.score:.2f} ({what})"
    else:
        first = f"{pick.label}: {pick.score:.3f} ({what})"
    if y is not None:
        truth = np.asarray(y)[pick.row]
        value = truth if np.ndim(truth) == 0 or target.integer else truth[min(pick.output, np.size(truth) - 1)]
        first += f"  true {float(value):g}"
    return [first, image_id]


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(text)).strip("_")[:60] or "x"


def _write_png(path: Path, image: np.ndarray) -> Path:
    import cv2

    from medkit._io import atomic_write

    ok, buf = cv2.imencode(".png", image)
    if not ok:
        raise UsageError(f"could not encode {path.name} as PNG", hint="this is a bug; please report it")
    with atomic_write(path, "wb") as fh:
        fh.write(buf.tobytes())
    return path
