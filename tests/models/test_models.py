"""MODELS: every entry builds and gives logits of the right shape, heads, timm/ prefix, offline error, --weights."""

from __future__ import annotations

import time

import pytest
import torch
from typer.testing import CliRunner

from medkit.cli.main import app
from medkit.errors import DataError, OfflineError, UnknownNameError, UsageError
from medkit.models import BASELINES, CIFAR_RESNETS, CURATED, ordinal_decode
from medkit.registries import MODELS

torch.set_num_threads(1)  # the test machine is shared; tiny models gain nothing from more threads


def _side(name: str) -> int:
    return 75 if name == "inception_v3" else 32  # Inception-v3's stem needs at least 75 px


def _forward(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(x)


@pytest.mark.parametrize("in_chans", [1, 4])
@pytest.mark.parametrize("name", sorted(CURATED))
def test_curated_models_give_logits_for_1_and_4_channels(name: str, in_chans: int) -> None:
    model = MODELS.create(name, num_classes=5, in_chans=in_chans, pretrained=False)
    side = _side(name)
    out = _forward(model, torch.randn(2, in_chans, side, side))
    assert out.shape == (2, 5)
    assert torch.isfinite(out).all()
    info = model.medkit_info
    assert info["name"] == name and info["backbone"] == CURATED[name][0]
    assert info["in_chans"] == in_chans and info["num_outputs"] == 5 and info["heads"] is None


def test_every_entry_is_listed_with_family_and_image_size() -> None:
    names = set(MODELS.names(include_prefixed=False))
    assert names == set(CURATED) | set(BASELINES) | set(CIFAR_RESNETS)
    for name in names:
        entry = MODELS.get(name)
        assert entry.description
        assert entry.flags["family"] and entry.flags["img_size"] >= (28 if name in CIFAR_RESNETS else 64)
    assert MODELS.get("inception_v3").flags["img_size"] == 299
    assert MODELS.get("xception").flags["timm"] == "legacy_xception"


def _stage_sizes(model: torch.nn.Module, side: int, in_chans: int) -> dict[str, tuple[int, int]]:
    """Spatial size of the output of the stem and of every ResNet stage for one input image."""
    sizes: dict[str, tuple[int, int]] = {}
    backbone = model.backbone
    hooks = [
        getattr(backbone, name).register_forward_hook(
            lambda _m, _i, out, name=name: sizes.__setitem__(name, tuple(out.shape[-2:]))
        )
        for name in ("act1", "layer1", "layer2", "layer3", "layer4")
    ]
    _forward(model, torch.randn(1, in_chans, side, side))
    for h in hooks:
        h.remove()
    return sizes


@pytest.mark.parametrize("in_chans", [1, 4])
def test_resnet18_cifar_has_the_medmnist_stem_and_timm_stages(in_chans: int) -> None:
    import timm

    model = MODELS.create("resnet18_cifar", num_classes=2, in_chans=in_chans)
    conv1 = model.backbone.conv1
    assert (conv1.in_channels, conv1.kernel_size, conv1.stride, conv1.padding) == (in_chans, (3, 3), (1, 1), (1, 1))
    assert isinstance(model.backbone.maxpool, torch.nn.Identity)
    # the paper's ResNet-18 (28): the stages see 28, 14, 7, 4 px; timm's ImageNet stem gives 7, 4, 2, 1
    assert _stage_sizes(model, 28, in_chans) == {
        "act1": (28, 28),
        "layer1": (28, 28),
        "layer2": (14, 14),
        "layer3": (7, 7),
        "layer4": (4, 4),
    }
    imagenet = MODELS.create("resnet18", num_classes=2, in_chans=in_chans)
    assert _stage_sizes(imagenet, 28, in_chans)["layer1"] == (7, 7)
    # everything after the stem is timm's resnet18: same parameter names and shapes
    ref = timm.create_model("resnet18", num_classes=0, in_chans=in_chans).state_dict()
    own = {k.removeprefix("backbone."): v.shape for k, v in model.state_dict().items() if k.startswith("backbone.")}
    assert own.keys() == ref.keys()
    assert {k for k in own if own[k] != ref[k].shape} == {"conv1.weight"}
    # blocks start as in the paper's code (no zero-initialised last batch norm)
    assert torch.equal(model.backbone.layer1[0].bn2.weight, torch.ones(64))
    out = _forward(model, torch.randn(3, in_chans, 28, 28))
    assert out.shape == (3, 2) and torch.isfinite(out).all()
    assert model.medkit_info["stem"] == "cifar" and model.medkit_info["backbone"] == "resnet18"


def test_resnet50_cifar_and_cifar_heads_weights_and_rebuild(tmp_path) -> None:  # noqa: ANN001
    model = MODELS.create("resnet50_cifar", num_classes=6, in_chans=3, head="ordinal")
    assert model.backbone.conv1.stride == (1, 1) and isinstance(model.backbone.maxpool, torch.nn.Identity)
    assert _stage_sizes(model, 32, 3)["layer4"] == (4, 4)
    assert _forward(model, torch.randn(2, 3, 32, 32)).shape == (2, 5)

    small = MODELS.create("resnet18_cifar", num_classes=4, in_chans=1, heads={"a": 1, "b": 3})
    path = tmp_path / "w.pth"
    torch.save(small.state_dict(), path)
    again = MODELS.create(small.medkit_info["name"], **small.medkit_info["create_kwargs"], weights=str(path))
    x = torch.randn(2, 1, 28, 28)
    assert torch.equal(_forward(small, x), _forward(again, x))  # the 3x3 stem loads too: nothing re-initialised


@pytest.mark.parametrize("in_chans", [1, 3, 4])
@pytest.mark.parametrize("name", sorted(BASELINES))
def test_baselines_give_logits_at_64_px(name: str, in_chans: int) -> None:
    model = MODELS.create(name, num_classes=3, in_chans=in_chans)
    out = _forward(model, torch.randn(4, in_chans, 64, 64))
    assert out.shape == (4, 3)


@pytest.mark.parametrize("name", sorted(BASELINES))
@pytest.mark.parametrize("hw", [(17, 23), (100, 80), (1, 1)])
def test_baselines_take_any_input_size(name: str, hw: tuple[int, int]) -> None:
    model = MODELS.create(name, num_classes=2, in_chans=1)
    assert _forward(model, torch.randn(2, 1, *hw)).shape == (2, 2)


def test_lstm_rows_reads_one_row_per_time_step() -> None:
    model = MODELS.create("lstm_rows", num_classes=2, in_chans=3, hidden=16)
    seen: list[tuple[int, ...]] = []
    model.backbone.lstm.register_forward_hook(lambda mod, args, out: seen.append(tuple(args[0].shape)))
    _forward(model, torch.randn(2, 3, 40, 64))
    assert seen == [(2, 40, 64 * 3)]  # sequence of H rows, each W*C values
    # the feature is the last hidden state: an image whose last row changes gives different features
    x = torch.randn(1, 3, 40, 64)
    y = x.clone()
    y[:, :, -1] += 1.0
    model.eval()
    with torch.no_grad():
        assert not torch.allclose(model.features(x), model.features(y))


def test_group_heads_concatenate_logits_in_group_order() -> None:
    groups = {"ETT": 3, "NGT": 4, "CVC": 3, "SwanGanz": 1}
    model = MODELS.create("timm/test_resnet", num_classes=11, in_chans=1, heads=groups)
    x = torch.randn(2, 1, 32, 32)
    out = _forward(model, x)
    assert out.shape == (2, 11)
    with torch.no_grad():
        feats = model.features(x)
        parts = [model.head.heads[g](feats) for g in groups]
    assert torch.allclose(out, torch.cat(parts, dim=1))
    assert [p.shape[1] for p in parts] == [3, 4, 3, 1]
    assert model.medkit_info["heads"] == groups and model.medkit_info["num_outputs"] == 11


def test_group_sizes_must_add_up_to_num_classes() -> None:
    with pytest.raises(UsageError, match="num_classes=10"):
        MODELS.create("cnn_small", num_classes=10, heads={"ETT": 3, "NGT": 4, "CVC": 3, "SwanGanz": 1})
    with pytest.raises(UsageError):
        MODELS.create("cnn_small", num_classes=3, heads={"a": 3, "b": 0})


def test_ordinal_head_gives_k_minus_1_rank_consistent_logits() -> None:
    model = MODELS.create("cnn_small", num_classes=6, in_chans=3, head="ordinal")
    x = torch.randn(5, 3, 32, 32)
    out = _forward(model, x)
    assert out.shape == (5, 5)
    assert model.medkit_info["num_outputs"] == 5 and model.medkit_info["head"] == "ordinal"
    # one shared weight: every sample's logits differ from column to column by the same bias differences
    diffs = out[:, 1:] - out[:, :-1]
    expected = (model.head.bias[1:] - model.head.bias[:-1]).detach()
    assert torch.allclose(diffs, expected.expand_as(diffs), atol=1e-6)
    assert list(model.head.fc.weight.shape) == [1, model.num_features]


def test_ordinal_decode_counts_positive_cumulative_logits() -> None:
    logits = torch.tensor([[2.0, 1.0, -1.0, -3.0], [-0.5, -1.0, -2.0, -4.0], [3.0, 2.0, 1.0, 0.5]])
    assert ordinal_decode(logits).tolist() == [2, 0, 4]


def test_ordinal_head_rejects_one_grade_and_groups() -> None:
    with pytest.raises(UsageError, match="at least 2 grades"):
        MODELS.create("mlp", num_classes=1, head="ordinal")
    with pytest.raises(UsageError, match="ordinal"):
        MODELS.create("mlp", num_classes=3, head="ordinal", heads={"a": 3})


def test_drop_rate_drops_in_training_only() -> None:
    torch.manual_seed(0)
    model = MODELS.create("mlp", num_classes=4, in_chans=1, drop_rate=0.5, hidden=(32,))
    x = torch.randn(3, 1, 64, 64)
    model.train()
    assert not torch.allclose(model(x), model(x))
    model.eval()
    assert torch.allclose(model(x), model(x))
    assert model.medkit_info["drop_rate"] == 0.5


def test_bad_sizes_are_usage_errors() -> None:
    with pytest.raises(UsageError, match="num_classes"):
        MODELS.create("cnn_small", num_classes=0)
    with pytest.raises(UsageError, match="in_chans"):
        MODELS.create("cnn_small", num_classes=2, in_chans=0)
    with pytest.raises(UsageError, match="does not take|unexpected"):
        MODELS.create("cnn_small", num_classes=2, no_such_option=3)


def test_timm_prefix_builds_any_timm_model_and_lists_them() -> None:
    model = MODELS.create("timm/test_efficientnet", num_classes=3, in_chans=4)
    assert _forward(model, torch.randn(1, 4, 32, 32)).shape == (1, 3)
    assert model.medkit_info["name"] == "timm/test_efficientnet"
    assert "timm/test_resnet" in MODELS.names("timm/test_res*")
    with pytest.raises(UnknownNameError, match="did you mean 'timm/test_resnet'"):
        MODELS.get("timm/test_resnett")


def test_medkit_info_rebuilds_the_same_model() -> None:
    model = MODELS.create("timm/test_resnet", num_classes=4, in_chans=1, heads={"a": 1, "b": 3}, drop_rate=0.1)
    info = model.medkit_info
    again = MODELS.create(info["name"], **info["create_kwargs"])
    again.load_state_dict(model.state_dict())  # strict: same architecture and head layout
    x = torch.randn(2, 1, 32, 32)
    assert torch.equal(_forward(model, x), _forward(again, x))


# ---------------------------------------------------------------------------------------------------- pretrained
@pytest.fixture
def hub_offline(monkeypatch: pytest.MonkeyPatch, tmp_path):  # noqa: ANN201
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))  # an empty cache
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return constants


