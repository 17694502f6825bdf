"""Kaggle competition presets (COMPETITIONS registry) and the competition knowledge medkit uses, one module each.

A preset is data, not code: `medkit submit`, `medkit ensemble --competition` and `medkit train --competition`
read it to know which columns a submission needs, which metric scores it, and whether the competition takes a
file or a notebook.
Each competition module also owns that competition's constants and table converters:

- `medkit.competitions.rsna`: ``RSNA_SUBTYPES``, ``from_rsna_long``, ``looks_like_rsna_long``;
- `medkit.competitions.ranzcr`: ``RANZCR_LABELS``, ``RANZCR_GROUPS``, ``from_ranzcr``;
- `medkit.competitions.panda`: ``from_panda``, ``gleason_to_isup``;
- `medkit.competitions.siim_isic`: the SIIM-ISIC melanoma preset.

A name that is not registered can still be a Kaggle slug: `resolve_competition` gives a bare competition whose
layout comes from a sample submission. Private competitions come in as plugins (entry-point group
``medkit.competitions``, factory ``f() -> Competition``; see docs/plugins.md).

Importing this package registers the presets. It imports nothing heavy (no pandas, numpy or torch).
"""

from __future__ import annotations

from medkit.competitions import panda, ranzcr, rsna, siim_isic  # noqa: F401  (importing registers the presets)
from medkit.competitions._base import (
    ANY_NUMBER,
    IMAGE_SUFFIXES,
    PROBABILITY,
    Competition,
    Values,
    generic_competition,
    image_stem,
    resolve_competition,
)

__all__ = [
    "ANY_NUMBER",
    "IMAGE_SUFFIXES",
    "PROBABILITY",
    "Competition",
    "Values",
    "generic_competition",
    "image_stem",
    "resolve_competition",
]
