"""The Registry mechanism: registration, lookup, create(), wildcards, prefixes, suggestions, plugins."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

from medkit.errors import MedkitError, UnknownNameError
from medkit.registry import Registry


def make_registry() -> Registry:
    reg: Registry = Registry("widgets", "widget")

    @reg.register("focal", description="focal widget", multilabel=True)
    def focal(gamma: float = 2.0, alpha: float = 0.25) -> dict:
        return {"gamma": gamma, "alpha": alpha}

    @reg.register("bce", aliases=("binary_ce",))
    def bce(weight: float = 1.0) -> dict:
        """Binary cross-entropy widget.

        More text that `medkit list` does not show.
        """
        return {"weight": weight}

    return reg


def test_register_get_and_metadata() -> None:
    reg = make_registry()
    entry = reg.get("focal")
    assert entry.description == "focal widget"
    assert entry.flags == {"multilabel": True}
    assert entry.source == "builtin"
    # The description defaults to the first docstring line.
    assert reg.get("bce").description == "Binary cross-entropy widget."
    assert reg.get("binary_ce").factory is reg.get("bce").factory
    assert "focal" in reg and "nope" not in reg


def test_create_drops_none_arguments() -> None:
    reg = make_registry()
    assert reg.create("focal", gamma=None, alpha=0.5) == {"gamma": 2.0, "alpha": 0.5}
    assert reg.create("focal", gamma=1.0) == {"gamma": 1.0, "alpha": 0.25}


def test_duplicate_name_raises() -> None:
    reg = make_registry()
    with pytest.raises(MedkitError, match="registered twice"):
        reg.register("focal", lambda: None)


def test_names_with_wildcards_sorted() -> None:
    reg = make_registry()
    assert reg.names() == ["bce", "binary_ce", "focal"]
    assert reg.names("b*") == ["bce", "binary_ce"]
    assert reg.names("*cal") == ["focal"]
    assert reg.names("zzz*") == []


def test_unknown_name_suggests_the_closest() -> None:
    reg = make_registry()
    with pytest.raises(UnknownNameError) as info:
        reg.get("focla")
    assert str(info.value).splitlines()[0] == "unknown widget 'focla' (did you mean 'focal'?)"
    assert "medkit list widgets" in (info.value.hint or "")
    with pytest.raises(UnknownNameError) as info:
        reg.get("qqqqqqq")
    assert "did you mean" not in info.value.message


def test_prefix_delegation() -> None:
    reg = make_registry()
    library = {"resnet18": lambda **kw: ("resnet18", kw), "resnet34": lambda **kw: ("resnet34", kw)}

    def resolve(rest: str):
        return library[rest]

    reg.add_prefix("lib", resolve, lambda pat: sorted(n for n in library if __import__("fnmatch").fnmatch(n, pat)))
    assert reg.create("lib/resnet34", depth=None, width=2) == ("resnet34", {"width": 2})
    assert reg.names("lib/*") == ["lib/resnet18", "lib/resnet34"]
    assert reg.names("lib/resnet1*") == ["lib/resnet18"]
    # Plain listing does not enumerate the delegated library.
    assert "lib/resnet18" not in reg.names()
    with pytest.raises(UnknownNameError, match=r"did you mean 'lib/resnet18'"):
        reg.get("lib/resnet81")


def test_builtin_modules_are_imported_lazily(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pkg = tmp_path / "lazy_widgets_mod.py"
    pkg.write_text(
        textwrap.dedent(
            """
            from tests_registry_target import REG

            @REG.register("late")
            def late():
                '''Registered on first lookup.'''
                return 42
            """
        )
    )
    target = tmp_path / "tests_registry_target.py"
    target.write_text(
        "from medkit.registry import Registry\nREG = Registry('lazies', 'lazy', builtins=['lazy_widgets_mod'])\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    import tests_registry_target as t

    assert "lazy_widgets_mod" not in sys.modules
    assert t.REG.create("late") == 42
    assert "lazy_widgets_mod" in sys.modules


def write_plugin(tmp_path: Path, group: str, entries: dict[str, str], module_src: str) -> None:
    """A minimal installed distribution: a module plus a .dist-info with entry_points.txt."""
    (tmp_path / "medkit_fake_plugin.py").write_text(textwrap.dedent(module_src))
    info = tmp_path / "medkit_fake_plugin-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: medkit-fake-plugin\nVersion: 1.0\n")
    lines = [f"[{group}]"] + [f"{k} = {v}" for k, v in entries.items()]
    (info / "entry_points.txt").write_text("\n".join(lines) + "\n")


PLUGIN_SRC = """
def fancy(scale=1.0):
    '''A fancy widget from a plugin.'''
    return ("fancy", scale)

