"""The generated shapes benchmark: deterministic, split by class, families separable at a glance."""

from __future__ import annotations

import numpy as np
import pytest

from tfdnc.datasets import DATASETS, load_dataset, load_shapes
from tfdnc.datasets.shapes import FAMILIES, family_capacity

SMALL = dict(num_classes=16, images_per_class=3, image_size=16)


def _all(splits):
    return (np.concatenate([splits.train.images, splits.test.images]),
            np.concatenate([splits.train.labels, splits.test.labels]))


def test_same_seed_same_arrays_other_seed_differs():
    a, b, c = load_shapes(**SMALL, seed=3), load_shapes(**SMALL, seed=3), load_shapes(**SMALL, seed=4)
    for split in ("train", "test"):
        np.testing.assert_array_equal(getattr(a, split).images, getattr(b, split).images)
        np.testing.assert_array_equal(getattr(a, split).labels, getattr(b, split).labels)
        np.testing.assert_array_equal(getattr(a, split).extra["super_labels"],
                                      getattr(b, split).extra["super_labels"])
    assert not np.array_equal(a.train.images, c.train.images)
    assert not np.array_equal(a.test.images, c.test.images)


def test_shapes_dtypes_names_and_class_counts():
    splits = load_shapes(num_classes=24, images_per_class=5, image_size=20, train_fraction=0.5, seed=0)
    for split, classes in (("train", range(0, 12)), ("test", range(12, 24))):
        s = getattr(splits, split)
        assert s.name == f"shapes/{split}"
        assert s.paths is None
        assert s.images.dtype == np.uint8 and s.images.shape == (12 * 5, 20, 20, 3)
        assert s.labels.dtype == np.int64
        ids, counts = np.unique(s.labels, return_counts=True)
        assert ids.tolist() == list(classes)
        assert (counts == 5).all()
    assert splits.protocol == "default"
    assert splits.query is None and splits.gallery is None


def test_split_by_class_with_every_family_on_both_sides():
    splits = load_shapes(num_classes=20, images_per_class=2, image_size=16, train_fraction=0.6, seed=1)
    assert not set(splits.train.labels) & set(splits.test.labels)
    assert splits.train.num_classes == 12 and splits.test.num_classes == 8
    for s in (splits.train, splits.test):
        families = s.extra["super_labels"]
        np.testing.assert_array_equal(families, s.labels % len(FAMILIES))
        assert set(families.tolist()) == set(range(len(FAMILIES)))


def test_fewer_families_and_capacity():
    splits = load_shapes(num_classes=6, images_per_class=2, num_families=1, image_size=16)
    assert set(splits.train.extra["super_labels"].tolist()) == {0}
    assert set(family_capacity()) == set(FAMILIES)
    assert min(family_capacity().values()) >= 100  # the default 100 classes per family fit


def test_images_vary_within_a_class_and_are_not_constant():
    splits = load_shapes(**SMALL, seed=0)
    images = splits.train.images.astype(np.int32)
    first, second = images[0], images[1]  # two images of class 0
    assert np.abs(first - second).mean() > 3
    assert images.reshape(len(images), -1).std(axis=1).min() > 5


@pytest.mark.parametrize("kwargs, name", [
    (dict(images_per_class=1), "images_per_class"),
    (dict(images_per_class=2.5), "images_per_class"),
    (dict(num_classes=7), "num_classes"),  # < 2 per family
    (dict(num_classes=10_000), "num_classes"),  # over a family's capacity
    (dict(num_families=0), "num_families"),
    (dict(num_families=5), "num_families"),
    (dict(image_size=8), "image_size"),
    (dict(image_size=True), "image_size"),
    (dict(train_fraction=1.0), "train_fraction"),
    (dict(train_fraction=0.05), "train_fraction"),  # leaves a family without train classes
    (dict(noise=-0.1), "noise"),
    (dict(noise=float("nan")), "noise"),
    (dict(jitter=-1), "jitter"),
    (dict(seed=-1), "seed"),
    (dict(seed="a"), "seed"),
])
def test_bad_arguments_name_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=f"`{name}`"):
        load_shapes(**{**SMALL, **kwargs})


def test_registered_with_load_dataset():
    assert "shapes" in DATASETS
    splits = load_dataset("shapes", num_classes=8, images_per_class=2, image_size=16, seed=5)
    direct = load_shapes(num_classes=8, images_per_class=2, image_size=16, seed=5)
    np.testing.assert_array_equal(splits.test.images, direct.test.images)
    with pytest.raises(ValueError, match="bounding boxes"):
        load_dataset("shapes", use_boxes=True)


def _colour_statistics(images: np.ndarray) -> np.ndarray:
    """Per image: channel means and spreads, mean saturation, border means."""
    x = images.astype(np.float32) / 255
    border = np.concatenate([x[:, :3].reshape(len(x), -1, 3), x[:, -3:].reshape(len(x), -1, 3)], axis=1)
    feats = np.concatenate([
        x.mean(axis=(1, 2)), x.std(axis=(1, 2)), (x.max(-1) - x.min(-1)).mean(axis=(1, 2))[:, None],
        border.mean(axis=1), (border.max(-1) - border.min(-1)).mean(axis=1)[:, None],
    ], axis=1)
    return (feats - feats.mean(0)) / (feats.std(0) + 1e-6)


def _recall_at_1(feats: np.ndarray, labels: np.ndarray) -> float:
    sq = (feats ** 2).sum(1)
    d = sq[:, None] + sq[None] - 2 * feats @ feats.T
    np.fill_diagonal(d, np.inf)
    return float((labels[d.argmin(1)] == labels).mean())


def test_families_separable_at_a_glance_classes_not():
    from sklearn.cluster import KMeans
    from sklearn.metrics import normalized_mutual_info_score

    splits = load_shapes(num_classes=80, images_per_class=6, image_size=32, seed=0)
    images, labels = _all(splits)
    families = labels % len(FAMILIES)
    feats = _colour_statistics(images)
    found = KMeans(len(FAMILIES), n_init=4, random_state=0).fit_predict(feats)
    nmi = normalized_mutual_info_score(families, found)
    chance = normalized_mutual_info_score(families, np.random.default_rng(0).integers(0, 4, len(families)))
    assert nmi > 0.6, nmi
    assert chance < 0.05
    # Within the shape and texture families colour is nuisance: the same
    # statistics that find the family barely find the class (chance is 1/20).
    for family in ("shape", "texture"):
        member = families == FAMILIES.index(family)
        recall = _recall_at_1(feats[member], labels[member])
        assert recall < 0.25, (family, recall)