def test_pretrained_without_network_is_an_offline_error(hub_offline) -> None:  # noqa: ANN001
    start = time.monotonic()
    with pytest.raises(OfflineError) as caught:
        MODELS.create("timm/test_resnet", num_classes=2, pretrained=True)
    assert time.monotonic() - start < 30  # no minute of retries
    err = caught.value
    assert "pretrained weights for timm/test_resnet could not be downloaded: no network" in err.message
    assert "--weights FILE" in err.hint and "~/.cache/huggingface" in err.hint
    assert err.exit_code == 2


def test_unreachable_hub_uses_the_cache_only_and_restores_the_flag(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:  # noqa: ANN001
    from huggingface_hub import constants

    from medkit.models import _build

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(_build, "_hub_reachable", lambda host, timeout=3.0: False)
    with pytest.raises(OfflineError, match="no network"):
        MODELS.create("resnet18", num_classes=2, pretrained=True)
    assert constants.HF_HUB_OFFLINE is False


def test_pretrained_baseline_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="no pretrained weights"):
        MODELS.create("cnn_small", num_classes=2, pretrained=True)


# ---------------------------------------------------------------------------------------------------- weights
def test_weights_file_round_trip_gives_equal_outputs(tmp_path) -> None:  # noqa: ANN001
    torch.manual_seed(1)
    model = MODELS.create("timm/test_resnet", num_classes=3, in_chans=3)
    path = tmp_path / "w.pth"
    torch.save({"model": model.state_dict(), "epoch": 3}, path)  # a checkpoint dict nests the state dict
    torch.manual_seed(2)
    other = MODELS.create("timm/test_resnet", num_classes=3, in_chans=3, weights=str(path))
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(_forward(model, x), _forward(other, x))
    assert other.medkit_info["weights"] == str(path)