def shadow():
    '''Tries to replace a built-in.'''
    return "shadow"

def broken():
    return "never"

import_count = 0
"""


def test_entry_point_plugins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_plugin(
        tmp_path,
        "medkit.widgets",
        {"fancy": "medkit_fake_plugin:fancy", "bce": "medkit_fake_plugin:shadow", "gone": "no_such_module:thing"},
        PLUGIN_SRC,
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv("MEDKIT_DISABLE_PLUGINS", raising=False)
    sys.modules.pop("medkit_fake_plugin", None)
    reg = make_registry()
    # Listed without importing the plugin module.
    assert "fancy" in reg.names()
    assert "medkit_fake_plugin" not in sys.modules
    entry = reg.get("fancy")
    assert entry.source == "medkit-fake-plugin"
    assert entry.description == "A fancy widget from a plugin."
    assert reg.create("fancy", scale=3.0) == ("fancy", 3.0)
    # A plugin never shadows a built-in.
    assert reg.create("bce") == {"weight": 1.0}
    statuses = {name: status for name, _target, status in reg.plugins()}
    assert statuses["bce"] == "ignored: shadows a built-in"
    # A broken plugin gives a clear error, not a crash.
    with pytest.raises(MedkitError, match="plugin widget 'gone'"):
        reg.get("gone")
    assert {name: status for name, _t, status in reg.plugins()}["gone"].startswith("broken:")


def test_plugins_can_be_disabled(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_plugin(tmp_path, "medkit.widgets", {"fancy": "medkit_fake_plugin:fancy"}, PLUGIN_SRC)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("MEDKIT_DISABLE_PLUGINS", "1")
    reg = make_registry()
    assert "fancy" not in reg.names()
    with pytest.raises(UnknownNameError):
        reg.get("fancy")


def test_project_registries_have_the_documented_kinds() -> None:
    from medkit.registries import ALL, by_kind

    assert list(ALL) == [
        "models",
        "losses",
        "optimizers",
        "schedulers",
        "metrics",
        "tasks",
        "competitions",
        "readers",
        "seq_readers",
        "loss_terms",
        "loggers",
        "pretrainers",
    ]
    assert by_kind("loss") is ALL["losses"]
    assert by_kind("loss term") is ALL["loss_terms"]
    # Every registry has built-in entries (an empty one would mean its builtins module was not found).
    for kind, reg in ALL.items():
        assert len(reg.names()) > 0, kind
    with pytest.raises(UnknownNameError, match="did you mean 'losses'"):
        by_kind("losess")


def test_every_registry_documents_its_signature_in_plugins_md() -> None:
    from medkit.registries import ALL

    doc = (Path(__file__).resolve().parents[1] / "docs" / "plugins.md").read_text()
    for kind, reg in ALL.items():
        assert f"medkit.{kind}" in doc, kind
        assert reg.signature and reg.signature in doc, kind


def test_keyword_options_names_the_valid_ones_and_drops_context() -> None:
    from medkit.errors import UsageError
    from medkit.registry import keyword_options

    @keyword_options("widget", ignore=("num_classes",))
    def make(*, gamma: float = 2.0, alpha: float = 0.25) -> tuple:
        return gamma, alpha

    assert make(gamma=1.0, num_classes=5) == (1.0, 0.25)  # context the factory does not take is dropped
    with pytest.raises(UsageError) as info:
        make(gama=3)
    assert info.value.message == "unknown option 'gama' for widget 'make' (did you mean 'gamma'?)"
    assert "gamma, alpha" in (info.value.hint or "")
    with pytest.raises(UsageError, match="keyword options only"):
        make(1.0)
