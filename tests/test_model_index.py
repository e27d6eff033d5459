"""The model as a search engine (tensorflow-similarity's SimilarityModel methods) and calibration targets."""

from __future__ import annotations

import os

import numpy as np
import pytest

from tfdnc.index.calibrate import calibrate_threshold, threshold_curve
from tfdnc.index.model_index import ModelIndex

DIM = 16


def clustered(rng, n_per_class, classes=10, spread=0.45):
    """Unit vectors around one random centre per class; with this spread neighbours are sometimes wrong."""
    centres = np.random.default_rng(7).normal(size=(classes, DIM))
    labels = np.repeat(np.arange(classes), n_per_class)
    x = centres[labels] / np.linalg.norm(centres[labels], axis=1, keepdims=True)
    x = x + rng.normal(0, spread / np.sqrt(DIM), x.shape)
    return x / np.linalg.norm(x, axis=1, keepdims=True), labels


def test_calibrate_meets_its_precision_recall_and_f1_targets_on_held_out_queries():
    rng = np.random.default_rng(0)
    gallery, gallery_labels = clustered(rng, 5, spread=1.0)
    index = ModelIndex(DIM)
    index.add(gallery, gallery_labels)
    calibration, calibration_labels = clustered(rng, 300, spread=1.0)
    held_out, held_out_labels = clustered(rng, 300, spread=1.0)

    def precision_recall(threshold):
        hits = index.index.search(held_out, k=1)
        correct = np.array([row[0] == str(label) for row, label in zip(hits.labels, held_out_labels)])
        matched = hits.similarities[:, 0] >= threshold
        assert 0.5 < correct.mean() < 0.93  # some nearest neighbours are wrong: a threshold matters
        return (matched & correct).sum() / max(matched.sum(), 1), (matched & correct).sum() / correct.sum()

    result = index.calibrate(calibration, calibration_labels, metric="precision", target=0.9)
    assert result["matched"] > 1000  # enough matches that held-out precision is close (measured 0.898-0.91)
    precision, _ = precision_recall(result["threshold"])
    assert result["precision"] >= 0.9 and precision >= 0.9 - 0.04, precision
    result = index.calibrate(calibration, calibration_labels, metric="recall", target=0.8)
    _, recall = precision_recall(result["threshold"])
    assert result["recall"] >= 0.8 and recall >= 0.8 - 0.04, recall
    result = index.calibrate(calibration, calibration_labels)  # F1, the "optimal" cutpoint
    curve = result["curve"]
    assert result["f1"] == pytest.approx(max(curve["f1"]))
    assert len(curve["threshold"]) == len(curve["precision"]) == len(curve["recall"]) > 100
    assert index.threshold("optimal") == result["threshold"]


def test_calibrate_threshold_picks_the_documented_point_of_the_curve():
    s, ok = [0.9, 0.8, 0.7, 0.6, 0.5], [True, True, False, True, False]
    curve = threshold_curve(s, ok)
    np.testing.assert_allclose(curve["recall"], [1 / 3, 2 / 3, 2 / 3, 1, 1])
    assert calibrate_threshold(s, ok, 0.75)["threshold"] == 0.6  # lowest threshold keeping precision
    assert calibrate_threshold(s, ok, 1.0, metric="recall")["threshold"] == 0.6  # highest keeping recall
    assert calibrate_threshold(s, ok, None, metric="f1")["threshold"] == 0.6
    with pytest.raises(ValueError, match="no threshold reaches f1 0.99"):
        calibrate_threshold(s, ok, 0.99, metric="f1")


def test_match_gives_gallery_labels_and_the_no_match_label_to_far_away_queries():
    rng = np.random.default_rng(1)
    gallery, labels = clustered(rng, 4, spread=0.2)
    index = ModelIndex(DIM)
    index.add(gallery, labels * 10)  # labels need not be 0..n-1
    calibration, calibration_labels = clustered(rng, 20, spread=0.2)
    index.calibrate(calibration, calibration_labels * 10)
    np.testing.assert_array_equal(index.match(gallery), labels * 10)
    # Orthogonal to every class centre: far from all of them.
    centres = np.random.default_rng(7).normal(size=(10, DIM))
    far = np.linalg.svd(centres)[2][10:]  # the rows spanning what the centres leave out
    np.testing.assert_array_equal(index.match(far, no_match_label=-1), [-1] * len(far))
    assert index.match(far, cutpoint=-1.0).dtype == np.int64  # below every similarity: all match


