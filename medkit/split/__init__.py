"""Leak-free, stratified folds: patient groups and near-duplicate clusters stay whole, label prevalence stays even.

The problem has three parts, solved in this order:

1. **Units** (`medkit.split._units`). Rows that must share a fold are merged into one unit by union-find
   (connected components) over three keys: the image itself (the same image listed twice is one image), the
   group (patient, study) and the near-duplicate cluster from ``medkit audit``. A duplicate cluster that spans
   two patients merges both patients into one unit; such merges are counted and reported, never silently broken.
2. **Assignment** (`medkit.split._assign`). Every unit carries a count vector (`medkit.split._labels`): its
   positives per label (multi-hot columns, one-hot classes, one-hot strata) plus its row count. Units are placed
   greedily, rarest label first and larger units first within a label (the order of iterative stratification,
   Sechidis et al. 2011, applied to units instead of rows), each into the fold where it least increases a
   chi-square distance between the fold's label prevalences and the overall ones, plus one of fold sizes from
   their targets. A local search then moves single units between folds, and swaps pairs of units, while that
   distance drops.
3. **Certificate** (`medkit.split._certificate`). From the final assignment alone, count groups that occur in
   more than one fold and duplicate clusters that do; both must be 0.

`split_table` (`medkit.split._frame`) runs the three on a DataFrame; `make_split` (`medkit.split._make`) runs
it on a table file, as ``medkit split`` does, and returns a `SplitReport` (`medkit.split._report`).

Everything is keyed by sorted values of the image, group and cluster columns, so the result depends on the seed
and the table's content, never on its row order. This package imports numpy, pandas and scipy (and
threadpoolctl when present), not torch.
"""

from __future__ import annotations

from medkit.split._assign import assign_units
from medkit.split._certificate import leakage_certificate, max_deviation, prevalence_table
from medkit.split._frame import SplitResult, parse_holdout, split_table
from medkit.split._labels import MAX_CLASSES, LabelMatrix, expand_separated, joint_parts, label_matrix
from medkit.split._make import LabelChoice, SplitOptions, SplitOutcome, choose_labels, default_output, make_split
from medkit.split._report import CertificateReport, FoldReport, LabelReport, SplitReport, build_report
from medkit.split._units import Units, build_units

__all__ = [
    "MAX_CLASSES",
    "LabelMatrix",
    "Units",
    "SplitResult",
    "SplitOptions",
    "LabelChoice",
    "SplitOutcome",
    "SplitReport",
    "FoldReport",
    "LabelReport",
    "CertificateReport",
    "parse_holdout",
    "expand_separated",
    "joint_parts",
    "label_matrix",
    "build_units",
    "assign_units",
    "split_table",
    "leakage_certificate",
    "prevalence_table",
    "max_deviation",
    "choose_labels",
    "default_output",
    "make_split",
    "build_report",
]
