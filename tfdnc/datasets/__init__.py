"""Data set loaders. `load_dataset(name, data_dir)` returns `DataSplits`."""

from __future__ import annotations

from typing import Callable

from tfdnc.datasets.base import DataSplits, ImageSet
from tfdnc.datasets.cars import load_cars
from tfdnc.datasets.csvfile import load_csv
from tfdnc.datasets.cub import load_cub
from tfdnc.datasets.default import load_digits_upscaled, load_mnist_sample
from tfdnc.datasets.errors import DatasetError
from tfdnc.datasets.folder import load_image_folder
from tfdnc.datasets.glyphs import load_glyphs
from tfdnc.datasets.inshop import load_inshop
from tfdnc.datasets.patches import load_patches
from tfdnc.datasets.shapes import load_shapes
from tfdnc.datasets.sop import load_sop
from tfdnc.datasets.textures import load_textures
from tfdnc.datasets.vehicleid import load_vehicleid

# name -> loader(data_dir, **options) -> DataSplits
DATASETS: dict[str, Callable[..., DataSplits]] = {
    "mnist": lambda data_dir=None, **kw: load_mnist_sample(**kw),
    "digits": lambda data_dir=None, **kw: load_digits_upscaled(**kw),
    "shapes": lambda data_dir=None, **kw: load_shapes(**kw),
    # generated from what tfdnc's dependencies ship (the benchmark suite's other sets)
    "glyphs": lambda data_dir=None, **kw: load_glyphs(**kw),
    "textures": lambda data_dir=None, **kw: load_textures(**kw),
    "patches": lambda data_dir=None, **kw: load_patches(**kw),
    "cub": load_cub,
    "cars": load_cars,
    "sop": load_sop,
    "inshop": load_inshop,
    "vehicleid": load_vehicleid,
    "folder": load_image_folder,
    "csv": load_csv,
}


# Data sets with bounding boxes (their loaders take `use_boxes`).
WITH_BOXES = ("cub", "cars")


def load_dataset(
    name: str, data_dir: str | None = None, use_boxes: bool = False, **options
) -> DataSplits:
    """Loads a data set by name; see `DATASETS` for the names.

    `use_boxes=True` crops CUB / CARS images to their bounding boxes (the
    boxes ride along in `ImageSet.boxes`); other data sets have none.

    Examples:
        >>> splits = load_dataset("cub", "/data/CUB_200_2011", use_boxes=True)  # doctest: +SKIP
    """
    if name not in DATASETS:
        raise ValueError(f"Unknown data set {name!r}; choose one of {', '.join(sorted(DATASETS))}")
    if use_boxes:
        if name not in WITH_BOXES:
            raise ValueError(
                f"--use-boxes: the {name!r} data set has no bounding boxes (only {', '.join(WITH_BOXES)})"
            )
        options["use_boxes"] = True
    return DATASETS[name](data_dir=data_dir, **options)


__all__ = [
    "DATASETS", "WITH_BOXES", "DataSplits", "DatasetError", "ImageSet", "load_cars", "load_csv", "load_cub",
    "load_dataset", "load_glyphs", "load_image_folder", "load_inshop", "load_patches", "load_shapes", "load_sop",
    "load_textures", "load_vehicleid",
]
