"""Near duplicates that are crops, shifts, rescales and JPEG copies (`medkit.audit.align`): recall on a built set
with known copies, and no false alarm between distinct images."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from medkit.audit._scan import summarize_file
from medkit.audit.duplicates import duplicate_clusters


def textured(seed: int, size: tuple[int, int]) -> np.ndarray:
    """A real-looking picture: smoothed noise, a body-like ellipse and a few shapes, 8-bit."""
    rng = np.random.default_rng(seed)
    h, w = size
    img = cv2.GaussianBlur(rng.normal(0, 1, (h, w)).astype(np.float32), (0, 0), 3 + seed % 4)
    cv2.ellipse(img, (w // 2, h // 2), (w // 3, h // 3), float(rng.integers(0, 180)), 0, 360, 1.5, -1)
    for _ in range(5):
        c = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        cv2.circle(img, c, int(rng.integers(5, 30)), float(rng.normal(0, 2)), -1)
    img = cv2.GaussianBlur(img, (0, 0), 1.5) + rng.normal(0, 0.05, img.shape).astype(np.float32)
    return np.round((img - img.min()) / (img.max() - img.min()) * 255).astype(np.uint8)


def _jpeg(a: np.ndarray) -> np.ndarray:
    return cv2.imdecode(cv2.imencode(".jpg", a, [cv2.IMWRITE_JPEG_QUALITY, 70])[1], 0)


# The copies of the issue (288x231 vs 290x229, 577x538 vs 576x498) and their neighbours.
VARIANTS = {
    "crop_small": lambda a: a[1:-1, 2:],  # 231x290 -> 229x288
    "crop_large": lambda a: a[20:-20, :-1],  # 538x577 -> 498x576
    "shift": lambda a: a[8:, 8:],
    "rescale": lambda a: cv2.resize(a, (a.shape[1] * 3 // 4, a.shape[0] * 3 // 4), interpolation=cv2.INTER_AREA),
    "jpeg": _jpeg,
}
SIZES = {
    "crop_small": (231, 290),
    "crop_large": (538, 577),
    "shift": (300, 260),
    "rescale": (256, 256),
    "jpeg": (240, 240),
}


@pytest.fixture(scope="module")
def copies(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[str], list[dict], dict[str, str]]:
    root = tmp_path_factory.mktemp("copies")
    names, pair_of = [], {}
    for n, (kind, fn) in enumerate(VARIANTS.items()):
        for rep in range(2):
            src = textured(10 * n + rep, SIZES[kind])
            a, b = f"src_{kind}_{rep}.png", f"copy_{kind}_{rep}.png"
            cv2.imwrite(str(root / a), src)
            cv2.imwrite(str(root / b), fn(src))
            names += [a, b]
            pair_of[b] = a
    for d in range(10):  # distinct pictures of the same kind and sizes: must stay apart
        name = f"other_{d}.png"
        cv2.imwrite(str(root / name), textured(1000 + d, (231 + 30 * (d % 3), 290)))
        names.append(name)
    records = [summarize_file(str(root / f)) for f in names]
    return names, records, pair_of


def _recall_and_false(names: list[str], near: np.ndarray, pair_of: dict[str, str]) -> tuple[dict[str, int], int]:
    c = dict(zip(names, near.tolist(), strict=True))
    hits: dict[str, int] = {}
    for copy, src in pair_of.items():
        kind = copy.split("_", 1)[1].rsplit("_", 1)[0]
        hits[kind] = hits.get(kind, 0) + int(c[copy] == c[src])
    # A false alarm: two different source pictures in one cluster.
    source = {f: pair_of.get(f, f) for f in names}
    per_cluster: dict[int, set[str]] = {}
    for f, cl in c.items():
        per_cluster.setdefault(cl, set()).add(source[f])
    return hits, sum(len(s) - 1 for s in per_cluster.values())


def test_crops_shifts_rescales_and_jpeg_copies_are_found_and_distinct_images_stay_apart(copies) -> None:
    names, records, pair_of = copies
    near, _ = duplicate_clusters(records, 6)
    hits, false = _recall_and_false(names, near, pair_of)
    assert hits == {k: 2 for k in VARIANTS}
    assert false == 0


def test_without_the_alignment_stage_crops_are_missed(copies) -> None:
    names, records, pair_of = copies
    near, _ = duplicate_clusters(records, 6, align=0)
    hits, false = _recall_and_false(names, near, pair_of)
    assert hits["crop_large"] == 0 and hits["shift"] < 2  # what the issue saw: the thumbnail gate alone misses them
    assert false == 0


def test_a_higher_threshold_trades_recall_for_precision(copies) -> None:
    names, records, pair_of = copies
    near, _ = duplicate_clusters(records, 6, align=0.999)
    hits, false = _recall_and_false(names, near, pair_of)
    assert hits["crop_large"] < 2 and false == 0


def test_aligned_corr_of_a_crop_and_of_unrelated_images() -> None:
    from medkit.audit._scan import summarize_array
    from medkit.audit.align import aligned_corr

    a = textured(3, (538, 577))
    ra, rb, rc = summarize_array(a), summarize_array(a[20:-20, :-1]), summarize_array(textured(4, (538, 577)))
    assert aligned_corr(ra, rb) > 0.95
    assert aligned_corr(ra, rc) < 0.8


def test_the_tree_neighbour_search_finds_every_copy(copies, monkeypatch: pytest.MonkeyPatch) -> None:
    from medkit.audit import align

    names, records, pair_of = copies
    monkeypatch.setattr(align, "_TREE_MIN", 4)  # the large-set path (k-d tree on 16 components) on this small set
    ok = list(range(len(records)))
    tree = {tuple(p) for p in align.candidate_pairs(records, ok).tolist()}
    index = {f: k for k, f in enumerate(names)}
    assert all(tuple(sorted((index[c], index[s]))) in tree for c, s in pair_of.items())
    near, _ = duplicate_clusters(records, 6)
    hits, false = _recall_and_false(names, near, pair_of)
    assert hits == {k: 2 for k in VARIANTS} and false == 0


def test_cli_near_align_flag(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from medkit.cli.main import app

    src = textured(5, (538, 577))
    cv2.imwrite(str(tmp_path / "a.png"), src)
    cv2.imwrite(str(tmp_path / "b.png"), src[20:-20, :-1])
    cv2.imwrite(str(tmp_path / "c.png"), textured(6, (400, 420)))
    runner = CliRunner()
    on = runner.invoke(app, ["audit", str(tmp_path), "--workers", "0", "--json", "--fail-on", "none"])
    off = runner.invoke(
        app, ["audit", str(tmp_path), "--workers", "0", "--json", "--near-align", "0", "--fail-on", "none"]
    )
    assert on.exit_code == off.exit_code == 0, on.output + off.output
    assert '"near_duplicate": 1' in on.stdout and "near_duplicate" not in off.stdout.split('"findings"')[0]


def test_cli_default_is_the_library_default() -> None:
    import inspect

    from medkit.audit.align import DEFAULT_ALIGN
    from medkit.cli.audit import audit

    assert inspect.signature(audit).parameters["near_align"].default == DEFAULT_ALIGN
