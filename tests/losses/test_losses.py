"""LOSSES: every entry against a plain-loop reference on tiny tensors, gradients, flags and state."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from medkit.errors import UsageError
from medkit.losses import auto_pos_weight, ordinal_to_grade, ordinal_to_probs
from medkit.losses._common import FLAG_NAMES
from medkit.registries import LOSSES

B, K = 5, 3


def _sig(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def _data(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, K, generator=g) * 2
    target = (torch.rand(B, K, generator=g) < 0.4).float()
    return logits, target


def _ref_bce(logits: torch.Tensor, target: torch.Tensor, pos_weight: list[float] | None = None) -> float:
    total, n = 0.0, 0
    for i in range(logits.shape[0]):
        for k in range(logits.shape[1]):
            p, y = _sig(float(logits[i, k])), float(target[i, k])
            w = 1.0 if pos_weight is None else pos_weight[k]
            total += -(w * y * math.log(p) + (1 - y) * math.log(1 - p))
            n += 1
    return total / n


class _TinyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(4, 6)
        self.norm = nn.BatchNorm1d(6)
        self.head = nn.Linear(6, K)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.norm(self.body(x))))


# ------------------------------------------------------------------------------------------ registry walk
def _inputs_for(flags: dict) -> tuple[torch.Tensor, torch.Tensor, dict]:
    g = torch.Generator().manual_seed(1)
    batch: dict = {"index": torch.tensor([0, 3, 5, 7, 9]), "unknown_key": "ignored"}
    if flags["multiclass"]:
        return torch.randn(B, K, generator=g), torch.randint(0, K, (B,), generator=g), batch
    if flags["ordinal"]:
        return torch.randn(B, K - 1, generator=g), torch.randint(0, K, (B,), generator=g), batch
    if flags["regression"]:
        return torch.randn(B, 1, generator=g), torch.rand(B, generator=g) * 5, batch
    return torch.randn(B, K, generator=g), (torch.rand(B, K, generator=g) < 0.5).float(), batch


@pytest.mark.parametrize("name", LOSSES.names())
def test_every_loss_builds_runs_and_has_finite_gradients(name: str) -> None:
    entry = LOSSES.get(name)
    assert set(entry.flags) == set(FLAG_NAMES) and entry.description
    kinds = [f for f in ("multilabel", "multiclass", "ordinal", "regression") if entry.flags[f]]
    assert len(kinds) == 1, f"{name} must declare exactly one target kind"
    loss_fn = LOSSES.create(name, label_prevalence=[0.2, 0.5, 0.05], num_examples=10, num_classes=None)
    assert isinstance(loss_fn, nn.Module)
    logits, target, batch = _inputs_for(dict(entry.flags))
    net = nn.Linear(logits.shape[1], logits.shape[1])
    if entry.flags["needs_model"]:
        batch["model"] = net
    x = net(logits)
    value = loss_fn(x, target, **batch)
    assert value.ndim == 0 and torch.isfinite(value)
    value.backward()
    assert net.weight.grad is not None and torch.isfinite(net.weight.grad).all()
    assert net.weight.grad.abs().sum() > 0


# ------------------------------------------------------------------------------------------ bce / wbce
def test_bce_matches_reference_and_accepts_column_shapes() -> None:
    logits, target = _data()
    loss = LOSSES.create("bce")
    assert float(loss(logits, target)) == pytest.approx(_ref_bce(logits, target), rel=1e-6)
    col = logits[:, :1]
    assert float(loss(col, target[:, 0])) == pytest.approx(_ref_bce(col, target[:, :1]), rel=1e-6)
    with pytest.raises(UsageError, match="does not match"):
        loss(logits, target[:, :2])


def test_wbce_auto_pos_weight_from_prevalence() -> None:
    # (1-p)/p: 0.2 -> 4, 0.5 -> 1, 0.001 -> 999 clipped to 100
    assert auto_pos_weight([0.2, 0.5, 0.001]).tolist() == pytest.approx([4.0, 1.0, 100.0])
    assert auto_pos_weight([1.0], max_pos_weight=50)[0].item() == pytest.approx(1 / 50)
    logits, target = _data(2)
    loss = LOSSES.create("wbce", label_prevalence=[0.2, 0.5, 0.001])
    assert float(loss(logits, target)) == pytest.approx(_ref_bce(logits, target, [4.0, 1.0, 100.0]), rel=1e-6)
    explicit = LOSSES.create("wbce", pos_weight=[2.0, 3.0, 0.5])
    assert float(explicit(logits, target)) == pytest.approx(_ref_bce(logits, target, [2.0, 3.0, 0.5]), rel=1e-6)
    assert "pos_weight" in loss.state_dict()


def test_wbce_errors_are_typed_with_hints() -> None:
    with pytest.raises(UsageError, match="label_prevalence") as info:
        LOSSES.create("wbce")
    assert info.value.hint
    logits, target = _data()
    with pytest.raises(UsageError, match="2 values for 3 labels"):
        LOSSES.create("wbce", pos_weight=[1.0, 2.0])(logits, target)
    with pytest.raises(UsageError, match="did you mean 'pos_weight'"):
        LOSSES.create("wbce", pos_weigth=[1.0])


def test_weight_penalties_cover_weights_not_biases_or_norms() -> None:
    torch.manual_seed(0)
    net = _TinyNet()
    x = torch.randn(B, 4)
    target = (torch.rand(B, K) < 0.5).float()
    logits = net(x).detach()
    pw = [1.0, 2.0, 3.0]
    base = float(LOSSES.create("wbce", pos_weight=pw)(logits, target))
    w_all = [net.body.weight.detach(), net.head.weight.detach()]
    l1_all = sum(float(w.abs().sum()) for w in w_all)
    l2_all = sum(float((w**2).sum()) for w in w_all)
    l2_head = float((net.head.weight.detach() ** 2).sum())
    got = LOSSES.create("wbce_l1", lam=1e-2, pos_weight=pw)(logits, target, model=net)
    assert float(got.detach()) == pytest.approx(base + 1e-2 * l1_all, rel=1e-6)
    got = LOSSES.create("wbce_l2", lam=1e-2, pos_weight=pw)(logits, target, model=net)
    assert float(got.detach()) == pytest.approx(base + 1e-2 * l2_all, rel=1e-6)
    got = LOSSES.create("wbce_l2", lam=1e-2, pos_weight=pw, head_only=True)(logits, target, model=net)
    assert float(got.detach()) == pytest.approx(base + 1e-2 * l2_head, rel=1e-6)
    got = LOSSES.create("wbce_elastic", lam=1e-2, l1_ratio=0.25, pos_weight=pw)(logits, target, model=net)
    assert float(got.detach()) == pytest.approx(base + 1e-2 * (0.25 * l1_all + 0.75 * l2_all), rel=1e-6)
    # the penalty alone puts no gradient on biases or the norm's scale
    net.zero_grad()
    LOSSES.create("wbce_l2", lam=1.0, pos_weight=pw)(logits, target, model=net).backward()
    assert net.body.bias.grad is None and net.norm.weight.grad is None
    assert torch.allclose(net.head.weight.grad, 2 * net.head.weight.detach())
    with pytest.raises(UsageError, match="needs model="):
        LOSSES.create("wbce_l1", pos_weight=pw)(logits, target)


def test_head_only_penalty_covers_every_group_head() -> None:
    class GroupNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Linear(4, 6)
            self.head = nn.ModuleList([nn.Linear(6, 2), nn.Linear(6, 1)])

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.body(x)
            return torch.cat([m(h) for m in self.head], dim=1)

    torch.manual_seed(1)
    net = GroupNet()
    logits = net(torch.randn(B, 4)).detach()
    target = (torch.rand(B, K) < 0.5).float()
    base = float(LOSSES.create("wbce", pos_weight=1.0)(logits, target))
    heads = sum(float(m.weight.detach().abs().sum()) for m in net.head)
    got = LOSSES.create("wbce_l1", lam=0.1, pos_weight=1.0, head_only=True)(logits, target, model=net)
    assert float(got.detach()) == pytest.approx(base + 0.1 * heads, rel=1e-6)


# ------------------------------------------------------------------------------------------ focal / asl
def test_focal_matches_loop_and_torchvision() -> None:
    from torchvision.ops import sigmoid_focal_loss

    logits, target = _data(3)
    gamma, alpha = 2.0, 0.25
    total = 0.0
    for i in range(B):
        for k in range(K):
            p, y = _sig(float(logits[i, k])), float(target[i, k])
            p_t = p if y else 1 - p
            a_t = alpha if y else 1 - alpha
            total += -a_t * (1 - p_t) ** gamma * math.log(p_t)
    loss = LOSSES.create("focal")
    assert float(loss(logits, target)) == pytest.approx(total / (B * K), rel=1e-5)
    ref = sigmoid_focal_loss(logits, target, alpha=alpha, gamma=gamma, reduction="mean")
    assert float(loss(logits, target)) == pytest.approx(float(ref), rel=1e-6)
    plain = LOSSES.create("focal", gamma=0.0, alpha=-1)
    assert float(plain(logits, target)) == pytest.approx(_ref_bce(logits, target), rel=1e-6)


def _ref_asl(logits: torch.Tensor, target: torch.Tensor, gp: float, gn: float, m: float, eps: float) -> float:
    total = 0.0
    for i in range(logits.shape[0]):
        for k in range(logits.shape[1]):
            p, y = _sig(float(logits[i, k])), float(target[i, k])
            if y:
                total += -((1 - p) ** gp) * math.log(max(p, eps))
            else:
                p_m = max(p - m, 0.0)
                total += -(p_m**gn) * math.log(max(1 - p_m, eps))
    return total / logits.numel()


def test_asl_matches_loop_reference() -> None:
    logits, target = _data(4)
    loss = LOSSES.create("asl", gamma_pos=1.0, gamma_neg=4.0, clip=0.05)
    assert float(loss(logits, target)) == pytest.approx(_ref_asl(logits, target, 1.0, 4.0, 0.05, 1e-8), rel=1e-5)
    summed = LOSSES.create("asl", gamma_pos=1.0, reduction="sum")(logits, target)
    assert float(summed) == pytest.approx(_ref_asl(logits, target, 1.0, 4.0, 0.05, 1e-8) * B * K, rel=1e-5)
    # an easy negative (p below the margin) contributes exactly nothing
    easy = LOSSES.create("asl", clip=0.05)(torch.tensor([[-5.0]]), torch.tensor([[0.0]]))
    assert float(easy) == 0.0
    plain = LOSSES.create("asl", gamma_pos=0.0, gamma_neg=0.0, clip=0.0)
    assert float(plain(logits, target)) == pytest.approx(_ref_bce(logits, target), rel=1e-5)


def test_asl_detached_focal_weight_changes_gradient_not_value() -> None:
    logits, target = _data(5)
    a = logits.clone().requires_grad_(True)
    b = logits.clone().requires_grad_(True)
    va = LOSSES.create("asl", gamma_pos=1.0)(a, target)
    vb = LOSSES.create("asl", gamma_pos=1.0, disable_torch_grad_focal_loss=True)(b, target)
    assert float(va.detach()) == pytest.approx(float(vb.detach()))
    va.backward()
    vb.backward()
    assert not torch.allclose(a.grad, b.grad)


# ------------------------------------------------------------------------------------------ elr
def test_elr_matches_numpy_reference_over_two_steps_and_resumes() -> None:
    beta, lam, n = 0.7, 3.0, 8
    loss = LOSSES.create("elr", num_examples=n, beta=beta, lam=lam)
    # the paper's update on each label's two-class distribution [p, 1 - p], targets started at zero
    t_pos, t_neg = np.zeros((n, K)), np.zeros((n, K))
    for step in range(2):
        logits, target = _data(10 + step)
        index = torch.tensor([1, 4, 6, 0, 7]) if step == 0 else torch.tensor([4, 2, 1, 3, 5])
        p = np.clip(1 / (1 + np.exp(-logits.numpy().astype(np.float64))), 1e-4, 1 - 1e-4)
        idx = index.numpy()
        t_pos[idx] = beta * t_pos[idx] + (1 - beta) * p
        t_neg[idx] = beta * t_neg[idx] + (1 - beta) * (1 - p)
        reg = np.log(1 - (p * t_pos[idx] + (1 - p) * t_neg[idx])).mean()
        expected = _ref_bce(logits, target) + lam * reg
        assert float(loss(logits, target, index=index).detach()) == pytest.approx(expected, rel=1e-5)
    assert np.allclose(loss.state_dict()["ema"].numpy(), t_pos, atol=1e-6)
    # a fresh loss (not yet sized) restores the EMA from a checkpoint
    resumed = LOSSES.create("elr", num_examples=n, beta=beta, lam=lam)
    resumed.load_state_dict(loss.state_dict())
    assert torch.equal(resumed.ema, loss.ema) and torch.equal(resumed.mass, loss.mass)
    # eval mode: plain BCE, EMA untouched
    resumed.eval()
    logits, target = _data(20)
    assert float(resumed(logits, target, index=torch.arange(5))) == pytest.approx(_ref_bce(logits, target), rel=1e-6)
    assert torch.equal(resumed.ema, loss.ema)


def test_elr_regulariser_pushes_towards_the_current_prediction_not_towards_zero() -> None:
    # Both target components start at zero, so after the first visit T = (1 - beta) [p, 1 - p]: the regulariser
    # moves p away from 0.5 on its own side. A single zero-initialised t (read as "negative") would instead
    # push every probability down.
    logits, target = _data(30)
    x = logits.clone().requires_grad_(True)
    LOSSES.create("elr", num_examples=5, lam=3.0)(x, target, index=torch.arange(5)).backward()
    y = logits.clone().requires_grad_(True)
    LOSSES.create("bce")(y, target).backward()
    reg_grad = x.grad - y.grad
    descent_moves_up = reg_grad < 0
    assert torch.equal(descent_moves_up, torch.sigmoid(logits) > 0.5)


def test_elr_without_gradients_is_plain_bce_and_keeps_its_state() -> None:
    logits, target = _data(21)
    loss = LOSSES.create("elr", num_examples=6, num_classes=K)
    loss(logits, target, index=torch.arange(5))
    before = loss.ema.clone()
    with torch.no_grad():
        value = loss(logits + 1, target)  # evaluation: no index, no update
    assert float(value) == pytest.approx(_ref_bce(logits + 1, target), rel=1e-6)
    assert torch.equal(loss.ema, before) and before.abs().sum() > 0


def test_elr_needs_indices_in_range() -> None:
    logits, target = _data()
    loss = LOSSES.create("elr", num_examples=4, num_classes=K)
    with pytest.raises(UsageError, match="index="):
        loss(logits, target)
    with pytest.raises(UsageError, match="out of range"):
        loss(logits, target, index=torch.arange(5))
    with pytest.raises(UsageError, match="num_examples"):
        LOSSES.create("elr")


# ------------------------------------------------------------------------------------------ ce / ordinal / regression
def test_ce_label_smoothing_matches_loop() -> None:
    logits, _ = _data(6)
    target = torch.tensor([0, 2, 1, 1, 0])
    eps = 0.1
    total = 0.0
    for i in range(B):
        z = [float(v) for v in logits[i]]
        log_norm = math.log(sum(math.exp(v) for v in z))
        for k in range(K):
            q = (1 - eps) * (k == int(target[i])) + eps / K
            total += -q * (z[k] - log_norm)
    loss = LOSSES.create("ce", label_smoothing=eps)
    assert float(loss(logits, target)) == pytest.approx(total / B, rel=1e-6)
    one_hot = torch.nn.functional.one_hot(target, K).float()
    assert float(loss(logits, one_hot)) == pytest.approx(total / B, rel=1e-6)
    with pytest.raises(UsageError, match="out of range"):
        loss(logits, torch.tensor([0, 3, 1, 1, 0]))


def test_ordinal_loss_matches_loop_and_decoding_helpers() -> None:
    g = torch.Generator().manual_seed(7)
    logits = torch.randn(B, 3, generator=g)  # 4 grades
    grade = torch.tensor([0, 3, 1, 2, 2])
    total = 0.0
    for i in range(B):
        for k in range(3):
            p, y = _sig(float(logits[i, k])), float(int(grade[i]) > k)
            total += -(y * math.log(p) + (1 - y) * math.log(1 - p))
    loss = LOSSES.create("ordinal", num_classes=4)
    assert float(loss(logits, grade)) == pytest.approx(total / B, rel=1e-6)
    with pytest.raises(UsageError, match="grades must lie"):
        loss(logits, torch.tensor([0, 4, 1, 2, 2]))
    with pytest.raises(UsageError, match="K-1"):
        LOSSES.create("ordinal", num_classes=5)(logits, grade)
    # grade = thresholds passed (probability > 0.5); the second row's logits cross and are made monotone
    x = torch.tensor([[2.0, -1.0, -3.0], [1.0, 2.0, -1.0]])
    assert ordinal_to_grade(x).tolist() == [1, 2]
    probs = ordinal_to_probs(x)
    s0, s1, s2 = _sig(2.0), _sig(-1.0), _sig(-3.0)
    assert probs[0].tolist() == pytest.approx([1 - s0, s0 - s1, s1 - s2, s2], rel=1e-6)
    assert (probs >= 0).all() and torch.allclose(probs.sum(1), torch.ones(2))
    assert probs[1].tolist() == pytest.approx([1 - _sig(1.0), 0.0, _sig(1.0) - _sig(-1.0), _sig(-1.0)], rel=1e-6)
    assert np.allclose(ordinal_to_probs(x.numpy()), probs.numpy(), atol=1e-6)
    assert ordinal_to_grade(x.numpy()).tolist() == [1, 2]


def test_regression_losses_hand_values() -> None:
    out = torch.tensor([[0.0], [2.0], [4.5]])
    grade = torch.tensor([0.0, 3.0, 2.0])
    # differences 0, -1, 2.5
    assert float(LOSSES.create("mse")(out, grade)) == pytest.approx((0 + 1 + 6.25) / 3)
    # smooth L1 (beta 1): 0, |d| - 0.5 = 0.5, 2.0
    assert float(LOSSES.create("smooth_l1")(out, grade)) == pytest.approx((0 + 0.5 + 2.0) / 3)
    # beta 4: all quadratic, 0.5 d^2 / 4
    assert float(LOSSES.create("smooth_l1", beta=4.0)(out, grade)) == pytest.approx((0 + 0.125 + 0.78125) / 3)


def test_unknown_loss_name_suggests() -> None:
    from medkit.errors import UnknownNameError

    with pytest.raises(UnknownNameError, match="did you mean 'focal'"):
        LOSSES.get("focla")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", LOSSES.names())
def test_loss_on_cuda_under_autocast_matches_cpu(name: str) -> None:
    entry = LOSSES.get(name)
    logits, target, batch = _inputs_for(dict(entry.flags))
    net = nn.Linear(logits.shape[1], logits.shape[1])
    kw = {"label_prevalence": [0.2, 0.5, 0.05], "num_examples": 10}
    cpu = LOSSES.create(name, **kw)
    gpu = LOSSES.create(name, **kw).cuda()
    if entry.flags["needs_model"]:
        batch["model"] = net
    want = float(cpu(logits, target, **batch).detach())
    gpu_batch = {k: (v.cuda() if isinstance(v, (torch.Tensor, nn.Module)) else v) for k, v in batch.items()}
    with torch.autocast("cuda", dtype=torch.bfloat16):
        got = gpu(logits.cuda().bfloat16(), target.cuda(), **gpu_batch)
    assert got.dtype == torch.float32
    assert float(got.detach()) == pytest.approx(want, rel=2e-2, abs=2e-2)


def test_cli_lists_losses_with_flags() -> None:
    import json

    from typer.testing import CliRunner

    from medkit.cli.main import app

    result = CliRunner().invoke(app, ["list", "losses", "--json"])
    assert result.exit_code == 0, result.stderr
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert set(rows) == set(LOSSES.names())
    assert rows["elr"]["flags"]["needs_indices"] is True and rows["wbce_l2"]["flags"]["needs_model"] is True
    assert rows["ordinal"]["flags"]["ordinal"] is True and rows["bce"]["flags"]["needs_model"] is False
