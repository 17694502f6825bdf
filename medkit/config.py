"""Configuration: TOML files, the precedence rule, and the provenance saved with every run.

Precedence, for every option of every command: flag > ``MEDKIT_*`` environment variable > ``--config FILE.toml``
> the built-in default. The CLI implements it with Click's ``default_map``: the TOML's top-level keys are the
global options, and each ``[command]`` table holds that command's options (``[train] epochs = 10``).
"""

from __future__ import annotations

import os
import platform
import sys
import tomllib
from pathlib import Path
from typing import Any

from medkit.errors import ConfigError

__all__ = ["load_toml", "to_default_map", "versions", "provenance"]

GLOBAL_KEYS = ("device", "quiet", "verbose")


def load_toml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a medkit TOML configuration file.

    Raises:
        ConfigError: When the file is missing or not valid TOML (the message names the file and line).
    """
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}", hint="check the path given to --config or MEDKIT_CONFIG")
    try:
        with p.open("rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{p}: invalid TOML: {exc}", hint="fix the file; see docs/cli.md for the layout") from exc


def to_default_map(config: dict[str, Any]) -> dict[str, Any]:
    """Turn a config into Click's ``default_map``: ``[command]`` tables with keys using underscores.

    Keys may be written with dashes (``batch-size``) as on the command line.
    """

    def norm(d: dict[str, Any]) -> dict[str, Any]:
        return {k.replace("-", "_"): (norm(v) if isinstance(v, dict) else v) for k, v in d.items()}

    return norm(config)


def versions() -> dict[str, str]:
    """Versions of Python, medkit and the libraries that decide results (only those already importable)."""
    from importlib.metadata import PackageNotFoundError, version

    import medkit

    out = {"python": sys.version.split()[0], "platform": platform.platform(), "medkit": medkit.__version__}
    for dist in (
        "torch",
        "torchvision",
        "timm",
        "numpy",
        "pandas",
        "scikit-learn",
        "opencv-python-headless",
        "pydicom",
        "tifffile",
    ):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            continue
    return out


def provenance(config: dict[str, Any]) -> dict[str, Any]:
    """The record saved as run.json: the resolved configuration plus versions and the command line."""
    return {"config": config, "versions": versions(), "argv": sys.argv[:]}