def test_safetensors_weights_with_ddp_prefix(tmp_path) -> None:  # noqa: ANN001
    from safetensors.torch import save_file

    model = MODELS.create("cnn_small", num_classes=2, in_chans=1)
    model.eval()
    path = tmp_path / "w.safetensors"
    save_file({f"module.{k}": v.contiguous() for k, v in model.state_dict().items()}, str(path))
    other = MODELS.create("cnn_small", num_classes=2, in_chans=1, weights=path)
    x = torch.randn(2, 1, 64, 64)
    assert torch.equal(_forward(model, x), _forward(other, x))


@pytest.mark.parametrize("in_chans", [1, 4])
def test_timm_state_dict_adapts_the_first_conv(tmp_path, in_chans: int) -> None:  # noqa: ANN001
    import timm

    source = timm.create_model("test_resnet", num_classes=1000)  # a bare timm state dict with its classifier
    path = tmp_path / "timm.pth"
    torch.save(source.state_dict(), path)
    model = MODELS.create("timm/test_resnet", num_classes=2, in_chans=in_chans, weights=str(path))
    from medkit.models import load_weights

    report = load_weights(model, path)
    w3 = source.state_dict()["conv1.0.weight"]
    got = model.state_dict()["backbone.conv1.0.weight"]
    # grayscale: the three RGB filters summed; 4 channels: RGB repeated, scaled by 3/4 to keep the activation level
    expected = w3.sum(dim=1, keepdim=True) if in_chans == 1 else w3[:, [0, 1, 2, 0]] * (3 / 4)
    assert torch.allclose(got, expected, atol=1e-6)
    assert report["adapted"] == ["backbone.conv1.0.weight"]
    assert any(k.startswith("fc.") for k in report["unexpected"])
    assert set(report["missing"]) == {k for k in model.state_dict() if k.startswith("head.")}
    layer = "backbone.layer1.0.conv1.weight"
    assert torch.equal(model.state_dict()[layer], source.state_dict()[layer.removeprefix("backbone.")])


