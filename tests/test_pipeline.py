"""tf.data pipelines: training batches follow the sampler; eval transform and file decoding."""

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from tfdnc.data.pipeline import make_eval_dataset, make_train_dataset
from tfdnc.data.sampling import ClusterBatchSampler
from tfdnc.data.transforms import eval_transform
from tfdnc.datasets.base import ImageSet


def _arrays(n_classes=6, per_class=6, size=10):
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(n_classes), per_class)
    images = rng.integers(0, 256, size=(len(labels), size, size, 1), dtype=np.uint8)
    return ImageSet(labels=labels, images=images, name="toy")


def test_train_batches_follow_the_published_plan():
    image_set = _arrays()
    sampler = ClusterBatchSampler(image_set.labels, 2, 3, seed=0)
    sampler.set_clusters(image_set.labels % 2, 2)
    ds = make_train_dataset(image_set, sampler, steps_per_epoch=4, image_size=8, crop_scale=(0.5, 1.0))
    sampler.publish(0)
    plan = list(sampler.plan_epoch(0, 4))
    iterator = iter(ds)
    batches = [next(iterator) for _ in range(4)]
    # The pipeline now waits for epoch 1; closing lets the iterator shut down.
    sampler.close()
    for (x, labels), (indices, cluster) in zip(batches, plan):
        assert x["images"].shape == (6, 8, 8, 1) and x["images"].dtype == tf.float32
        np.testing.assert_array_equal(x["cluster"].numpy(), np.full(6, cluster))
        np.testing.assert_array_equal(labels.numpy(), image_set.labels[indices])
        assert 0.0 <= float(tf.reduce_min(x["images"])) and float(tf.reduce_max(x["images"])) <= 255.0


def test_unaugmented_crop_reproduces_the_image():
    image_set = _arrays(size=8)
    sampler = ClusterBatchSampler(image_set.labels, 2, 3)
    ds = make_train_dataset(image_set, sampler, 1, image_size=8, crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0),
                            flip=False)
    sampler.publish(0)
    iterator = iter(ds)
    (x, _), (indices, _) = next(iterator), next(sampler.plan_epoch(0, 1))
    sampler.close()
    np.testing.assert_allclose(x["images"].numpy(), image_set.images[indices].astype(np.float32), atol=1e-3)


def test_whole_image_batches_equal_the_per_image_transform_and_follow_the_plan():
    """Unaugmented in-memory training (the suite's setting) gathers whole batches: the same pixels, labels and
    clusters as the per-image crop transform gives; a flip or a resize still goes through that transform."""
    from tfdnc.data.pipeline import unaugmented_in_memory
    from tfdnc.data.transforms import random_resized_crop

    image_set = _arrays(size=8)
    sampler = ClusterBatchSampler(image_set.labels, 2, 3, seed=1)
    sampler.set_clusters(image_set.labels % 2, 2)
    ds = make_train_dataset(image_set, sampler, 3, image_size=8, crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0),
                            flip=False)
    sampler.publish(0)
    iterator = iter(ds)
    batches = [next(iterator) for _ in range(3)]
    sampler.close()
    for (x, labels), (indices, cluster) in zip(batches, sampler.plan_epoch(0, 3)):
        per_image = np.stack([random_resized_crop(image_set.images[i], 8, tf.constant([3, 4]), (1.0, 1.0),
                                                  (1.0, 1.0)).numpy() for i in indices])
        np.testing.assert_array_equal(x["images"].numpy(), per_image)
        np.testing.assert_array_equal(labels.numpy(), image_set.labels[indices])
        np.testing.assert_array_equal(x["cluster"].numpy(), np.full(6, cluster))
    assert unaugmented_in_memory(image_set, 8, (1, 1), (1, 1), flip=False)
    assert not unaugmented_in_memory(image_set, 8, (1, 1), (1, 1), flip=True)
    assert not unaugmented_in_memory(image_set, 6, (1, 1), (1, 1), flip=False)  # resized: the transform's job
    assert not unaugmented_in_memory(image_set, 8, (0.5, 1), (1, 1), flip=False)


def test_whole_image_training_of_non_square_files_is_the_evaluation_centre_crop_not_a_squash(tmp_path):
    """The default (no crop) on photos of any shape: each training image is what the evaluation sees,
    the shorter side resized and the centre cut out, not the whole photo squashed to a square."""
    paths, labels = [], []
    rng = np.random.default_rng(0)
    for i in range(8):
        pixels = rng.integers(0, 256, size=(20, 40, 3), dtype=np.uint8)  # landscape
        path = tmp_path / f"{i}.png"
        Image.fromarray(pixels).save(path)
        paths.append(str(path))
        labels.append(i // 2)
    image_set = ImageSet(labels=np.array(labels), paths=np.array(paths), name="photos")
    sampler = ClusterBatchSampler(image_set.labels, 2, 2, seed=0)
    ds = make_train_dataset(image_set, sampler, 1, image_size=16, crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0),
                            flip=False)
    sampler.publish(0)
    iterator = iter(ds)  # kept until the sampler is closed: dropping it waits for the next epoch's plan
    (x, _), (indices, _) = next(iterator), next(sampler.plan_epoch(0, 1))
    sampler.close()
    expected = np.stack([eval_transform(np.asarray(Image.open(paths[i])), 16).numpy() for i in indices])
    np.testing.assert_allclose(x["images"].numpy(), expected, atol=1e-3)


def test_eval_transform_resizes_shorter_side_then_centre_crops():
    image = np.zeros((40, 80, 3), np.uint8)
    image[:, 30:50] = 255  # a centred vertical bar
    out = eval_transform(tf.constant(image), image_size=16, resize_size=20).numpy()
    assert out.shape == (16, 16, 3)
    # 40x80 -> 20x40, centre crop 16 columns 12..27 of 40: bar (15..25) lands at 3..13
    assert out[:, 5:11].min() > 200 and out[:, 0:2].max() < 50


def test_eval_dataset_decodes_files_in_order_with_boxes(tmp_path):
    rng = np.random.default_rng(1)
    paths, arrays = [], []
    for i in range(5):
        array = rng.integers(0, 256, size=(12 + i, 14, 3), dtype=np.uint8)
        path = tmp_path / f"img{i}.png"
        Image.fromarray(array).save(path)
        paths.append(str(path))
        arrays.append(array)
    boxes = np.array([[2, 1, 8, 8]] * 5, np.float32)
    image_set = ImageSet(labels=np.arange(5), paths=paths, boxes=boxes)
    batches = list(make_eval_dataset(image_set, image_size=8, batch_size=2))
    images = np.concatenate([b.numpy() for b in batches])
    assert images.shape == (5, 8, 8, 3)
    for array, image in zip(arrays, images):
        np.testing.assert_allclose(image, array[1:9, 2:10].astype(np.float32), atol=1e-3)


def test_train_dataset_rejects_zero_steps():
    image_set = _arrays()
    with pytest.raises(ValueError, match="steps_per_epoch"):
        make_train_dataset(image_set, ClusterBatchSampler(image_set.labels, 2, 2), 0, 8)
