"""Global options resolved by the app callback, read by the commands."""

from __future__ import annotations

from typing import Any

STATE: dict[str, Any] = {"device": None, "config": None, "config_data": {}}
