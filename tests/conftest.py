"""Shared fixtures: quiet TensorFlow, small data sets and tiny models."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from tfdnc.datasets.base import DataSplits, ImageSet  # noqa: E402


def digits_retrieval_splits(classes: int = 8, test_fraction: float = 0.3, seed: int = 0) -> DataSplits:
    """scikit-learn digits of `classes` classes (16 x 16), images held out per class.

    Train and test share classes here (unlike the benchmarks) so that a
    handful of steps on a tiny CNN measurably moves Recall@1, and K can grow
    to 4 (which needs >= 8 training classes).
    """
    from tfdnc.datasets.default import load_digits_upscaled

    full = load_digits_upscaled(train_classes=tuple(range(5)))
    images = np.concatenate([full.train.images, full.test.images])
    labels = np.concatenate([full.train.labels, full.test.labels])
    keep = labels < classes
    images, labels = images[keep], labels[keep]
    rng = np.random.default_rng(seed)
    is_test = np.zeros(len(labels), bool)
    for c in range(classes):
        index = np.flatnonzero(labels == c)
        is_test[rng.choice(index, int(len(index) * test_fraction), replace=False)] = True
    return DataSplits(
        train=ImageSet(labels=labels[~is_test], images=images[~is_test], name="digits8/train"),
        test=ImageSet(labels=labels[is_test], images=images[is_test], name="digits8/test"),
        protocol="default",
    )


@pytest.fixture(scope="session")
def digits8() -> DataSplits:
    return digits_retrieval_splits()


def tiny_model(input_shape=(16, 16, 1), embedding_dim=16, k_max=4, mask_mode="learnable", loss=None,
               mask_loss_weight=0.01, lr=1e-3, width=8, **model_options):
    import keras

    from tfdnc.backbones import build_backbone
    from tfdnc.model import DivideAndConquerModel

    backbone = build_backbone("small_cnn", input_shape, width=width)
    model = DivideAndConquerModel(backbone, embedding_dim=embedding_dim, k_final=k_max, mask_mode=mask_mode,
                                  mask_loss_weight=mask_loss_weight, **model_options)
    model.compile(optimizer=keras.optimizers.Adam(lr), loss=loss)
    return model


@pytest.fixture
def make_tiny_model():
    return tiny_model
