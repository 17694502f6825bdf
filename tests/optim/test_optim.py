"""OPTIMIZERS and SCHEDULERS: every optimizer learns, Demon follows its formula, schedules match hand values."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from medkit.cli.main import app
from medkit.errors import UnknownNameError, UsageError
from medkit.optim import DemonAdam, DemonSGD, Schedule, demon_beta, param_groups
from medkit.registries import OPTIMIZERS, SCHEDULERS

torch.set_num_threads(1)

STEPS = 30


def _problem() -> tuple[nn.Linear, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(64, 4, generator=gen)
    y = x @ torch.tensor([[1.5], [-2.0], [0.5], [1.0]]) + 0.3
    model = nn.Linear(4, 1)
    with torch.no_grad():
        model.weight.zero_()
        model.bias.zero_()
    return model, x, y


def _train(name: str, lr: float, **kw: object) -> tuple[float, float]:
    model, x, y = _problem()
    # the module, as the engine passes it: split into decay / no-decay groups by the factory
    opt = OPTIMIZERS.create(name, model, lr=lr, weight_decay=1e-4, total_steps=STEPS, **kw)
    losses = []
    for _ in range(STEPS):
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses[0], nn.functional.mse_loss(model(x), y).item()


LRS = {"sgd": 0.05, "demon_sgd": 0.05, "adabound": 0.05}


@pytest.mark.parametrize("name", sorted(OPTIMIZERS.names(include_prefixed=False)) + ["timm/lamb", "timm/adamw"])
def test_every_optimizer_reduces_the_loss(name: str) -> None:
    first, last = _train(name, LRS.get(name, 0.1))
    assert last < 0.5 * first, (first, last)


def test_builtin_entries_are_registered_with_descriptions() -> None:
    assert set(OPTIMIZERS.names(include_prefixed=False)) == {
        "adam", "adamw", "sgd", "adabelief", "yogi", "adabound", "demon_adam", "demon_sgd",
    }  # fmt: skip
    for name in OPTIMIZERS.names(include_prefixed=False):
        assert OPTIMIZERS.get(name).description
    assert OPTIMIZERS.get("demon_sgd").flags["needs_total_steps"] is True
    assert "timm/lamb" in OPTIMIZERS.names("timm/la*")


def test_library_classes_behind_the_names() -> None:
    import pytorch_optimizer

    params = [nn.Parameter(torch.zeros(2))]
    assert isinstance(OPTIMIZERS.create("adabelief", params, lr=1e-3), pytorch_optimizer.AdaBelief)
    assert isinstance(OPTIMIZERS.create("yogi", params, lr=1e-3), pytorch_optimizer.Yogi)
    assert isinstance(OPTIMIZERS.create("adabound", params, lr=1e-3), pytorch_optimizer.AdaBound)
    sgd = OPTIMIZERS.create("sgd", params, lr=1e-3, nesterov=True)
    assert sgd.defaults["momentum"] == 0.9 and sgd.defaults["nesterov"] is True
    adamw = OPTIMIZERS.create("adamw", params, lr=1e-3, weight_decay=0.05)
    assert isinstance(adamw, torch.optim.AdamW) and adamw.defaults["weight_decay"] == 0.05


def test_sgd_step_matches_the_momentum_formula() -> None:
    p = nn.Parameter(torch.tensor([1.0]))
    opt = OPTIMIZERS.create("sgd", [p], lr=0.1)
    expected, buf = 1.0, None
    for _ in range(3):
        opt.zero_grad()
        (3.0 * p).sum().backward()  # constant gradient 3
        opt.step()
        buf = 3.0 if buf is None else 0.9 * buf + 3.0
        expected -= 0.1 * buf
    assert p.item() == pytest.approx(expected)  # 1 - 0.3 - 0.57 - 0.813 = -0.683


def test_bad_optimizer_options_are_usage_errors() -> None:
    params = [nn.Parameter(torch.zeros(2))]
    with pytest.raises(UsageError, match="lr"):
        OPTIMIZERS.create("adam", params, lr=0.0)
    with pytest.raises(UsageError, match="total_steps"):
        OPTIMIZERS.create("demon_adam", params, lr=1e-3)
    with pytest.raises(UsageError):
        OPTIMIZERS.create("adam", params, lr=1e-3, no_such_option=1)
    with pytest.raises(UsageError, match="no parameters"):
        OPTIMIZERS.create("sgd", [], lr=1e-3)
    with pytest.raises(UnknownNameError, match="did you mean 'adabelief'"):
        OPTIMIZERS.get("adabelif")
    with pytest.raises(UnknownNameError):
        OPTIMIZERS.get("timm/no_such_opt")


def test_param_groups_exempt_biases_and_norms_from_decay() -> None:
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 2))
    model[0].bias.requires_grad_(False)
    groups = param_groups(model, 0.01)
    decay, no_decay = groups
    assert decay["weight_decay"] == 0.01 and no_decay["weight_decay"] == 0.0
    assert {id(p) for p in decay["params"]} == {id(model[0].weight), id(model[3].weight)}
    assert {id(p) for p in no_decay["params"]} == {id(model[1].weight), id(model[1].bias), id(model[3].bias)}
    (single,) = param_groups(model, 0.01, no_decay_norm_bias=False)
    assert len(single["params"]) == 5  # frozen conv bias left out
    opt = OPTIMIZERS.create("adamw", model, lr=1e-3, weight_decay=0.01)  # a module is split the same way
    assert [g["weight_decay"] for g in opt.param_groups] == [0.01, 0.0]


# ---------------------------------------------------------------------------------------------------- Demon
@pytest.mark.parametrize(
    ("beta", "t", "total", "expected"),
    [
        (0.9, 0, 10, 0.9),
        (0.9, 5, 10, 0.45 / 0.55),  # frac 0.5: 0.9*0.5 / (0.1 + 0.45)
        (0.9, 9, 10, 0.09 / 0.19),  # frac 0.1: 0.09 / (0.1 + 0.09)
        (0.9, 10, 10, 0.0),
        (0.9, 15, 10, 0.0),
        (0.95, 25, 100, 0.7125 / 0.7625),  # frac 0.75: 0.7125 / (0.05 + 0.7125)
    ],
)
def test_demon_beta_matches_the_formula(beta: float, t: int, total: int, expected: float) -> None:
    assert demon_beta(beta, t, total) == pytest.approx(expected)


def test_demon_sgd_update_matches_a_plain_loop() -> None:
    total, lr, g = 6, 0.1, 2.0
    p = nn.Parameter(torch.tensor([0.0]))
    opt = OPTIMIZERS.create("demon_sgd", [p], lr=lr, total_steps=total)
    assert isinstance(opt, DemonSGD)
    value, buf = 0.0, None
    for t in range(total + 2):
        opt.zero_grad()
        (g * p).sum().backward()
        opt.step()
        beta = 0.9 * (1 - min(t, total) / total) / (0.1 + 0.9 * (1 - min(t, total) / total))
        assert opt.param_groups[0]["momentum"] == pytest.approx(beta)
        buf = g if buf is None else beta * buf + g  # torch starts the buffer at the first gradient
        value -= lr * buf
        assert p.item() == pytest.approx(value, rel=1e-6)


def test_demon_adam_uses_the_decayed_beta1() -> None:
    total, lr, b2, eps = 5, 0.01, 0.999, 1e-8
    p = nn.Parameter(torch.tensor([1.0]))
    opt = OPTIMIZERS.create("demon_adam", [p], lr=lr, total_steps=total)
    assert isinstance(opt, DemonAdam)
    value, m, v = 1.0, 0.0, 0.0
    for t in range(total):
        opt.zero_grad()
        (p**2).sum().backward()
        grad = 2 * value
        opt.step()
        b1 = demon_beta(0.9, t, total)
        assert opt.param_groups[0]["betas"][0] == pytest.approx(b1)
        m = b1 * m + (1 - b1) * grad
        v = b2 * v + (1 - b2) * grad**2
        step = t + 1
        value -= lr * (m / (1 - b1**step)) / (math.sqrt(v / (1 - b2**step)) + eps)
        assert p.item() == pytest.approx(value, rel=1e-5)


def test_demon_position_survives_state_dict() -> None:
    p = nn.Parameter(torch.tensor([1.0]))
    opt = OPTIMIZERS.create("demon_sgd", [p], lr=0.1, total_steps=10)
    for _ in range(3):
        opt.zero_grad()
        p.sum().backward()
        opt.step()
    state = opt.state_dict()
    q = nn.Parameter(torch.tensor([1.0]))
    fresh = OPTIMIZERS.create("demon_sgd", [q], lr=0.1, total_steps=10)
    fresh.load_state_dict(state)
    fresh.zero_grad()
    q.sum().backward()
    fresh.step()
    assert fresh.param_groups[0]["momentum"] == pytest.approx(demon_beta(0.9, 3, 10))


# ---------------------------------------------------------------------------------------------------- schedules
def _opt(lr: float = 1.0, optimizer: str = "sgd") -> torch.optim.Optimizer:
    return OPTIMIZERS.create(optimizer, [nn.Parameter(torch.zeros(1))], lr=lr)


def _batch_lrs(sched: Schedule, n: int) -> list[float]:
    """Learning rate used by each of n batches."""
    lrs = []
    for _ in range(n):
        lrs.append(sched.get_last_lr()[0])
        sched.optimizer.step()
        sched.step_batch()
    return lrs


def test_every_scheduler_entry_returns_a_schedule() -> None:
    assert set(SCHEDULERS.names(include_prefixed=False)) == {
        "none",
        "constant",
        "step",
        "multistep",
        "cosine",
        "onecycle",
        "plateau",
    }
    for name in SCHEDULERS.names(include_prefixed=False):
        sched = SCHEDULERS.create(name, _opt(), epochs=4, steps_per_epoch=3)
        assert isinstance(sched, Schedule)
        sched.optimizer.step()
        sched.step_batch()
        sched.step_epoch(0.5)
        assert len(sched.get_last_lr()) == 1
        assert sched.state_dict()["batches"] == 1


def test_constant_keeps_the_rate() -> None:
    sched = SCHEDULERS.create("constant", _opt(0.3), epochs=2, steps_per_epoch=2)
    assert _batch_lrs(sched, 4) == [0.3] * 4
    sched.step_epoch(0.1)
    assert sched.get_last_lr() == [0.3]


def test_cosine_with_warmup_steps_matches_hand_values() -> None:
    # T = 10 batches, W = 2, base 1.0, min_lr 0.1: warmup (t+1)/W, then 0.1 + 0.45 * (1 + cos(pi * (t - 2) / 8))
    sched = SCHEDULERS.create("cosine", _opt(1.0), epochs=2, steps_per_epoch=5, warmup_steps=2, min_lr=0.1)
    lrs = _batch_lrs(sched, 11)
    expected = {0: 0.5, 1: 1.0, 2: 1.0, 3: 0.9657458, 6: 0.55, 9: 0.1342542, 10: 0.1342542}
    for t, value in expected.items():
        assert lrs[t] == pytest.approx(value, abs=1e-6), t
    assert all(a >= b for a, b in zip(lrs[1:], lrs[2:], strict=False))  # no rise after warmup


def test_cosine_warmup_epochs_and_min_lr_floor() -> None:
    sched = SCHEDULERS.create("cosine", _opt(0.5), epochs=4, steps_per_epoch=5, warmup_epochs=1)
    lrs = _batch_lrs(sched, 20)
    assert lrs[:5] == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.5])  # W = 5 batches
    assert lrs[12] == pytest.approx(0.25 * (1 + math.cos(math.pi * 7 / 15)))
    assert min(lrs) >= 0.0
    before = sched.get_last_lr()
    sched.step_epoch(None)  # a batch schedule ignores the epoch hook
    assert sched.get_last_lr() == before


def test_cosine_warmup_longer_than_the_run_is_rejected() -> None:
    with pytest.raises(UsageError, match="warmup"):
        SCHEDULERS.create("cosine", _opt(), epochs=2, steps_per_epoch=3, warmup_epochs=2)


def _epoch_lrs(sched: Schedule, epochs: int, metrics: list[float] | None = None) -> list[float]:
    """Learning rate used in each epoch."""
    lrs = []
    for e in range(epochs):
        lrs.append(sched.get_last_lr()[0])
        for _ in range(3):
            sched.optimizer.step()
            sched.step_batch()
        sched.step_epoch(None if metrics is None else metrics[e])
    return lrs


def test_step_decay_at_fraction_milestones() -> None:
    # MedMNIST protocol: x0.1 at 50% and 75% of 8 epochs = epochs 4 and 6
    sched = SCHEDULERS.create("step", _opt(1.0), epochs=8, steps_per_epoch=3)
    assert _epoch_lrs(sched, 8) == pytest.approx([1, 1, 1, 1, 0.1, 0.1, 0.01, 0.01])


def test_step_decay_every_step_size_epochs_and_explicit_milestones() -> None:
    sched = SCHEDULERS.create("step", _opt(1.0), epochs=8, steps_per_epoch=3, step_size=3, gamma=0.5)
    assert _epoch_lrs(sched, 8) == pytest.approx([1, 1, 1, 0.5, 0.5, 0.5, 0.25, 0.25])
    sched = SCHEDULERS.create("step", _opt(1.0), epochs=8, steps_per_epoch=3, milestones=[2, 5], gamma=0.5)
    assert _epoch_lrs(sched, 6) == pytest.approx([1, 1, 0.5, 0.5, 0.5, 0.25])
    with pytest.raises(UsageError, match="mix fractions"):
        SCHEDULERS.create("step", _opt(), epochs=8, steps_per_epoch=3, milestones=[0.5, 6])
    with pytest.raises(UsageError, match="not both"):
        SCHEDULERS.create("step", _opt(), epochs=8, steps_per_epoch=3, step_size=2, milestones=[3])


def test_onecycle_endpoints() -> None:
    # T = 20, pct_start 0.3: starts at max/25, peaks at batch 5 (0.3 * 20 - 1), ends at max / (25 * 1e4)
    opt = _opt(0.1)
    sched = SCHEDULERS.create("onecycle", opt, epochs=4, steps_per_epoch=5)
    lrs = _batch_lrs(sched, 21)
    assert lrs[0] == pytest.approx(0.1 / 25)
    assert max(lrs) == pytest.approx(0.1) and lrs.index(max(lrs)) == 5
    assert lrs[19] == pytest.approx(0.1 / 25 / 1e4)
    assert lrs[20] == pytest.approx(lrs[19])  # an extra batch keeps the final rate instead of failing
    assert all(a <= b for a, b in zip(lrs[:5], lrs[1:6], strict=True))
    assert all(a >= b for a, b in zip(lrs[5:19], lrs[6:20], strict=True))


def test_onecycle_cycles_momentum_inversely() -> None:
    opt = _opt(0.1)
    sched = SCHEDULERS.create("onecycle", opt, epochs=2, steps_per_epoch=5)
    assert opt.param_groups[0]["momentum"] == pytest.approx(0.95)
    _batch_lrs(sched, 2)  # at the peak (batch 2 of 10) momentum is at its base 0.85
    assert opt.param_groups[0]["momentum"] == pytest.approx(0.85)


def test_plateau_reduces_after_patience_in_max_and_min_mode() -> None:
    sched = SCHEDULERS.create("plateau", _opt(1.0), epochs=6, steps_per_epoch=3, patience=1, factor=0.5)
    # best 0.5, 0.6 improves, 0.6 once (1 bad epoch = patience), 0.6 again (2 > 1): halve before epoch 5
    assert _epoch_lrs(sched, 6, [0.5, 0.6, 0.6, 0.6, 0.7, 0.7]) == pytest.approx([1, 1, 1, 1, 0.5, 0.5])
    sched = SCHEDULERS.create("plateau", _opt(1.0), epochs=5, steps_per_epoch=3, patience=0, mode="min")
    assert _epoch_lrs(sched, 5, [1.0, 0.8, 0.9, 0.7, 0.7]) == pytest.approx([1, 1, 1, 0.1, 0.1])


def test_plateau_without_metric_leaves_the_rate() -> None:
    sched = SCHEDULERS.create("plateau", _opt(1.0), epochs=3, steps_per_epoch=3, patience=0)
    assert _epoch_lrs(sched, 3) == [1.0, 1.0, 1.0]
    with pytest.raises(UsageError, match="mode"):
        SCHEDULERS.create("plateau", _opt(), epochs=3, steps_per_epoch=3, mode="up")


@pytest.mark.parametrize(
    ("name", "kw"),
    [
        ("cosine", {"warmup_steps": 3}),
        ("onecycle", {}),
        ("step", {"milestones": [2, 4]}),
        ("plateau", {"patience": 0}),
        ("none", {}),
    ],
)
def test_state_dict_round_trip_continues_the_same_schedule(name: str, kw: dict) -> None:
    metrics = [0.5, 0.4, 0.6, 0.6, 0.3, 0.2]

    def run(sched: Schedule, epochs: range) -> list[float]:
        lrs = []
        for e in epochs:
            for _ in range(4):
                lrs.append(sched.get_last_lr()[0])
                sched.optimizer.step()
                sched.step_batch()
            sched.step_epoch(metrics[e])
        return lrs

    straight = SCHEDULERS.create(name, _opt(0.2, "adam"), epochs=6, steps_per_epoch=4, **kw)
    reference = run(straight, range(6))

    first = SCHEDULERS.create(name, _opt(0.2, "adam"), epochs=6, steps_per_epoch=4, **kw)
    head = run(first, range(3))
    saved_opt, saved_sched = first.optimizer.state_dict(), first.state_dict()
    resumed = SCHEDULERS.create(name, _opt(0.2, "adam"), epochs=6, steps_per_epoch=4, **kw)
    resumed.optimizer.load_state_dict(saved_opt)
    resumed.load_state_dict(saved_sched)
    tail = run(resumed, range(3, 6))
    assert head + tail == pytest.approx(reference)
    assert resumed.state_dict()["batches"] == 24 and resumed.state_dict()["epochs"] == 6
    if name != "none":
        assert len(set(round(v, 9) for v in reference)) > 1  # the schedule did change the rate


def test_loading_another_schedule_kind_is_rejected() -> None:
    cosine = SCHEDULERS.create("cosine", _opt(), epochs=2, steps_per_epoch=2)
    step = SCHEDULERS.create("step", _opt(), epochs=2, steps_per_epoch=2)
    with pytest.raises(UsageError, match="same --scheduler"):
        step.load_state_dict(cosine.state_dict())


def test_unknown_schedule_options_and_sizes_are_usage_errors() -> None:
    with pytest.raises(UsageError, match="does not take warmup"):
        SCHEDULERS.create("step", _opt(), epochs=2, steps_per_epoch=2, warmup=3)
    with pytest.raises(UsageError, match="epochs"):
        SCHEDULERS.create("cosine", _opt(), epochs=0, steps_per_epoch=2)


def test_cli_lists_optimizers_and_schedulers() -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["list", "optimizers"])
    assert result.exit_code == 0, result.stderr
    for name in ("adabelief", "demon_sgd", "yogi"):
        assert name in result.stdout
    result = runner.invoke(app, ["list", "schedulers", "--json"])
    assert result.exit_code == 0
    assert '"onecycle"' in result.stdout and '"plateau"' in result.stdout


@pytest.mark.gpu
def test_demon_adam_on_cuda_matches_cpu() -> None:
    results = []
    for device in ("cpu", "cuda"):
        p = nn.Parameter(torch.tensor([1.0, -2.0], device=device))
        opt = OPTIMIZERS.create("demon_adam", [p], lr=0.01, total_steps=5)
        for _ in range(5):
            opt.zero_grad()
            (p**2).sum().backward()
            opt.step()
        results.append(p.detach().cpu())
    assert torch.allclose(results[0], results[1], atol=1e-6)