def test_model_index_lookup_match_and_the_index_travels_with_save_load_and_export(tmp_path):
    import keras
    import tensorflow as tf

    import tfdnc
    from tfdnc.exporting.exporter import export_model
    from tfdnc.exporting.signatures import encode_png

    keras.utils.set_random_seed(0)
    model = tfdnc.DivideAndConquerModel(tfdnc.build_backbone("small_cnn", (16, 16, 3), width=8),
                                        embedding_dim=DIM, k_final=1)
    model.compile(optimizer="adam")
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (12, 16, 16, 3)).astype(np.uint8)
    labels = np.arange(12) // 2
    with pytest.raises(ValueError, match=r"model.index\(x, y\)"):
        model.lookup(images)
    ids = model.index(images, labels, data=[f"img{i}.png" for i in range(12)])
    assert list(ids) == list(range(12)) and model.index_size() == 12
    nearest = model.lookup(images, k=3)
    assert [row[0].data for row in nearest] == [f"img{i}.png" for i in range(12)]
    assert nearest[0][0].similarity == pytest.approx(1.0, abs=1e-4) and nearest[0][0].distance < 1e-4
    assert model.single_lookup(images[5], k=2)[0].label == labels[5]
    np.testing.assert_array_equal(model.match(images, cutpoint=0.99), labels)
    model.calibrate(images, labels)
    summary = model.index_summary()
    assert summary["count"] == 12 and "optimal" in summary["cutpoints"]
    retrieval = model.evaluate_retrieval(images, labels, ks=(1,))
    assert retrieval["recall@1"] == 1.0  # every image finds itself
    assert set(model.evaluate_classification(images, labels)) == {"optimal"}
    assert model.index_records(2) == [{"id": 0, "label": 0, "data": "img0.png"},
                                      {"id": 1, "label": 0, "data": "img1.png"}]

    model.save(str(tmp_path / "m.keras"))
    loaded = tfdnc.load_model(str(tmp_path / "m.keras"))
    again = loaded.lookup(images, k=3)
    assert [[h.id for h in row] for row in again] == [[h.id for h in row] for row in nearest]
    np.testing.assert_allclose([[h.similarity for h in row] for row in again],
                               [[h.similarity for h in row] for row in nearest], atol=1e-5)
    np.testing.assert_array_equal(loaded.match(images), model.match(images))

    folder = model.save_index(str(tmp_path / "gallery"))
    assert os.path.isfile(os.path.join(folder, "index.json"))  # what `tfdnc index` reads
    model.reset_index()
    assert model.index_size() == 0
    model.load_index(str(tmp_path / "gallery"))
    assert model.index_size() == 12

    # The export's search_k answers from the same gallery.
    path = export_model(model, str(tmp_path / "exports"), "m", image_size=16, warmup=False)
    search_k = tf.saved_model.load(path).signatures["search_k"]
    out = search_k(image_bytes=tf.constant([encode_png(image) for image in images[:4]]),
                   k=tf.constant([2, 2, 2, 2], tf.int32))
    assert [i.decode() for i in out["ids"].numpy()[:, 0]] == [f"img{i}.png" for i in range(4)]


def test_embed_with_labels_keeps_each_embedding_beside_its_label_on_a_reshuffling_dataset():
    import keras
    import tensorflow as tf

    import tfdnc

    keras.utils.set_random_seed(0)
    model = tfdnc.DivideAndConquerModel(tfdnc.build_backbone("small_cnn", (8, 8, 1), width=4),
                                        embedding_dim=8, k_final=1)
    images = np.random.default_rng(0).integers(0, 256, (20, 8, 8, 1)).astype(np.float32)
    dataset = tf.data.Dataset.from_tensor_slices((images, np.arange(20))).shuffle(20).batch(6)
    embeddings, labels = model.embed_with_labels(dataset)
    np.testing.assert_allclose(embeddings, model.predict(images[labels], verbose=0), atol=1e-5)
