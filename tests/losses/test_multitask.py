"""LOSS_TERMS: every sequence loss term against a plain-loop reference on small tensors; weights and names."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from medkit.errors import UnknownNameError, UsageError
from medkit.losses.multitask import MultitaskLoss, build_terms, parse_term_weights
from medkit.registries import LOSS_TERMS

B, T, L, D, H = 2, 4, 3, 5, 6


def _sig(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def _out(seed: int = 0) -> tuple[SimpleNamespace, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = SimpleNamespace(
        logits=torch.randn(B, T, L, generator=g) * 2,
        aux_logits=torch.randn(B, T, L, generator=g) * 2,
        hidden=torch.randn(B, T, H, generator=g),
        context=torch.randn(B, T, H, generator=g),
        embeddings=torch.randn(B, T, D, generator=g),
    )
    target = (torch.rand(B, T, L, generator=g) < 0.4).float()
    valid = torch.tensor([[True, True, True, True], [True, True, True, False]])
    return out, target, valid


def _ref_asl(logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> float:
    """ASL with medkit's defaults (gamma_pos 0, gamma_neg 4, clip 0.05), mean over real slices and labels."""
    total, n = 0.0, 0
    for b in range(logits.shape[0]):
        for t in range(logits.shape[1]):
            if not valid[b, t]:
                continue
            for j in range(logits.shape[2]):
                p, y = _sig(float(logits[b, t, j])), float(target[b, t, j])
                if y:
                    total += -math.log(max(p, 1e-8))
                else:
                    pm = max(p - 0.05, 0.0)
                    total += -(pm**4) * math.log(max(1 - pm, 1e-8))
                n += 1
    return total / n


def _term(name: str, **kw: object) -> torch.nn.Module:
    sizes = {"num_labels": L, "embed_dim": D, "hidden_size": H, "context_size": H}
    return LOSS_TERMS.create(name, **{**sizes, **kw})


def test_builtin_terms_are_registered_with_descriptions() -> None:
    assert set(LOSS_TERMS.names()) >= {"main", "aux", "count", "embed", "cpc"}
    assert all(LOSS_TERMS.get(n).description for n in ("main", "aux", "count", "embed", "cpc"))


@pytest.mark.parametrize(("name", "field"), [("main", "logits"), ("aux", "aux_logits")])
def test_main_and_aux_are_asl_over_the_real_slices(name: str, field: str) -> None:
    out, target, valid = _out()
    value = _term(name)(out, target, valid)
    assert value.item() == pytest.approx(_ref_asl(getattr(out, field), target, valid), rel=1e-5)
    # the padded slice never counts
    getattr(out, field)[1, 3] = 50.0
    assert _term(name)(out, target, valid).item() == pytest.approx(value.item(), rel=1e-6)


def test_main_takes_another_multilabel_loss_and_refuses_a_multiclass_one() -> None:
    out, target, valid = _out()
    value = _term("main", loss="bce")(out, target, valid).item()
    x, y = out.logits[valid].numpy().ravel(), target[valid].numpy().ravel()
    ref = np.mean([-(yi * math.log(_sig(xi)) + (1 - yi) * math.log(1 - _sig(xi))) for xi, yi in zip(x, y, strict=True)])
    assert value == pytest.approx(ref, rel=1e-5)
    with pytest.raises(UsageError, match="not a multi-label loss"):
        _term("main", loss="ce")


def test_count_is_cross_entropy_over_the_number_of_positive_labels() -> None:
    out, target, valid = _out(1)
    term = _term("count")
    w, bias = term.head.weight.detach().numpy(), term.head.bias.detach().numpy()
    total, n = 0.0, 0
    for b in range(B):
        for t in range(T):
            if not valid[b, t]:
                continue
            z = w @ out.hidden[b, t].numpy() + bias  # L + 1 classes: 0..L positives
            k = int(target[b, t].sum())
            total += -(z[k] - math.log(np.exp(z).sum()))
            n += 1
    assert term(out, target, valid).item() == pytest.approx(total / n, rel=1e-5)


def test_count_by_hand() -> None:
    term = _term("count", num_labels=2, hidden_size=1)
    with torch.no_grad():
        term.head.weight.copy_(torch.tensor([[0.0], [1.0], [2.0]]))
        term.head.bias.zero_()
    out = SimpleNamespace(hidden=torch.tensor([[[1.0]]]))
    target = torch.tensor([[[1.0, 1.0]]])  # 2 positives: logits (0, 1, 2), class 2
    expected = -(2 - math.log(1 + math.e + math.e**2))
    assert term(out, target, torch.tensor([[True]])).item() == pytest.approx(expected, rel=1e-6)


def test_embed_is_bce_of_distance_logits_to_label_embeddings() -> None:
    out, target, valid = _out(2)
    term = _term("embed")
    e, bias, scale = term.embeddings.detach().numpy(), term.bias.detach().numpy(), term.scale
    assert scale == pytest.approx(1 / H)
    total, n = 0.0, 0
    for b in range(B):
        for t in range(T):
            if not valid[b, t]:
                continue
            for j in range(L):
                z = bias[j] - scale * float(((out.hidden[b, t].numpy() - e[j]) ** 2).sum())
                y = float(target[b, t, j])
                total += -(y * math.log(_sig(z)) + (1 - y) * math.log(1 - _sig(z)))
                n += 1
    assert term(out, target, valid).item() == pytest.approx(total / n, rel=1e-5)


