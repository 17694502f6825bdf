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


@pytest.fixture
def dicom_writer():  # noqa: ANN201
    """`_factories.write_dicom`: a minimal DICOM file with given stored values and header fields."""
    from _factories import write_dicom

    return write_dicom


@pytest.fixture
def medmnist_writer():  # noqa: ANN201
    """`_factories.synthetic_medmnist`: a binary MedMNIST-layout .npz with train/val/test splits."""
    from _factories import synthetic_medmnist

    return synthetic_medmnist


@pytest.fixture
def png_table_writer():  # noqa: ANN201
    """`_factories.png_table`: PNGs plus a labels.csv with patient ids and folds."""
    from _factories import png_table

    return png_table
