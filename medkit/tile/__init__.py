"""Cut whole-slide images into the N most tissue-rich tiles (PANDA style), with aligned mask tiles and mosaics.

The package, in the order a slide goes through it:

- `medkit.tile._grid`: the PANDA grid of a level (padding split in half on each side), exact per-tile sums,
  cutting tiles and laying out mosaics;
- `medkit.tile._score`: the tissue rules (``white``: gray below a threshold, PANDA's lowest pixel sum first;
  ``otsu``: HSV saturation above Otsu's threshold, most tissue first) and the scores of every tile of a level,
  band by band when the level is too large to hold;
- `medkit.tile._select`: the best N tiles, ties broken by position, tiles below ``min_tissue`` left out;
- `medkit.tile._outputs`: tiles as PNG files or one npz, mask tiles, mosaics and the table rows of a slide;
- `medkit.tile._slide`: `tile_slide`, one slide end to end, with a resumable index and done marker;
- `medkit.tile._run`: finding slides, checking options and `tile_slides` over a process pool;
- `medkit.tile._table`: OUT/tiles.csv with the slide labels joined.

A slide with fewer eligible tiles than N is completed with background tiles (image 255, mask 0). This package
imports numpy, tifffile, cv2 and pandas (the last two inside functions), not torch.
"""

from __future__ import annotations

from medkit.tile._grid import Grid, cut_tile, drop_alpha, make_grid, make_mosaic, tile_sums
from medkit.tile._outputs import FORMATS, SlideTiles, write_outputs
from medkit.tile._run import (
    BACKENDS,
    FailedSlide,
    SlideSummary,
    TileSummary,
    check_options,
    collect_slides,
    find_slides,
    parse_mosaic,
    summarize,
    tile_slides,
)
from medkit.tile._score import TISSUE_METHODS, otsu_saturation, score_slide_level, score_tiles, tissue_mask
from medkit.tile._select import select_tiles
from medkit.tile._slide import INDEX_VERSION, SlideResult, TileOptions, find_mask, slide_id_of, tile_slide
from medkit.tile._table import SlideLabels, TilesTable, attach_labels, read_labels, tiles_frame, write_tiles_table

__all__ = [
    "Grid",
    "TileOptions",
    "SlideResult",
    "SlideTiles",
    "TileSummary",
    "SlideSummary",
    "FailedSlide",
    "TilesTable",
    "SlideLabels",
    "INDEX_VERSION",
    "FORMATS",
    "TISSUE_METHODS",
    "BACKENDS",
    "make_grid",
    "tile_sums",
    "score_tiles",
    "score_slide_level",
    "select_tiles",
    "cut_tile",
    "make_mosaic",
    "slide_id_of",
    "find_mask",
    "tile_slide",
    "tile_slides",
    "collect_slides",
    "find_slides",
    "parse_mosaic",
    "check_options",
    "tissue_mask",
    "otsu_saturation",
    "drop_alpha",
    "write_outputs",
    "tiles_frame",
    "attach_labels",
    "read_labels",
    "write_tiles_table",
    "summarize",
]
