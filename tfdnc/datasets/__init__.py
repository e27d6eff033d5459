"""Data set loaders. `load_dataset(name, data_dir)` returns `DataSplits`."""

from __future__ import annotations

from typing import Callable

from tfdnc.datasets.base import DataSplits, ImageSet
from tfdnc.datasets.default import load_digits_upscaled, load_mnist_sample

# name -> loader(data_dir, **options) -> DataSplits
DATASETS: dict[str, Callable[..., DataSplits]] = {
    "mnist": lambda data_dir=None, **kw: load_mnist_sample(**kw),
    "digits": lambda data_dir=None, **kw: load_digits_upscaled(**kw),
}


def load_dataset(name: str, data_dir: str | None = None, **options) -> DataSplits:
    """Loads a data set by name; see `DATASETS` for the names."""
    if name not in DATASETS:
        raise ValueError(f"Unknown data set {name!r}; choose one of {', '.join(sorted(DATASETS))}")
    return DATASETS[name](data_dir=data_dir, **options)


__all__ = ["DATASETS", "DataSplits", "ImageSet", "load_dataset"]
