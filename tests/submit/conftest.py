"""Fixtures of the submit tests: a fake Kaggle server and prediction tables as `medkit predict` writes them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from _fake_kaggle import FakeKaggle, serve


@pytest.fixture
def fake_kaggle(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[FakeKaggle]:
    """A fake Kaggle on 127.0.0.1 (default scenario: RSNA exists, uploads succeed, submissions score)."""
    with serve(monkeypatch, tmp_path) as fake:
        yield fake
