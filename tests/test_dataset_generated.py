"""The generated suite data sets (glyphs, textures, patches): deterministic, split by class, many classes,
loadable by name as a user picks them (`--dataset NAME`)."""

from __future__ import annotations

import numpy as np
import pytest

from tfdnc.config import TrainConfig
from tfdnc.datasets import DATASETS, load_dataset, load_glyphs, load_patches, load_textures
from tfdnc.datasets.glyphs import glyph_classes

SMALL = {
    "glyphs": lambda seed: load_glyphs(num_classes=12, images_per_class=3, image_size=20, seed=seed),
    "textures": lambda seed: load_textures(num_classes=12, images_per_class=3, image_size=20, seed=seed),
    "patches": lambda seed: load_patches(images_per_class=2, cell=64, image_size=16, seed=seed),
}


@pytest.mark.parametrize("name", sorted(SMALL))
def test_same_seed_same_images_other_seed_differs(name):
    a, b, c = SMALL[name](3), SMALL[name](3), SMALL[name](4)
    for split in ("train", "test"):
        np.testing.assert_array_equal(getattr(a, split).images, getattr(b, split).images)
        np.testing.assert_array_equal(getattr(a, split).labels, getattr(b, split).labels)
    assert not np.array_equal(a.train.images, c.train.images)


@pytest.mark.parametrize("name", sorted(SMALL))
def test_split_by_class_uint8_rgb(name):
    splits = SMALL[name](0)
    assert not set(splits.train.labels.tolist()) & set(splits.test.labels.tolist())
    assert splits.train.num_classes >= 2 and splits.test.num_classes >= 2
    for s, split in ((splits.train, "train"), (splits.test, "test")):
        assert s.name == f"{name}/{split}"
        assert s.images.dtype == np.uint8 and s.images.ndim == 4 and s.images.shape[-1] == 3
        assert len(s.images) == len(s.labels)
        assert s.images.std() > 5  # not blank
    assert splits.protocol == "default"


@pytest.mark.parametrize("name", sorted(SMALL))
def test_images_of_a_class_vary(name):
    splits = SMALL[name](0)
    first = splits.train.images[splits.train.labels == splits.train.labels[0]]
    assert len(first) >= 2 and not np.array_equal(first[0], first[1])


def test_many_classes_at_the_default_size():
    # the suite's sizes: at least 100 train classes each; the glyph set holds several hundred characters
    assert len(glyph_classes()) >= 400
    assert len(set(glyph_classes())) == len(glyph_classes())
    patches = load_patches(images_per_class=2, image_size=16)
    assert patches.train.num_classes >= 100 and patches.test.num_classes >= 100


def test_patches_train_and_test_come_from_different_regions():
    # a test place's crop never shows a train place: the split is left / right of every photograph
    from tfdnc.datasets.patches import _places, photographs

    places, n_train = _places(40, 0.5)
    for p, photo in enumerate(photographs()):
        width = photo.shape[1]
        train_x = [cx for q, _, cx in places[:n_train] if q == p]
        test_x = [cx for q, _, cx in places[n_train:] if q == p]
        assert max(train_x) + 20 <= width / 2 <= min(test_x) - 20


@pytest.mark.parametrize("name", sorted(SMALL))
def test_loads_by_name_as_the_cli_does(name):
    from tfdnc.train import build_parser, config_from_args

    assert name in DATASETS
    config = config_from_args(build_parser().parse_args(["--dataset", name]))  # python train.py --dataset NAME
    assert isinstance(config, TrainConfig) and config.dataset == name
    splits = load_dataset(config.dataset, config.data_dir, use_boxes=config.use_boxes)  # as train.build_data
    assert splits.train.num_classes >= 100
    assert splits.train.images.shape[1:] == (32, 32, 3)


@pytest.mark.parametrize("loader, option, value", [
    (load_glyphs, "num_classes", 10**6), (load_glyphs, "images_per_class", 1), (load_textures, "noise", -0.1),
    (load_textures, "train_fraction", 1.0), (load_patches, "cell", 8), (load_textures, "num_classes", 2.5),
])
def test_bad_options_name_the_data_set_and_option(loader, option, value):
    with pytest.raises(ValueError, match=rf"{loader.__name__[5:]}: `{option}`"):
        loader(**{option: value})
