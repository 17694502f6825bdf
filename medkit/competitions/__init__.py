"""Kaggle competition presets (COMPETITIONS registry) and the competition knowledge medkit uses, one module each.

A preset is data, not code: `medkit submit` (to come) and `medkit train --competition` read it to know which
columns a submission needs, which metric scores it, and whether the competition takes a file or a notebook.
Each competition module also owns that competition's constants and table converters:

- `medkit.competitions.rsna`: ``RSNA_SUBTYPES``, ``from_rsna_long``, ``looks_like_rsna_long``;
- `medkit.competitions.ranzcr`: ``RANZCR_LABELS``, ``RANZCR_GROUPS``, ``from_ranzcr``;
- `medkit.competitions.panda`: ``from_panda``.

Importing this package registers the presets. It imports nothing heavy (no pandas, numpy or torch).
"""

from __future__ import annotations

from medkit.competitions import panda, ranzcr, rsna  # noqa: F401  (importing registers the presets)
from medkit.competitions._base import Competition

__all__ = ["Competition"]
