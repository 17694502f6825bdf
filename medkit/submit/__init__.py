"""`medkit submit`: predictions to a checked Kaggle submission, sent with the official client.

- `prepare_submission` reads a prediction table (or a ready submission), converts it to the competition's layout
  (`to_submission`), clips log-loss probabilities, validates it (`validate_submission` -> `ValidationReport`) and
  writes it;
- `submit_file`, `list_submissions`, `download_files` and `push_kernel_bundle` talk to Kaggle (`find_credentials`
  first; the ``kaggle`` client is imported only inside them);
- `build_kernel_bundle` writes the offline notebook + weights dataset of a code competition (`check_kernel_runs`
  first: the runs, their masks, the tiling of whole-slide runs, `tile_options`).

This package never imports the engine or the CLI; pandas, numpy and kaggle load inside the functions.
"""

from __future__ import annotations

from medkit.submit._client import (
    Credentials,
    CredentialsError,
    KernelPush,
    SubmissionInfo,
    SubmitError,
    SubmitResult,
    download_files,
    find_credentials,
    kaggle_config_dir,
    list_submissions,
    push_kernel_bundle,
    submit_file,
)
from medkit.submit._kernel import (
    KernelBundle,
    KernelRuns,
    build_kernel_bundle,
    check_kernel_runs,
    expected_dependencies,
    kernel_script,
    run_files,
    sub_runs,
)
from medkit.submit._prepare import PreparedSubmission, prepare_submission, read_input, read_sample
from medkit.submit._tiling import tile_options
from medkit.submit._validate import Problem, ValidationReport, clip_probabilities, validate_submission
from medkit.submit._write import Converted, target_sources, to_submission

__all__ = [
    "Converted",
    "Credentials",
    "CredentialsError",
    "KernelBundle",
    "KernelPush",
    "KernelRuns",
    "PreparedSubmission",
    "Problem",
    "SubmissionInfo",
    "SubmitError",
    "SubmitResult",
    "ValidationReport",
    "build_kernel_bundle",
    "check_kernel_runs",
    "clip_probabilities",
    "download_files",
    "expected_dependencies",
    "find_credentials",
    "kaggle_config_dir",
    "kernel_script",
    "list_submissions",
    "prepare_submission",
    "push_kernel_bundle",
    "read_input",
    "read_sample",
    "run_files",
    "sub_runs",
    "submit_file",
    "target_sources",
    "tile_options",
    "to_submission",
    "validate_submission",
]
