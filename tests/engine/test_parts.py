"""Engine parts: the runtime, stages, the training state, loss capabilities, metric scoring."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from medkit.engine.components import LossCaps, ModelSpec, build_model
from medkit.engine.loop import EpochState
from medkit.engine.runtime import Runtime, loader_workers, resolve_runtime
from medkit.engine.stages import plan_stages, stage_of_epoch
from medkit.engine.state import TrainState, improved
from medkit.errors import UsageError
from medkit.registries import TASKS


def test_runtime_decides_the_device_policy_once() -> None:
    rt = resolve_runtime("cpu", "off", None)
    assert rt.device == torch.device("cpu") and rt.amp_dtype is None
    assert not rt.channels_last and not rt.pin_memory and rt.workers == 0 and rt.grad_scaler() is None
    assert not rt.cudnn_benchmark and rt.loss_every == 1  # on a CPU reading the loss costs nothing
    assert (
        resolve_runtime("cpu", "bf16", 3).amp_dtype == torch.bfloat16 and resolve_runtime("cpu", "off", 3).workers == 3
    )
    assert loader_workers(None, "cpu") == 0 and loader_workers(5, "cpu") == 5
    assert 0 <= loader_workers(None, "cuda") <= 8
    model = Runtime(torch.device("cpu"), channels_last=True).place_model(torch.nn.Conv2d(3, 4, 3))
    assert model.weight.is_contiguous(memory_format=torch.channels_last)
    with Runtime(torch.device("cpu"), amp_dtype=torch.bfloat16).autocast():
        assert torch.ones(2, 2).matmul(torch.ones(2, 2)).dtype == torch.bfloat16


def test_precision_defaults_to_fp32_on_a_cpu_and_can_be_forced() -> None:
    from medkit.device import amp_dtype
    from medkit.errors import MedkitError

    assert resolve_runtime("cpu").amp_dtype is None  # the default, auto: fp32 on a CPU
    assert resolve_runtime("cpu", "on").amp_dtype == torch.bfloat16  # --amp
    assert resolve_runtime("cpu", "bf16").amp_dtype == torch.bfloat16
    assert amp_dtype(torch.device("mps"), "on") == torch.float16
    with pytest.raises(MedkitError, match="fp16 autocast is not supported on the CPU"):
        resolve_runtime("cpu", "fp16")
    with pytest.raises(UsageError, match="unknown precision 'fp8'"):
        amp_dtype(torch.device("cpu"), "fp8")


def test_stages_plan_and_lookup() -> None:
    task = TASKS.create("binary", optimizer="adam", lr=0.01, epochs=5)
    one = plan_stages(task, 5)
    assert [(s.name, s.epochs, s.optimizer, s.lr) for s in one] == [("main", 5, "adam", 0.01)]
    two = plan_stages(task, 5, "sgd", 2, 0.001, {"momentum": 0.9})
    assert [(s.epochs, s.optimizer, s.lr) for s in two] == [(3, "adam", 0.01), (2, "sgd", 0.001)]
    assert two[1].optimizer_kwargs == {"momentum": 0.9}
    assert [stage_of_epoch(two, e) for e in range(6)] == [(0, 0), (0, 0), (0, 0), (1, 3), (1, 3), (1, 3)]
    all_second = plan_stages(task, 2, "sgd", 5)  # the second stage takes every epoch: stage numbers keep meaning
    assert [s.epochs for s in all_second] == [0, 2] and stage_of_epoch(all_second, 0) == (1, 0)
    with pytest.raises(UsageError, match="--stage2-epochs"):
        plan_stages(task, 5, "sgd", 0)


def test_train_state_counts_epochs_and_round_trips_through_a_checkpoint() -> None:
    st = TrainState()
    assert st.end_epoch(float("nan"), True)  # the first epoch is the best even when the metric is undefined
    assert not st.end_epoch(float("nan"), True) and st.bad_epochs == 1
    assert st.end_epoch(0.7, True) and st.best == 0.7 and st.best_epoch == 3 and st.bad_epochs == 0
    assert not st.end_epoch(0.6, True) and st.bad_epochs == 1
    st.progress = EpochState(step=3, loss_sum=1.5, seen=12)
    st.global_step, st.stage = 40, 2
    back = TrainState.from_checkpoint(st.to_checkpoint())
    assert back == st and back.progress.loss == pytest.approx(0.125)
    assert improved(0.2, 0.3, greater=False) and not improved(0.2, 0.3, greater=True)
    assert improved(1.0, math.nan, True) and not improved(math.nan, 1.0, True)


def test_loss_caps_from_flags() -> None:
    caps = LossCaps.from_flags({"needs_indices": True, "ordinal": True})
    assert caps.needs_indices and caps.takes_grades and not caps.needs_model
    model = torch.nn.Linear(1, 1)
    assert caps.extra(torch.arange(2), model).keys() == {"index"}
    assert LossCaps(needs_model=True).extra(None, model) == {"model": model}


def test_model_spec_builds_the_same_model_twice() -> None:
    spec = ModelSpec("cnn_small", {"num_classes": 3, "in_chans": 1})
    torch.manual_seed(0)
    a = build_model(spec)
    torch.manual_seed(0)
    b = build_model(spec)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))
    assert a(torch.zeros(2, 1, 32, 32)).shape == (2, 3)


def test_score_shapes_inputs_by_target_kind() -> None:
    from sklearn.metrics import roc_auc_score

    from medkit.metrics import score

    y = np.array([[0.0], [1.0], [1.0], [0.0]])
    p = np.array([[0.1], [0.8], [0.4], [0.5]])
    assert score("auc", "binary", y, p) == pytest.approx(roc_auc_score(y[:, 0], p[:, 0]))
    assert math.isnan(score("auc", "binary", y[:0], p[:0]))
    # ordinal: the cumulative probabilities sum to the expected grade that QWK cuts at 0.5, 1.5, ...
    grades = np.array([0, 1, 2, 2])
    cum = np.array([[0.1, 0.0], [0.9, 0.2], [0.9, 0.8], [0.95, 0.9]])
    assert score("qwk", "ordinal", grades, cum) == pytest.approx(1.0)


def test_predict_with_embeddings_gives_the_same_probabilities_and_the_pooled_features() -> None:
    from medkit.engine.components import InputTransforms
    from medkit.engine.feed import Batch
    from medkit.engine.predict import predict
    from medkit.target import MULTILABEL

    torch.manual_seed(0)
    model = build_model(ModelSpec("cnn_small", {"num_classes": 2, "in_chans": 1}))
    images = torch.randint(0, 256, (6, 1, 32, 32), dtype=torch.uint8)
    batches = [Batch(images[i : i + 3], torch.zeros(3, 2), torch.arange(i, i + 3)) for i in (0, 3)]
    rt, norm = Runtime(torch.device("cpu")), InputTransforms([0.5], [0.5], 32).eval
    plain = predict(model, batches, rt, MULTILABEL, norm)
    with_emb = predict(model, batches, rt, MULTILABEL, norm, embeddings=True)
    assert plain.embeddings is None
    np.testing.assert_array_equal(plain.probs, with_emb.probs)
    with torch.no_grad():
        want = model.features(norm(images)).numpy()
    assert with_emb.embeddings.shape == (6, model.num_features)
    np.testing.assert_allclose(with_emb.embeddings, want, rtol=1e-6, atol=1e-6)
    with pytest.raises(UsageError, match="cannot give embeddings"):
        predict(
            torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(1024, 2)),
            batches,
            rt,
            MULTILABEL,
            norm,
            embeddings=True,
        )
