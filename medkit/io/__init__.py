"""File reading: image readers (READERS registry), DICOM (HU, windows, headers) and whole-slide images.

Import the submodules (``medkit.io.readers``, ``medkit.io.dicom``, ``medkit.io.slide``); this package imports
nothing heavy.
"""
