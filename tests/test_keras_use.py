"""The Keras guide's examples (docs/guides/keras.md), run as printed, and the pieces they use."""

import os
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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


def _doc_examples() -> list[str]:
    """The python blocks of docs/guides/keras.md; one that says it continues gets the one before it."""
    with open(os.path.join(ROOT, "docs", "guides", "keras.md")) as f:
        blocks = re.findall(r"```python\n(.*?)```", f.read(), re.S)
    scripts = []
    for block in blocks:
        scripts.append(scripts[-1] + block if block.startswith("# continues the example above") else block)
    return scripts


# What each example must have done, run after it in the same script.
_CHECKS = [
    "assert model.num_learners == 2  # the schedule re-clustered and grew K inside fit\n",
    "assert predicted.shape == query_labels.shape and len(neighbours[0]) == 5\n"
    "assert 0 < calibration['threshold'] <= 1\n",
    # Each embedding lies beside its own label: the same image embedded in a fixed order has that label.
    "import numpy as np\n"
    "assert embeddings.shape == (48, 32)\n"
    "np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)\n"
    "fixed = keras.utils.image_dataset_from_directory('photos/', image_size=(32, 32), shuffle=False)\n"
    "reference = tfdnc.load_model('photos.keras').predict(fixed.map(lambda x, y: x), verbose=0)\n"
    "order = np.argmax(embeddings @ reference.T, axis=1)\n"
    "assert sorted(order) == list(range(48))\n"
    "assert (labels == np.concatenate([y for _, y in fixed])[order]).all()\n",
    "import os\n"
    "assert model.num_learners == 2 and os.path.exists('run/best.keras')\n",
]


@pytest.mark.parametrize("number", range(len(_CHECKS)))
def test_the_keras_section_examples_run_as_printed_without_a_warning(number, tmp_path):
    scripts = _doc_examples()
    assert len(scripts) == len(_CHECKS), "an example was added or removed: give it its check here"
    _write_photos(str(tmp_path / "photos"))
    script = tmp_path / "example.py"
    script.write_text(scripts[number] + "\n" + _CHECKS[number])
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHONWARN")}
    env.update(PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    # What a user running the example sees: Python's warnings, with its default filters.
    warned = re.findall(r"^.*\b\w*Warning: .*$", proc.stderr + proc.stdout, re.M)
    assert not warned, warned


def test_cluster_batches_take_arrays_and_give_per_cluster_class_balanced_batches():
    from tfdnc.data import ClusterBatches

    images = np.random.default_rng(0).integers(0, 256, (40, 16, 16, 1)).astype(np.float32)
    labels = np.repeat(np.arange(10) * 7, 4)  # ids need not be contiguous
    batches = ClusterBatches((images, labels), classes_per_batch=2, images_per_class=4, seed=1)
    assert (batches.batch_size, batches.steps_per_epoch, batches.image_size, batches.num_classes) == (8, 5, 16, 10)
    batches.sampler.set_clusters((labels >= 35).astype(np.int64), k=2)
    batches.sampler.publish(0)
    iterator = iter(batches.dataset())
    x, y = next(iterator)
    # As the pipeline documents: close the sampler before dropping the iterator, whose
    # planner may be waiting for the next epoch (dropping it first can wait forever).
    batches.sampler.close()
    del iterator
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
