"""medkit: medical image classification from raw files to a scored submission."""

__version__ = "0.2.0"

__all__ = ["__version__"]