def test_embed_by_hand() -> None:
    term = _term("embed", num_labels=1, hidden_size=2, scale=1.0)
    with torch.no_grad():
        term.embeddings.copy_(torch.tensor([[1.0, 0.0]]))
        term.bias.fill_(2.0)
    out = SimpleNamespace(hidden=torch.tensor([[[0.0, 1.0]]]))  # distance^2 = 2: logit 0, p = 0.5
    assert term(out, torch.tensor([[[1.0]]]), torch.tensor([[True]])).item() == pytest.approx(math.log(2), rel=1e-6)


def _ref_cpc(term: torch.nn.Module, out: SimpleNamespace, valid: torch.Tensor) -> float:
    total, n = 0.0, 0
    z = out.embeddings.numpy()
    for k, pred in enumerate(term.predictors, start=1):
        w = pred.weight.detach().numpy()
        for b in range(B):
            real = [s for s in range(T) if valid[b, s]]
            for t in real:
                if t + k not in real:
                    continue
                p = w @ out.context[b, t].numpy()
                p = p / np.linalg.norm(p)
                sims = {s: float(p @ (z[b, s] / np.linalg.norm(z[b, s]))) / term.temperature for s in real}
                log_norm = math.log(sum(math.exp(v) for v in sims.values()))
                total += -(sims[t + k] - log_norm)
                n += 1
    return total / n


@pytest.mark.parametrize("steps", [1, 2])
def test_cpc_is_infonce_over_future_slices_of_the_same_series(steps: int) -> None:
    out, target, valid = _out(3)
    term = _term("cpc", steps=steps, temperature=0.5)
    assert term(out, target, valid).item() == pytest.approx(_ref_cpc(term, out, valid), rel=1e-5)
    # other series and padded slices are not candidates
    out.embeddings[1, 3] = 100.0
    assert term(out, target, valid).item() == pytest.approx(_ref_cpc(term, out, valid), rel=1e-5)


def test_cpc_by_hand_two_slices() -> None:
    term = _term("cpc", context_size=2, embed_dim=2, temperature=1.0)
    with torch.no_grad():
        term.predictors[0].weight.copy_(torch.eye(2))
    out = SimpleNamespace(
        context=torch.tensor([[[1.0, 0.0], [0.0, 1.0]]]), embeddings=torch.tensor([[[0.0, 1.0], [1.0, 0.0]]])
    )
    # anchor t=0 predicts (1, 0): cosine 0 with slice 0, 1 with slice 1 (the goal)
    expected = -(1 - math.log(math.exp(0) + math.exp(1)))
    assert term(out, None, torch.tensor([[True, True]])).item() == pytest.approx(expected, rel=1e-6)
    # a single slice has no future: the term is 0 and keeps the graph
    out.context.requires_grad_(True)
    single = term(out, None, torch.tensor([[True, False]]))
    assert single.item() == 0.0 and single.requires_grad


def test_multitask_sum_is_weighted_and_zero_weights_are_skipped() -> None:
    out, target, valid = _out(4)
    weights = {"main": 1.0, "count": 0.5, "embed": 0.0}
    loss = build_terms(weights, num_labels=L, embed_dim=D, hidden_size=H, context_size=H)
    total, parts = loss(out, target, valid)
    assert set(parts) == {"main", "count"}
    expected = loss.terms["main"](out, target, valid) + 0.5 * loss.terms["count"](out, target, valid)
    assert total.item() == pytest.approx(expected.item(), rel=1e-6)
    with pytest.raises(UsageError, match="weight 0"):
        MultitaskLoss(loss.terms, {"main": 0.0, "count": 0.0, "embed": 0.0})(out, target, valid)


def test_term_weights_parse_and_check_names() -> None:
    assert parse_term_weights(["aux=0.5", "cpc = 0.1"]) == {"aux": 0.5, "cpc": 0.1}
    assert parse_term_weights({"count": 1}) == {"count": 1.0}
    with pytest.raises(UnknownNameError, match="did you mean 'count'"):
        parse_term_weights(["cuont=1"])
    with pytest.raises(UsageError, match="NAME=WEIGHT"):
        parse_term_weights(["aux"])
    with pytest.raises(UsageError, match=">= 0"):
        parse_term_weights(["aux=-1"])
    with pytest.raises(UsageError, match="unknown option"):
        _term("cpc", stepz=2)


def test_terms_train_their_parameters() -> None:
    out, target, valid = _out(5)
    loss = build_terms(
        {"count": 1.0, "embed": 1.0, "cpc": 1.0}, num_labels=L, embed_dim=D, hidden_size=H, context_size=H
    )
    out.context.requires_grad_(True)
    total, _ = loss(out, target, valid)
    total.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in loss.parameters())
    assert out.context.grad.abs().sum() > 0
