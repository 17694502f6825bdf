"""Shared test set-up: plugins off (a user's installed plugins must not change test results), GPU tests skipped
without CUDA."""

from __future__ import annotations

import os

import pytest


def pytest_configure(config: pytest.Config) -> None:
    os.environ["MEDKIT_DISABLE_PLUGINS"] = "1"
    for var in ("MEDKIT_DEVICE", "MEDKIT_CONFIG", "MEDKIT_QUIET", "MEDKIT_DEBUG"):
        os.environ.pop(var, None)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not any("gpu" in item.keywords for item in items):
        return
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except Exception:
        has_cuda = False
    if has_cuda:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