def test_weights_errors_name_the_file(tmp_path) -> None:  # noqa: ANN001
    with pytest.raises(DataError, match="does not exist"):
        MODELS.create("cnn_small", num_classes=2, weights=str(tmp_path / "missing.pth"))
    unrelated = tmp_path / "unrelated.pth"
    torch.save({"encoder.weight": torch.zeros(3, 3)}, unrelated)
    with pytest.raises(DataError, match="matched none") as caught:
        MODELS.create("cnn_small", num_classes=2, weights=str(unrelated))
    assert str(unrelated) in caught.value.message
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"not a torch file")
    with pytest.raises(DataError, match="could not be read"):
        MODELS.create("cnn_small", num_classes=2, weights=str(broken))
    assert broken.read_bytes() == b"not a torch file"  # input never modified


def test_cli_lists_models_and_timm_names() -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["list", "models"])
    assert result.exit_code == 0, result.stderr
    for name in ("efficientnet_b0", "xception", "cnn_small", "lstm_rows", "mlp"):
        assert name in result.stdout
    result = runner.invoke(app, ["list", "models", "timm/test_res*", "--json"])
    assert result.exit_code == 0
    assert '"timm/test_resnet"' in result.stdout


def test_training_checkpoint_with_numpy_state_loads_but_code_never_runs(tmp_path) -> None:  # noqa: ANN001
    import numpy as np

    model = MODELS.create("cnn_small", num_classes=2, in_chans=1)
    ckpt = tmp_path / "last.pt"
    rng_state = np.random.default_rng(0).bit_generator.state
    torch.save({"model": model.state_dict(), "rng": {"numpy": np.random.get_state(), "gen": rng_state}}, ckpt)
    other = MODELS.create("cnn_small", num_classes=2, in_chans=1, weights=str(ckpt))
    x = torch.randn(2, 1, 64, 64)
    assert torch.equal(_forward(model, x), _forward(other, x))
    unsafe = tmp_path / "unsafe.pt"
    torch.save({"model": model.state_dict(), "hook": print}, unsafe)  # a global outside numpy data: refused
    with pytest.raises(DataError, match="could not be read"):
        MODELS.create("cnn_small", num_classes=2, in_chans=1, weights=str(unsafe))


def test_listing_the_registries_does_not_import_torch() -> None:
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from medkit.registries import MODELS, OPTIMIZERS, SCHEDULERS\n"
        "MODELS.names(); OPTIMIZERS.names(); SCHEDULERS.names(); MODELS.get('resnet18')\n"
        "print('torch' in sys.modules, 'timm' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["False", "False"]


@pytest.mark.gpu
def test_models_run_on_cuda_with_bf16_autocast() -> None:
    for name in ("efficientnet_b0", "cnn_small", "lstm_rows"):
        model = MODELS.create(name, num_classes=3, in_chans=4).cuda().eval()
        x = torch.randn(2, 4, 64, 64, device="cuda")
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
            out = model(x)
        assert out.shape == (2, 3) and out.device.type == "cuda" and torch.isfinite(out.float()).all()
