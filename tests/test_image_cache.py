"""Decoded-image cache: same pixels, same training batches, reuse, bad files named."""

import os

import numpy as np
import pytest
from PIL import Image

from tfdnc.data.cache import RAW_SUFFIX, cache_decoded_images, is_cached
from tfdnc.data.pipeline import make_eval_dataset, make_train_dataset
from tfdnc.data.sampling import ClusterBatchSampler
from tfdnc.datasets.base import ImageSet


def _jpeg_set(root, n_classes=3, per_class=4, boxes=False):
    rng = np.random.default_rng(0)
    paths, labels = [], []
    for c in range(n_classes):
        for i in range(per_class):
            array = rng.integers(0, 256, size=(20 + i, 24, 3), dtype=np.uint8)
            path = root / f"{c}_{i}.jpg"
            Image.fromarray(array).save(path, quality=90)
            paths.append(str(path))
            labels.append(c)
    box = np.tile(np.array([[2, 3, 16, 12]], np.float32), (len(paths), 1)) if boxes else None
    return ImageSet(labels=np.array(labels), paths=paths, boxes=box, name="jpegs")


@pytest.mark.parametrize("boxes", [False, True])
def test_cached_images_decode_to_the_same_pixels(tmp_path, boxes):
    original = _jpeg_set(tmp_path, boxes=boxes)
    cached = cache_decoded_images(original, str(tmp_path / "cache"))
    assert cached.boxes is None and is_cached(cached) and not is_cached(original)
    assert all(p.endswith(RAW_SUFFIX) for p in cached.paths)
    size = 12 if boxes else 20
    a = np.concatenate([b.numpy() for b in make_eval_dataset(original, size)])
    b = np.concatenate([b.numpy() for b in make_eval_dataset(cached, size)])
    np.testing.assert_array_equal(a, b)


def test_training_batches_are_identical_with_and_without_the_cache(tmp_path):
    original = _jpeg_set(tmp_path)
    cached = cache_decoded_images(original, str(tmp_path / "cache"))
    batches = []
    for image_set in (original, cached):
        sampler = ClusterBatchSampler(image_set.labels, 3, 2, seed=4)
        ds = make_train_dataset(image_set, sampler, 3, image_size=16, crop_scale=(0.3, 1.0))
        sampler.publish(0)
        iterator = iter(ds)
        batches.append([next(iterator)[0]["images"].numpy() for _ in range(3)])
        sampler.close()
    for a, b in zip(*batches):
        np.testing.assert_array_equal(a, b)


def test_cache_is_reused_and_max_side_shrinks(tmp_path):
    original = _jpeg_set(tmp_path)
    first = cache_decoded_images(original, str(tmp_path / "cache"))
    stamps = [os.path.getmtime(p) for p in first.paths]
    again = cache_decoded_images(original, str(tmp_path / "cache"))
    assert again.paths == first.paths and [os.path.getmtime(p) for p in again.paths] == stamps
    small = cache_decoded_images(original, str(tmp_path / "cache"), max_side=10)
    header = np.frombuffer(open(small.paths[0], "rb").read(12), "<i4")
    assert min(header[:2]) == 10 and header[2] == 3


def test_unreadable_file_is_named(tmp_path):
    original = _jpeg_set(tmp_path)
    with open(original.paths[1], "wb") as f:
        f.write(b"not a jpeg")
    with pytest.raises(ValueError, match=os.path.basename(original.paths[1])):
        cache_decoded_images(original, str(tmp_path / "cache"))


def test_train_py_trains_from_the_cache(tmp_path):
    from tfdnc.train import build_parser, config_from_args, run

    rows = []
    rng = np.random.default_rng(0)
    for label in range(4):
        for i in range(4):
            path = tmp_path / f"{label}_{i}.jpg"
            Image.fromarray(rng.integers(0, 256, size=(20, 20, 3), dtype=np.uint8)).save(path)
            rows.append(f"{path},{label},{'train' if label < 3 else 'test'}")
    (tmp_path / "data.csv").write_text("path,label,split\n" + "\n".join(rows) + "\n")
    argv = ["--dataset", "csv", "--data-dir", str(tmp_path / "data.csv"), "--image-size", "16",
            "--embedding-dim", "8", "--classes-per-batch", "2", "--images-per-class", "2", "--epochs", "1",
            "--steps-per-epoch", "2", "--k-final", "1", "--cache-dir", str(tmp_path / "cache"),
            "--run-dir", str(tmp_path / "run")]
    run(config_from_args(build_parser().parse_args(argv)), export=False, verbose=0)
    assert len([p for p in os.listdir(tmp_path / "cache") if p.endswith(RAW_SUFFIX)]) == 12
    with pytest.raises(ValueError, match="--cache-max-side"):
        config_from_args(build_parser().parse_args(argv + ["--cache-max-side", "8"]))
