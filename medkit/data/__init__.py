"""The training data path: the dataset table convention (``table``), splits and targets (``dataset``), images
prepared as uint8 (``pipeline``), the uint8 cache (``cache``), batched on-device augmentation (``augment``) and the
DataLoader dataset (``loader``). Reading files is `medkit.io`; feeding batches to the device is `medkit.engine.feed`.

Import the submodules directly; this package imports nothing heavy.
"""
