"""File reading: image readers (READERS registry), DICOM (HU, windows, headers), MedMNIST archives, whole slides.

Import the submodules; this package imports nothing heavy:

- ``medkit.io.readers``: `read_image`, the READERS entries, `load_medmnist` (re-exported).
- ``medkit.io.dicom``: HU, windowing, header tables; ``medkit.io.windows``: window presets and names (no numpy).
- ``medkit.io.medmnist``: MedMNIST ``.npz`` archives; ``medkit.io.slide``: whole-slide images.
- ``medkit.io.inspect``: `describe`, what the readers make of a file (``medkit inspect``).

Imports inside the package run one way: ``inspect -> readers -> dicom, medmnist -> windows, _checks``.
"""
