"""Engine building blocks: batch order, checkpoints, run files, the loop, prediction and its OOF de-duplication."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medkit.data.dataset import data_hash
from medkit.engine.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state, unwrap
from medkit.engine.components import InputTransforms
from medkit.engine.feed import Batch, EpochBatches
from medkit.engine.loop import EpochState, StepContext, train_one_epoch
from medkit.engine.predict import predict
from medkit.engine.run import draw_curves, read_metrics, write_metrics, write_oof
from medkit.engine.runtime import Runtime
from medkit.errors import DataError, MedkitError, UsageError
from medkit.target import MULTICLASS, MULTILABEL, cumulative_targets


# ---------------------------------------------------------------------------------------------------- batch order
def test_epoch_order_depends_only_on_seed_and_epoch() -> None:
    a, b = EpochBatches(50, 8, True, seed=3), EpochBatches(50, 8, True, seed=3)
    a.set_epoch(2)
    b.set_epoch(2)
    assert all(np.array_equal(x, y) for x, y in zip(a.batches(), b.batches(), strict=True))
    b.set_epoch(3)
    assert not all(np.array_equal(x, y) for x, y in zip(a.batches(), b.batches(), strict=True))
    flat = np.concatenate(a.batches())
    assert sorted(flat.tolist()) == list(range(50))  # a permutation: every row once


def test_skip_resumes_at_the_right_batch() -> None:
    full = EpochBatches(50, 8, True, seed=1)
    full.set_epoch(4)
    part = EpochBatches(50, 8, True, seed=1)
    part.set_epoch(4, skip_batches=3)
    assert len(part) == len(full) - 3
    assert all(np.array_equal(x, y) for x, y in zip(list(part), full.batches()[3:], strict=True))


def test_trailing_single_image_batch_is_dropped_in_training_only() -> None:
    train = EpochBatches(17, 8, True)
    assert [len(b) for b in train.batches()] == [8, 8]
    val = EpochBatches(17, 8, False, train=False)
    assert [len(b) for b in val.batches()] == [8, 8, 1]
    assert np.concatenate(val.batches()).tolist() == list(range(17))


def test_ranks_split_one_permutation_with_padding_like_distributed_sampler() -> None:
    n, world = 11, 2
    ranks = [EpochBatches(n, 4, False, world_size=world, rank=r, train=False) for r in range(world)]
    per_rank = [np.concatenate(r.batches()) for r in ranks]
    assert len(per_rank[0]) == len(per_rank[1])  # equal step counts: DDP would hang otherwise
    union = set(per_rank[0].tolist()) | set(per_rank[1].tolist())
    assert union == set(range(n))
    assert len(per_rank[0]) + len(per_rank[1]) == 12  # padded to a multiple of world * local batch


def test_batch_smaller_than_world_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="batch size"):
        EpochBatches(10, 1, True, world_size=2)


# ---------------------------------------------------------------------------------------------------- checkpoint
def test_checkpoint_round_trip_restores_every_rng(tmp_path) -> None:
    gen = torch.Generator().manual_seed(5)
    state = {"model": {"w": torch.arange(3.0)}, "rng": rng_state({"augment": gen})}
    expected = (np.random.rand(), torch.rand(2), torch.rand(2, generator=gen))
    path = save_checkpoint(tmp_path / "c" / "last.pt", state)
    assert path.is_file() and not list(path.parent.glob(".*tmp"))  # atomic: no temp file left
    loaded = load_checkpoint(path)
    torch.manual_seed(999)
    np.random.seed(999)
    gen2 = torch.Generator()
    set_rng_state(loaded["rng"], {"augment": gen2})
    assert np.random.rand() == expected[0]
    assert torch.equal(torch.rand(2), expected[1])
    assert torch.equal(torch.rand(2, generator=gen2), expected[2])
    assert torch.equal(loaded["model"]["w"], torch.arange(3.0))


def test_load_checkpoint_errors_name_the_file(tmp_path) -> None:
    with pytest.raises(DataError, match="not found"):
        load_checkpoint(tmp_path / "nope.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(DataError, match="bad.pt"):
        load_checkpoint(bad)
    torch.save({"x": 1}, tmp_path / "other.pt")
    with pytest.raises(DataError, match="not a medkit checkpoint"):
        load_checkpoint(tmp_path / "other.pt")


def test_unwrap_removes_wrappers() -> None:
    inner = torch.nn.Linear(2, 1)

    class Wrapper(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.module = inner

    assert unwrap(Wrapper()) is inner


# ---------------------------------------------------------------------------------------------------- run files
def test_metrics_csv_round_trip_and_curve_png(tmp_path) -> None:
    import cv2

    rows = [{"epoch": 1, "train_loss": 0.9, "auc": 0.6}, {"epoch": 2, "train_loss": 0.5, "auc": 0.8, "lr": 1e-3}]
    write_metrics(tmp_path / "metrics.csv", rows)
    back = read_metrics(tmp_path / "metrics.csv")
    assert [r["epoch"] for r in back] == [1, 2]
    assert back[1]["auc"] == pytest.approx(0.8) and back[1]["lr"] == pytest.approx(1e-3)
    assert back[0]["lr"] == ""  # a column that appears later is blank before
    png = draw_curves(tmp_path / "curve.png", back, ["train_loss", "auc"])
    img = cv2.imread(str(png))
    assert img is not None and img.shape[1] == 640
    # Lines were drawn: some pixels are neither white nor black.
    coloured = ((img != 255).any(axis=2) & (img != 0).any(axis=2)).sum()
    assert coloured > 100
    assert draw_curves(tmp_path / "none.png", back, ["missing"]) is None


def test_write_oof_columns(tmp_path) -> None:
    import pandas as pd

    write_oof(
        tmp_path / "oof.csv",
        ["a", "b"],
        np.array([[1, 0], [0, 1]]),
        np.array([[0.9, 0.2], [0.1, 0.7]]),
        ["x", "y"],
        {"patient_id": ["p1", "p2"]},
    )
    df = pd.read_csv(tmp_path / "oof.csv")
    assert list(df.columns) == ["image", "patient_id", "x", "y", "x_prob", "y_prob"]
    assert df["y_prob"].tolist() == [0.2, 0.7]


def test_data_hash_changes_with_table_and_files(tmp_path) -> None:
    f = tmp_path / "a.png"
    f.write_bytes(b"12")
    h1 = data_hash(b"table", [f])
    assert h1 == data_hash(b"table", [f])
    assert h1 != data_hash(b"table2", [f])
    f.write_bytes(b"123")
    assert h1 != data_hash(b"table", [f])


# ---------------------------------------------------------------------------------------------------- loop
def to_float_image(x: torch.Tensor, mean: list[float], std: list[float]) -> torch.Tensor:
    """The evaluation transform of the engine: ``(x / 255 - mean) / std`` per channel."""
    return InputTransforms(mean, std, tuple(x.shape[-2:])).eval(x)


def test_eval_transform_matches_formula() -> None:
    x = torch.tensor([[[[0, 255]], [[51, 102]]]], dtype=torch.uint8)  # (1, 2, 1, 2)
    y = to_float_image(x, [0.5, 0.0], [0.5, 1.0])
    assert torch.allclose(y[0, 0, 0], torch.tensor([-1.0, 1.0]))
    assert torch.allclose(y[0, 1, 0], torch.tensor([0.2, 0.4]))


def test_targets_to_ordinal_hand_values() -> None:
    out = cumulative_targets(torch.tensor([0, 2, 5]), 6)
    assert out.tolist() == [[0, 0, 0, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 1, 1]]


CPU = Runtime(torch.device("cpu"))


def _toy_loader(n: int = 12, bs: int = 4) -> list[Batch]:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 1, 4, 4), generator=g, dtype=torch.uint8)
    target = (images.float().mean(dim=(1, 2, 3)) > 127).float().unsqueeze(1)
    return [Batch(images[i : i + bs], target[i : i + bs], torch.arange(i, min(n, i + bs))) for i in range(0, n, bs)]


def _ctx(model: torch.nn.Module) -> StepContext:
    return StepContext(
        loss_fn=torch.nn.BCEWithLogitsLoss(),
        optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
        runtime=CPU,
        transforms=InputTransforms([0.5], [0.5], 4),
    )


def test_train_one_epoch_matches_a_plain_loop() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 1))
    ref = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 1))
    ref.load_state_dict(model.state_dict())
    loader = _toy_loader()
    state = train_one_epoch(model, loader, _ctx(model))
    opt = torch.optim.SGD(ref.parameters(), lr=0.1)
    losses = []
    for b in loader:
        loss = torch.nn.functional.binary_cross_entropy_with_logits(ref((b.image.float() / 255 - 0.5) / 0.5), b.target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert state.step == 3 and state.seen == 12
    assert state.loss == pytest.approx(np.mean(losses), rel=1e-6)
    for p, q in zip(model.parameters(), ref.parameters(), strict=True):
        assert torch.allclose(p, q)


def test_on_step_can_stop_and_dry_run_does_one_batch() -> None:
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 1))
    st = train_one_epoch(model, _toy_loader(), _ctx(model), on_step=lambda s: s.step >= 2)
    assert st.step == 2
    st = train_one_epoch(model, _toy_loader(), _ctx(model), dry_run=True)
    assert st.step == 1
    # A resumed epoch keeps its running sums.
    st = train_one_epoch(model, _toy_loader()[2:], _ctx(model), state=EpochState(step=2, loss_sum=8.0, seen=8))
    assert st.step == 3 and st.seen == 12


def _nan_at(step: int) -> torch.nn.Module:
    class Loss(torch.nn.Module):
        calls = 0

        def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
            Loss.calls += 1
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, target)
            return loss * float("nan") if Loss.calls == step else loss

    return Loss()


def test_the_loss_is_read_every_few_steps_and_summed_exactly() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 1))
    ctx = _ctx(model)
    ctx.runtime = Runtime(torch.device("cpu"), loss_every=3)
    batches = _toy_loader(n=28, bs=4)  # 7 steps
    unread: list[int] = []
    state = train_one_epoch(model, batches, ctx, on_step=lambda s: unread.append(len(s.pending)) or False)
    assert unread == [1, 2, 0, 1, 2, 0, 1] and state.pending == []  # read after steps 3 and 6, and at the end
    torch.manual_seed(0)
    ref = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 1))  # the same initial weights
    opt, total = torch.optim.SGD(ref.parameters(), lr=0.1), 0.0
    for b in batches:
        loss = torch.nn.functional.binary_cross_entropy_with_logits(ref((b.image.float() / 255 - 0.5) / 0.5), b.target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        total += loss.item() * len(b)  # what reading the loss after every step gave
    assert state.loss_sum == total and state.seen == 28 and state.step == 7


@pytest.mark.parametrize("every", [1, 5])
def test_a_loss_that_is_not_finite_stops_the_epoch(every: int) -> None:
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 1))
    ctx = _ctx(model)
    ctx.loss_fn, ctx.runtime = _nan_at(2), Runtime(torch.device("cpu"), loss_every=every)
    steps: list[int] = []
    with pytest.raises(MedkitError, match="loss became nan at step 2") as err:
        train_one_epoch(model, _toy_loader(), ctx, on_step=lambda s: steps.append(s.step) or False)
    assert err.value.hint and "--lr" in err.value.hint
    assert steps == ([1] if every == 1 else [1, 2, 3])  # read at once, or at the end of the (3-step) epoch


def test_a_checkpoint_reads_the_pending_losses_first() -> None:
    from medkit.engine.state import TrainState

    st = TrainState()
    st.progress.add(torch.tensor(0.5), 4)
    assert st.progress.loss != st.progress.loss  # NaN: nothing read yet
    assert st.to_checkpoint()["epoch_state"] == {
        "step": 1,
        "loss_sum": 2.0,
        "seen": 4,
        "seconds": 0.0,
        "data_seconds": 0.0,
    }
    st.progress.add(torch.tensor(float("inf")), 4)
    with pytest.raises(MedkitError, match="became inf at step 2"):
        st.to_checkpoint()  # a diverged run is never saved


def test_predict_returns_sigmoid_or_softmax_probabilities() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    loader = _toy_loader()
    norm = InputTransforms([0.5], [0.5], 4).eval
    res = predict(model, loader, CPU, MULTICLASS, norm)
    assert res.probs.shape == (12, 3)
    assert np.allclose(res.probs.sum(1), 1.0, atol=1e-6)
    assert res.rows.tolist() == list(range(12))
    res2 = predict(model, loader, CPU, MULTILABEL, norm)
    x = to_float_image(torch.cat([b.image for b in loader]), [0.5], [0.5])
    with torch.no_grad():
        assert np.allclose(res2.probs, torch.sigmoid(model(x)).numpy(), atol=1e-6)


def test_gather_dedups_padded_rows_and_maps_positions() -> None:
    from medkit.data.dataset import Split
    from medkit.engine.ddp import DistInfo
    from medkit.engine.predict import Predictions, gather

    split = Split(source=None, rows=np.array([3, 5, 9]), all_targets=np.zeros((10, 1)), ids=["a", "b", "c"])
    res = Predictions(
        rows=np.array([3, 5, 9, 3]),
        probs=np.array([[0.1], [0.2], [0.3], [0.1]]),
        targets=np.zeros((4, 1)),
        loss=0.0,
    )
    out = gather(res, DistInfo(), split)
    assert out.rows.tolist() == [0, 1, 2]
    assert out.probs[:, 0].tolist() == [0.1, 0.2, 0.3]
    assert out.ids == ["a", "b", "c"]


# ---------------------------------------------------------------------------------------------------- schedule, loader
def test_plateau_follows_the_direction_of_the_metric() -> None:
    from medkit.engine.components import build_schedule as _make_schedule

    def lr_after(metrics: list[float], greater: bool, extra: dict | None = None) -> float:
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        sched = _make_schedule("plateau", opt, 5, 2, {"patience": 0, "factor": 0.5, **(extra or {})}, greater)
        for m in metrics:
            sched.step_epoch(m)
        return opt.param_groups[0]["lr"]

    falling = [0.9, 0.7, 0.5]  # a log loss getting better every epoch
    assert lr_after(falling, greater=False) == 1.0  # mode "min": improving, the rate stays
    assert lr_after(falling, greater=True) == 0.25  # mode "max" would halve it twice
    assert lr_after(falling, greater=False, extra={"mode": "max"}) == 0.25  # an explicit mode wins
    assert lr_after([0.5, 0.7, 0.9], greater=True) == 1.0
    # a schedule that watches no metric takes no mode
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    _make_schedule("cosine", opt, 3, 2, {}, greater=False)


def test_one_loader_with_persistent_workers_follows_set_epoch_and_skip() -> None:
    from medkit.data.dataset import Split
    from medkit.data.pipeline import ArraySource
    from medkit.engine.feed import make_loader as make_batches_loader

    images = np.arange(10 * 4 * 4, dtype=np.uint8).reshape(10, 4, 4)
    split = Split(ArraySource(images), np.arange(10), np.zeros((10, 1), np.float32), [str(i) for i in range(10)])

    def run(workers: int) -> list[list[int]]:
        batches = EpochBatches(10, 4, True, seed=3)
        loader = make_batches_loader(split, batches, workers)
        assert loader.persistent_workers == (workers > 0)
        seen = []
        for epoch, skip in [(0, 0), (1, 0), (1, 2), (2, 1)]:
            batches.set_epoch(epoch, skip)
            want = [b.tolist() for b in batches]
            got = []
            for b in loader:
                got.append(b["index"].tolist())
                assert torch.equal(b["image"][:, 0], torch.from_numpy(images[b["index"].numpy()]))
            assert got == want
            seen.append(got)
        if workers:
            first = loader._iterator
            iter(loader)
            assert loader._iterator is first  # the same worker processes, not new ones per epoch
        return seen

    assert run(1) == run(0)
