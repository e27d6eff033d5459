"""The README's "Use tfdnc from your own Keras code" example, run as written, and the pieces it uses."""

import os
import re

import numpy as np
import pytest
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _readme_example() -> str:
    with open(os.path.join(ROOT, "docs", "sections", "keras.md")) as f:
        text = f.read()
    return re.search(r"<!-- keras-example -->\s*```python\n(.*?)```", text, re.S).group(1)


def _write_photos(folder, classes=8, per_class=6, size=40):
    """One sub-folder per class: a coloured square on a background, class = (colour, position)."""
    rng = np.random.default_rng(0)
    for c in range(classes):
        os.makedirs(os.path.join(folder, f"class_{c}"))
        colour = np.array([(c * 97) % 256, (c * 53 + 80) % 256, (c * 29 + 160) % 256], np.uint8)
        for i in range(per_class):
            image = rng.integers(0, 60, (size, size, 3)).astype(np.uint8)
            x, y = (c % 4) * 8 + rng.integers(0, 3), (c // 4) * 16 + rng.integers(0, 3)
            image[y:y + 14, x:x + 14] = colour
            Image.fromarray(image).save(os.path.join(folder, f"class_{c}", f"{i}.png"))


def test_the_readme_keras_example_trains_divide_and_conquer_on_an_image_folder(tmp_path, monkeypatch):
    _write_photos(str(tmp_path / "photos"))
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(_readme_example(), "docs/sections/keras.md", "exec"), scope)
    model, embeddings = scope["model"], scope["embeddings"]
    assert model.num_learners == 2  # the schedule re-clustered and grew K inside fit
    assert embeddings.shape == (48, 32)
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)
    assert type(scope["tfdnc"].load_model("photos.keras").metric_loss).__name__ == "MultiSimilarityLoss"


def test_cluster_batches_take_arrays_and_give_per_cluster_class_balanced_batches():
    from tfdnc.data import ClusterBatches

    images = np.random.default_rng(0).integers(0, 256, (40, 16, 16, 1)).astype(np.float32)
    labels = np.repeat(np.arange(10) * 7, 4)  # ids need not be contiguous
    batches = ClusterBatches((images, labels), classes_per_batch=2, images_per_class=4, seed=1)
    assert (batches.batch_size, batches.steps_per_epoch, batches.image_size, batches.num_classes) == (8, 5, 16, 10)
    batches.sampler.set_clusters((labels >= 35).astype(np.int64), k=2)
    batches.sampler.publish(0)
    x, y = next(iter(batches.dataset()))
    batches.sampler.close()
    assert x["images"].shape == (8, 16, 16, 1)
    counts = np.unique(y.numpy(), return_counts=True)[1]
    assert len(counts) == 2 and set(counts) == {4}
    assert len(set(x["cluster"].numpy())) == 1


def test_cluster_batches_refuse_what_is_not_images_and_class_ids():
    from tfdnc.data import ClusterBatches

    with pytest.raises(TypeError, match="source"):
        ClusterBatches("photos/")
    with pytest.raises(ValueError, match=r"\[0, 255\]"):
        ClusterBatches((np.full((8, 4, 4, 3), 300.0), np.arange(8) // 2))
    with pytest.raises(ValueError, match="class ids"):
        ClusterBatches((np.zeros((8, 4, 4, 3)), np.linspace(0, 1, 8)))


def test_the_training_dataset_alone_fails_naming_the_missing_schedule_instead_of_hanging():
    import tensorflow as tf

    from tfdnc.data import ClusterBatches

    images = np.zeros((16, 8, 8, 1), np.uint8)
    batches = ClusterBatches((images, np.arange(16) // 4), classes_per_batch=2, images_per_class=2,
                             first_epoch_timeout=1.0)
    with pytest.raises(tf.errors.OpError, match="DivideAndConquerSchedule"):
        next(iter(batches.dataset()))
