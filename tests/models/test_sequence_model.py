"""Sequence models (``seq/<reader>``): shapes, padding, direction, weights; slice masking and diversity transfer."""

from __future__ import annotations

import pytest
import torch

from medkit.errors import UnknownNameError, UsageError
from medkit.models.sequence import (
    DiversityPool,
    diversity_pairs,
    lengths_of,
    mask_slices,
    transfer_diversity,
)
from medkit.registries import MODELS, SEQ_READERS

READERS = ["gru", "lstm", "transformer"]


def _model(reader: str, **kw: object) -> torch.nn.Module:
    torch.manual_seed(0)
    return MODELS.create(f"seq/{reader}", num_classes=3, in_chans=1, backbone="cnn_small", hidden_size=8, **kw).eval()


def test_readers_are_registered_and_reached_through_models() -> None:
    assert set(SEQ_READERS.names()) >= set(READERS)
    assert MODELS.names("seq/*") == [f"seq/{r}" for r in sorted(SEQ_READERS.names())]
    with pytest.raises(UnknownNameError, match="did you mean 'seq/gru'"):
        MODELS.get("seq/gur")


@pytest.mark.parametrize("reader", READERS)
def test_logits_per_slice_ignore_padding(reader: str) -> None:
    model = _model(reader)
    g = torch.Generator().manual_seed(1)
    series = torch.rand(1, 3, 1, 16, 16, generator=g)
    alone = model(series, torch.ones(1, 3, dtype=torch.bool))
    assert alone.shape == (1, 3, 3)
    padded = torch.cat([series, torch.rand(1, 2, 1, 16, 16, generator=g) * 9], dim=1)
    other = torch.rand(1, 5, 1, 16, 16, generator=g)
    batch = torch.cat([padded, other])
    valid = torch.tensor([[True, True, True, False, False], [True] * 5])
    out = model(batch, valid)
    assert out.shape == (2, 5, 3)
    torch.testing.assert_close(out[0, :3], alone[0], atol=1e-5, rtol=1e-4)
    # a (N, C, H, W) batch is one series of N slices
    torch.testing.assert_close(model(series[0]), alone[0], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("reader", ["gru", "lstm"])
def test_rnn_reads_both_directions_and_its_context_is_causal(reader: str) -> None:
    model = _model(reader)
    g = torch.Generator().manual_seed(2)
    emb = torch.randn(1, 4, model.embed_dim, generator=g)
    later = emb.clone()
    later[0, 3] += 5.0
    a, b = model.read(emb), model.read(later)
    assert not torch.allclose(a.logits[0, 0], b.logits[0, 0])  # slice 0 sees slice 3 (backward direction)
    torch.testing.assert_close(a.context[0, :3], b.context[0, :3])  # the context up to t never sees t + 1
    assert a.context.shape[-1] == model.reader.context_size == 8 and a.hidden.shape[-1] == 16


def test_aux_logits_are_the_encoder_head_on_the_embeddings() -> None:
    model = _model("gru")
    x = torch.rand(2, 3, 1, 16, 16)
    out = model.read(model.embed(x))
    torch.testing.assert_close(out.aux_logits, model.encoder(x.flatten(0, 1)).reshape(2, 3, 3))


def test_weights_reload_whole_or_into_the_encoder(tmp_path) -> None:  # noqa: ANN001
    model = _model("gru", num_layers=2, dropout=0.1)
    path = tmp_path / "seq.pt"
    torch.save(model.state_dict(), path)
    again = MODELS.create("seq/gru", **model.medkit_info["create_kwargs"], weights=str(path)).eval()
    x = torch.rand(1, 4, 1, 16, 16)
    torch.testing.assert_close(again(x), model(x))
    slice_model = MODELS.create("cnn_small", num_classes=3, in_chans=1)
    torch.save(slice_model.state_dict(), tmp_path / "slice.pt")
    seq = MODELS.create("seq/gru", num_classes=3, in_chans=1, backbone="cnn_small", weights=str(tmp_path / "slice.pt"))
    torch.testing.assert_close(seq.encoder.state_dict(), slice_model.state_dict())


def test_bad_options_are_usage_errors() -> None:
    with pytest.raises(UsageError, match="multiple of heads"):
        _model("transformer", reader_kwargs={"heads": 3})
    with pytest.raises(UsageError, match="cannot be 'seq/gru'"):
        MODELS.create("seq/gru", num_classes=2, backbone="seq/gru")
    with pytest.raises(UsageError, match="padding mask"):
        lengths_of(torch.tensor([[True, False, True]]))


def test_mask_slices_replaces_the_drawn_real_slices_by_the_token() -> None:
    emb = torch.arange(2 * 4 * 2, dtype=torch.float32).reshape(2, 4, 2)
    valid = torch.tensor([[True, True, True, True], [True, True, False, False]])
    token = torch.tensor([-1.0, -2.0])
    out, masked = mask_slices(emb, valid, 0.5, token, torch.Generator().manual_seed(1))
    draw = torch.rand((2, 4), generator=torch.Generator().manual_seed(1)) < 0.5
    assert torch.equal(masked, draw & valid)
    assert (
        masked.any() and (~masked & valid).any() and (draw & ~valid).any()
    )  # this seed draws a padded slice too, which stays unmasked
    for b in range(2):
        for t in range(4):
            torch.testing.assert_close(out[b, t], token if masked[b, t] else emb[b, t])
    same, none = mask_slices(emb, valid, 0.0, token, torch.Generator().manual_seed(3))
    assert not none.any() and torch.equal(same, emb)


def test_diversity_pairs_are_adjacent_slices_differing_by_one_finding() -> None:
    target = torch.tensor(
        [
            [[0, 0], [1, 0], [1, 1], [0, 0]],  # 0->1: +label0; 1->2: +label1; 2->3: two labels change
            [[1, 1], [1, 0], [0, 0], [0, 1]],  # 0->1: -label1; 1->2: -label0; 2->3 is padding
        ],
        dtype=torch.float32,
    )
    emb = torch.arange(16, dtype=torch.float32).reshape(2, 4, 2) ** 2 / 10
    valid = torch.tensor([[True] * 4, [True, True, True, False]])
    labels, deltas = diversity_pairs(emb, target, valid)
    assert labels.tolist() == [0, 1, 1, 0]
    expected = torch.stack([emb[0, 1] - emb[0, 0], emb[0, 2] - emb[0, 1], emb[1, 0] - emb[1, 1], emb[1, 1] - emb[1, 2]])
    torch.testing.assert_close(deltas, expected)


def test_transfer_diversity_adds_the_change_and_switches_the_finding_on() -> None:
    emb = torch.zeros(1, 4, 2)
    target = torch.tensor([[[0, 0], [1, 0], [0, 1], [0, 0]]], dtype=torch.float32)
    valid = torch.tensor([[True, True, True, False]])
    labels, deltas = torch.tensor([0, 1]), torch.tensor([[1.0, 2.0], [10.0, 20.0]])
    seed = 5
    g = torch.Generator().manual_seed(seed)
    pick = torch.rand((1, 4), generator=g) < 0.9
    entry = torch.randint(2, (1, 4), generator=g)
    new_emb, new_target, changed = transfer_diversity(
        emb, target, valid, labels, deltas, 0.9, torch.Generator().manual_seed(seed)
    )
    for t in range(4):
        j = int(labels[entry[0, t]])
        should = bool(pick[0, t] and valid[0, t] and target[0, t, j] == 0)
        assert bool(changed[0, t]) == should
        want_emb = deltas[entry[0, t]] if should else torch.zeros(2)
        torch.testing.assert_close(new_emb[0, t], want_emb)
        want_target = target[0, t].clone()
        if should:
            want_target[j] = 1.0
        torch.testing.assert_close(new_target[0, t], want_target)
    assert changed.any() and torch.equal(target[0, 0], torch.tensor([0.0, 0.0]))  # the input is not modified


def test_diversity_pool_keeps_the_newest() -> None:
    pool = DiversityPool(capacity=3)
    pool.add(torch.tensor([0, 1]), torch.ones(2, 2))
    pool.add(torch.tensor([2, 3]), torch.zeros(2, 2))
    assert len(pool) == 3 and pool.labels.tolist() == [1, 2, 3]
