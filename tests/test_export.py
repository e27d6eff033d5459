"""The exporter: TF Serving layout, signatures, contract without tfdnc, bad input."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf

from tfdnc.backbones import build_backbone
from tfdnc.config import TrainConfig
from tfdnc.data.transforms import decode_image, eval_transform
from tfdnc.exporting import Gallery, contract, export_model, export_run, list_versions, next_version
from tfdnc.exporting.signatures import encode_png
from tfdnc.exporting.warmup import read_warmup_requests
from tfdnc.model import DivideAndConquerModel

from rankings import assert_top_k  # tests/rankings.py

IMAGE_SIZE = 16
RESIZE = 20
EMBED_DIM = 8


def tiny_model(seed: int = 0, fit_steps: int = 1) -> DivideAndConquerModel:
    """A DivideAndConquerModel after `fit_steps` steps (BN statistics moved off init)."""
    import keras

    keras.utils.set_random_seed(seed)
    backbone = build_backbone("small_cnn", (IMAGE_SIZE, IMAGE_SIZE, 1), width=4)
    model = DivideAndConquerModel(backbone, embedding_dim=EMBED_DIM, k_max=4, initial_k=2)
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    if fit_steps:
        rng = np.random.default_rng(seed)
        images = rng.uniform(0, 255, (8, IMAGE_SIZE, IMAGE_SIZE, 1)).astype("float32")
        labels = np.repeat(np.arange(2, dtype="int32"), 4)
        ds = tf.data.Dataset.from_tensors(
            ({"images": images, "cluster": np.zeros(8, "int32")}, labels)
        ).repeat()
        model.fit(ds, steps_per_epoch=fit_steps, epochs=1, verbose=0)
    return model


def random_png(rng, height, width, channels=3) -> bytes:
    return encode_png(rng.integers(0, 256, (height, width, channels), dtype=np.uint8))


def keras_reference(model, pngs) -> np.ndarray:
    """What the serving graph must compute: decode -> eval_transform -> model."""
    pixels = tf.stack([eval_transform(decode_image(p, 1), IMAGE_SIZE, RESIZE) for p in pngs])
    return model(pixels, training=False).numpy()


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture(scope="module")
def gallery_dir(tmp_path_factory):
    rng = np.random.default_rng(7)
    root = tmp_path_factory.mktemp("gallery")
    for i in range(6):
        sub = root / f"class{i % 2}"
        sub.mkdir(exist_ok=True)
        (sub / f"img{i}.png").write_bytes(random_png(rng, 18 + i, 24 - i))
    return root


@pytest.fixture(scope="module")
def exported(model, gallery_dir, tmp_path_factory):
    base = tmp_path_factory.mktemp("exports")
    path = export_model(model, base, "dnc", image_size=IMAGE_SIZE, resize_size=RESIZE,
                        gallery=str(gallery_dir), top_k=4)
    return base, path


@pytest.fixture(scope="module")
def loaded(exported):
    return tf.saved_model.load(exported[1])


# --- layout and versions --------------------------------------------------------


def test_layout_is_tf_serving_base_name_version(exported):
    base, path = exported
    assert path == os.path.join(base, "dnc", "1")
    assert {"assets.extra", "saved_model.pb", "variables"} <= set(os.listdir(path))
    assert list_versions(os.path.join(base, "dnc")) == [1]
    # Nothing but the version folder: the staging folder was renamed away.
    assert os.listdir(os.path.join(base, "dnc")) == ["1"]
    meta = json.load(open(os.path.join(path, contract.ASSETS_EXTRA, contract.METADATA_FILE)))
    assert meta["image_size"] == IMAGE_SIZE and meta["resize_size"] == RESIZE
    assert meta["channels"] == 1 and meta["num_learners"] == 2 and meta["gallery_size"] == 6


def test_version_is_readable_by_other_users_whatever_the_umask(model, tmp_path):
    """TF Serving often runs as another user: folders 0755, files 0644."""
    old_umask = os.umask(0o077)
    try:
        path = export_model(model, tmp_path, "m", image_size=IMAGE_SIZE)  # with warm-up
    finally:
        os.umask(old_umask)
    modes = {}
    for dirpath, dirnames, filenames in os.walk(path):
        modes[os.path.relpath(dirpath, path)] = os.stat(dirpath).st_mode & 0o777
        for name in filenames:
            modes[os.path.relpath(os.path.join(dirpath, name), path)] = (
                os.stat(os.path.join(dirpath, name)).st_mode & 0o777
            )
    assert {"saved_model.pb", "variables", os.path.join(contract.ASSETS_EXTRA, contract.METADATA_FILE)} <= set(modes)
    wrong = {name: oct(mode) for name, mode in modes.items()
             if mode != (0o755 if os.path.isdir(os.path.join(path, name)) else 0o644)}
    assert wrong == {}


def test_versions_increment_and_are_never_overwritten(model, tmp_path):
    first = export_model(model, tmp_path, "m", image_size=IMAGE_SIZE, warmup=False)
    os.makedirs(tmp_path / "m" / "7")  # a version someone else wrote
    (tmp_path / "m" / "7" / "saved_model.pb").write_bytes(b"keep me")
    second = export_model(model, tmp_path, "m", image_size=IMAGE_SIZE, warmup=False)
    assert first.endswith(os.sep + "1") and second.endswith(os.sep + "8")
    assert next_version(tmp_path / "m") == 9
    with pytest.raises(FileExistsError, match="never overwritten"):
        export_model(model, tmp_path, "m", image_size=IMAGE_SIZE, version=7, warmup=False)
    assert (tmp_path / "m" / "7" / "saved_model.pb").read_bytes() == b"keep me"
    explicit = export_model(model, tmp_path, "m", image_size=IMAGE_SIZE, version=3, warmup=False)
    assert explicit.endswith(os.sep + "3")
    assert list_versions(tmp_path / "m") == [1, 3, 7, 8]


def test_failed_export_leaves_no_version(model, tmp_path, monkeypatch):
    import keras

    def broken(self, *args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(type(keras.export.ExportArchive()), "write_out", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        export_model(model, tmp_path, "m", image_size=IMAGE_SIZE, warmup=False)
    assert os.listdir(tmp_path / "m") == []  # neither a version nor a staging folder


def test_any_keras_embedding_model_exports(tmp_path):
    """A plain functional model (no learners, no `image_shape`) gets the two embed signatures."""
    import keras

    from tfdnc.layers import L2Normalize

    inputs = keras.Input((IMAGE_SIZE, IMAGE_SIZE, 3))
    features = build_backbone("small_cnn", (IMAGE_SIZE, IMAGE_SIZE, 3), width=4)(inputs)
    plain = keras.Model(inputs, L2Normalize()(keras.layers.Dense(5)(features)))
    path = export_model(plain, tmp_path, "plain", image_size=IMAGE_SIZE, warmup=False)
    loaded = tf.saved_model.load(path)
    assert set(loaded.signatures) == {"serving_default", "embed_pixels"}
    png = random_png(np.random.default_rng(9), 21, 16)
    pixels = eval_transform(decode_image(png, 3), IMAGE_SIZE)[None]
    np.testing.assert_allclose(loaded.signatures["serving_default"](image_bytes=tf.constant([png]))["embeddings"],
                               plain(pixels).numpy(), atol=1e-5)


def test_bad_arguments_are_named(model, tmp_path):
    with pytest.raises(ValueError, match="resize_size"):
        export_model(model, tmp_path, "m", image_size=IMAGE_SIZE, resize_size=8)
    with pytest.raises(ValueError, match="name"):
        export_model(model, tmp_path, "a/b", image_size=IMAGE_SIZE)
    with pytest.raises(ValueError, match="gallery embeddings have 3 dims"):
        export_model(model, tmp_path, "m", image_size=IMAGE_SIZE,
                     gallery=(np.ones((2, 3)), ["a", "b"]))
    with pytest.raises(ValueError, match="one id per embedding"):
        Gallery(np.ones((2, EMBED_DIM)), ["a"])


# --- signatures -------------------------------------------------------------------


def test_signatures_names_dtypes_shapes(loaded):
    sigs = loaded.signatures
    assert set(sigs) == set(contract.SIGNATURES)

    def inputs(name):
        return {k: (v.dtype, v.shape.as_list()) for k, v in sigs[name].structured_input_signature[1].items()}

    def outputs(name):
        return {k: (v.dtype, v.shape.as_list()) for k, v in sigs[name].structured_outputs.items()}

    assert inputs("serving_default") == {"image_bytes": (tf.string, [None])}
    assert outputs("serving_default") == {"embeddings": (tf.float32, [None, EMBED_DIM])}
    assert inputs("embed_pixels") == {"pixels": (tf.float32, [None, IMAGE_SIZE, IMAGE_SIZE, 1])}
    assert outputs("embed_learners") == {"learner_embeddings": (tf.float32, [None, 2, EMBED_DIM])}
    assert outputs("search") == {
        "ids": (tf.string, [None, 4]),
        "similarities": (tf.float32, [None, 4]),
        "indices": (tf.int32, [None, 4]),
    }
    assert inputs("search_k") == {"image_bytes": (tf.string, [None]), "k": (tf.int32, [None])}
    assert outputs("search_k") == {
        "ids": (tf.string, [None, None]),
        "similarities": (tf.float32, [None, None]),
        "indices": (tf.int32, [None, None]),
    }


def test_graph_uses_only_core_tensorflow_ops(exported):
    """TF Serving cannot load custom ops: every op must be a registered core op."""
    from tensorflow.core.protobuf import saved_model_pb2

    saved = saved_model_pb2.SavedModel()
    saved.ParseFromString(open(os.path.join(exported[1], "saved_model.pb"), "rb").read())
    graph = saved.meta_graphs[0].graph_def
    ops = {n.op for n in graph.node} | {n.op for f in graph.library.function for n in f.node_def}
    functions = {f.signature.name for f in graph.library.function}
    unknown = sorted(op for op in ops - functions if not hasattr(tf.raw_ops, op))
    assert not unknown, unknown
    assert {"DecodeImage", "TopKV2", "Assert"} <= ops  # the in-graph decode, search and checks


def test_embed_signatures_match_keras_model(model, loaded):
    rng = np.random.default_rng(1)
    pngs = [random_png(rng, h, w) for h, w in [(16, 16), (30, 22), (17, 41)]]
    pngs.append(tf.io.encode_jpeg(rng.integers(0, 256, (23, 19, 3), dtype=np.uint8)).numpy())
    expected = keras_reference(model, pngs)
    got = loaded.signatures["serving_default"](image_bytes=tf.constant(pngs))["embeddings"].numpy()
    np.testing.assert_allclose(got, expected, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)

    pixels = rng.uniform(0, 255, (5, IMAGE_SIZE, IMAGE_SIZE, 1)).astype("float32")
    got = loaded.signatures["embed_pixels"](pixels=tf.constant(pixels))["embeddings"].numpy()
    np.testing.assert_allclose(got, model(pixels, training=False).numpy(), atol=1e-5)

    learners = loaded.signatures["embed_learners"](image_bytes=tf.constant(pngs))
    decoded = tf.stack([eval_transform(decode_image(p, 1), IMAGE_SIZE, RESIZE) for p in pngs])
    reference = model.learner_embeddings(decoded).numpy()[:, :2]
    np.testing.assert_allclose(learners["learner_embeddings"].numpy(), reference, atol=1e-5)


def test_search_matches_brute_force(model, loaded, gallery_dir):
    files = sorted(p for p in gallery_dir.rglob("*.png"))
    ids = [p.relative_to(gallery_dir).as_posix() for p in files]
    gallery = keras_reference(model, [p.read_bytes() for p in files])
    rng = np.random.default_rng(3)
    queries = [files[2].read_bytes(), random_png(rng, 25, 19)]
    q = keras_reference(model, queries)
    sims = q @ (gallery / np.linalg.norm(gallery, axis=1, keepdims=True)).T
    out = loaded.signatures["search"](image_bytes=tf.constant(queries))
    got = out["indices"].numpy()
    assert got.shape == (2, 4)
    assert_top_k(got, sims)  # near-ties in either order (tests/rankings.py)
    np.testing.assert_allclose(out["similarities"].numpy(), np.take_along_axis(sims, got, 1), atol=1e-5)
    assert [i.decode() for i in out["ids"].numpy()[0]] == [ids[j] for j in got[0]]
    assert out["ids"].numpy()[0, 0].decode() == ids[2]  # a gallery image finds itself


def test_search_k_answers_each_request_with_its_own_k(model, tmp_path, gallery_dir):
    path = export_model(model, tmp_path, "k", image_size=IMAGE_SIZE, resize_size=RESIZE,
                        gallery=str(gallery_dir), top_k=2, max_k=5, warmup=False)
    signatures = tf.saved_model.load(path).signatures
    files = sorted(gallery_dir.rglob("*.png"))
    gallery = keras_reference(model, [p.read_bytes() for p in files])
    queries = [files[4].read_bytes(), random_png(np.random.default_rng(8), 21, 26)]
    sims = keras_reference(model, queries) @ (gallery / np.linalg.norm(gallery, axis=1, keepdims=True)).T
    assert signatures["search"](image_bytes=tf.constant(queries))["indices"].shape == (2, 2)  # top_k
    for ks, width in [([1, 1], 1), ([5, 5], 5), ([3, 1], 3)]:
        out = signatures["search_k"](image_bytes=tf.constant(queries), k=tf.constant(ks))
        # Every row gets the batch's largest k, best first: its own top k lead.
        got = out["indices"].numpy()
        assert got.shape == (2, width)
        assert_top_k(got, sims)
        np.testing.assert_allclose(out["similarities"].numpy(), np.take_along_axis(sims, got, 1), atol=1e-5)
    assert json.load(open(os.path.join(path, contract.ASSETS_EXTRA, contract.METADATA_FILE)))["max_k"] == 5
    for ks, message in [([6, 1], r"`k`\[0\] = 6 is outside 1..5"), ([1, 0], r"`k`\[1\] = 0 is outside 1..5"),
                        ([2], r"one value per image")]:
        with pytest.raises(tf.errors.InvalidArgumentError, match=message):
            signatures["search_k"](image_bytes=tf.constant(queries), k=tf.constant(ks))


def test_max_k_is_clipped_to_the_gallery(model, tmp_path):
    emb = np.random.default_rng(6).normal(size=(3, EMBED_DIM))
    path = export_model(model, tmp_path, "small", image_size=IMAGE_SIZE, gallery=(emb, ["a", "b", "c"]),
                        top_k=10, max_k=100, warmup=False)
    meta = json.load(open(os.path.join(path, contract.ASSETS_EXTRA, contract.METADATA_FILE)))
    assert (meta["top_k"], meta["max_k"]) == (3, 3)
    search_k = tf.saved_model.load(path).signatures["search_k"]
    png = random_png(np.random.default_rng(2), 16, 16)
    assert search_k(image_bytes=tf.constant([png]), k=tf.constant([3]))["ids"].shape == (1, 3)
    with pytest.raises(tf.errors.InvalidArgumentError, match="outside 1..3"):
        search_k(image_bytes=tf.constant([png]), k=tf.constant([4]))


def test_a_bad_gallery_image_is_named(model, tmp_path):
    folder = tmp_path / "gallery"
    (folder / "cats").mkdir(parents=True)
    rng = np.random.default_rng(13)
    for i in range(3):
        (folder / "cats" / f"{i}.png").write_bytes(random_png(rng, 18, 18))
    (folder / "cats" / "1b.png").write_bytes(b"\x89PNG\r\n\x1a\n but cut short")
    with pytest.raises(ValueError, match=r"cannot embed gallery image '.*cats/1b\.png': "):
        export_model(model, tmp_path / "e", "g", image_size=IMAGE_SIZE, gallery=str(folder), warmup=False)
    assert list_versions(tmp_path / "e" / "g") == []


def test_gallery_from_npz_with_integer_ids(model, tmp_path):
    rng = np.random.default_rng(5)
    emb = rng.normal(size=(9, EMBED_DIM)).astype("float32")
    np.savez(tmp_path / "g.npz", embeddings=emb, ids=np.arange(100, 109))
    path = export_model(model, tmp_path / "exports", "g", image_size=IMAGE_SIZE, resize_size=RESIZE,
                        gallery=str(tmp_path / "g.npz"), top_k=3, warmup=False)
    search = tf.saved_model.load(path).signatures["search"]
    png = random_png(rng, 20, 20)
    out = search(image_bytes=tf.constant([png]))
    q = keras_reference(model, [png])[0]
    sims = (emb / np.linalg.norm(emb, axis=1, keepdims=True)) @ q
    assert out["ids"].dtype == tf.int64
    assert_top_k(out["ids"].numpy() - 100, sims[None])


# --- bad requests -------------------------------------------------------------------


@pytest.mark.parametrize(
    "batch, message",
    [
        ([], "empty batch"),
        ([b""], r"image_bytes`\[0\] \(0 bytes\) is not a JPEG/PNG"),
        (["PNG", b"not an image at all"], r"image_bytes`\[1\] \(19 bytes\) is not"),
        (["PNG", b"\x89PNG\r\n\x1a\n" + b"\0" * 30], "PNG"),  # a PNG header, corrupt body
    ],
)
def test_bad_images_fail_the_request_with_a_clear_error(loaded, batch, message):
    png = random_png(np.random.default_rng(0), 16, 16)
    batch = [png if item == "PNG" else item for item in batch]
    fn = loaded.signatures["serving_default"]
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        fn(image_bytes=tf.constant(batch, dtype=tf.string))
    # The graph keeps answering good requests afterwards.
    assert fn(image_bytes=tf.constant([png]))["embeddings"].shape == (1, EMBED_DIM)


def _pil_encode(fmt, height, width, mode="RGB", **options) -> bytes:
    import io

    from PIL import Image

    array = np.random.default_rng(height * width).integers(0, 256, (height, width, len(mode)), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(array, mode).save(buffer, fmt, **options)
    return buffer.getvalue()


def _webp(frames, **options) -> bytes:
    import io

    from PIL import Image

    mode = "RGBA" if frames[0].shape[-1] == 4 else "RGB"
    images = [Image.fromarray(f, mode) for f in frames]
    buffer = io.BytesIO()
    images[0].save(buffer, "WEBP", lossless=True, exact=True, save_all=len(images) > 1,
                   append_images=images[1:], **options)
    return buffer.getvalue()


def _grey_reference(model, rgb_frames) -> np.ndarray:
    """The documented conversion for BMP/GIF/WebP in a grey export: rgb_to_grayscale."""
    grey = [tf.image.rgb_to_grayscale(tf.constant(f[..., :3], tf.uint8)) for f in rgb_frames]
    return model(tf.stack([eval_transform(g, IMAGE_SIZE, RESIZE) for g in grey]), training=False).numpy()


def test_webp_bmp_gif_in_galleries_and_requests_of_a_grey_export(model, tmp_path):
    """WebP (still, alpha, animated), BMP and GIF wherever serving reads images.

    TensorFlow's decoders give these formats in no other channel count (WebP
    only at its own 3 or 4), so a grey export used to refuse them all; an
    animated WebP gives its first frame (`expand_animations=False`).
    """
    import io

    from PIL import Image

    rng = np.random.default_rng(21)
    rgb = [rng.integers(0, 256, (22, 19, 3), dtype=np.uint8) for _ in range(4)]
    # Alpha below 255, or the encoder leaves the alpha channel (and the flag) out.
    rgba = [np.dstack([f, np.full(f.shape[:2], 200, np.uint8)]) for f in rgb]
    bmp, gif = io.BytesIO(), io.BytesIO()
    Image.fromarray(rgb[3]).save(bmp, "BMP")
    Image.fromarray(rgb[3]).save(gif, "GIF")
    requests = {
        "still.webp": (_webp(rgb[:1]), rgb[0]),
        "alpha.webp": (_webp(rgba[1:2]), rgb[1]),
        "moving.WEBP": (_webp(rgba[2:], duration=100), rgb[2]),  # 2 frames: the first one counts
        "image.bmp": (bmp.getvalue(), rgb[3]),
        "image.gif": (gif.getvalue(), tf.io.decode_image(gif.getvalue(), 3, expand_animations=False).numpy()),
    }
    folder = tmp_path / "gallery"
    folder.mkdir()
    for name, (data, _) in requests.items():
        (folder / name).write_bytes(data)
    path = export_model(model, tmp_path, "webp", image_size=IMAGE_SIZE, resize_size=RESIZE,
                        gallery=str(folder), top_k=2, warmup=False)
    signatures = tf.saved_model.load(path).signatures
    names = list(requests)
    contents = tf.constant([requests[n][0] for n in names])
    got = signatures["serving_default"](image_bytes=contents)["embeddings"].numpy()
    np.testing.assert_allclose(got, _grey_reference(model, [requests[n][1] for n in names]), atol=1e-5)
    hits = signatures["search"](image_bytes=contents)
    assert [row[0].decode() for row in hits["ids"].numpy()] == names  # each finds itself in the gallery
    # An animated WebP without alpha cannot be decoded by TensorFlow (at 3
    # channels it is refused, at its own count the decoder corrupts memory):
    # refused, naming the image, before the decoder sees it.
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"`image_bytes`\[1\] is an animated WebP without alpha"):
        signatures["serving_default"](image_bytes=tf.constant([requests["still.webp"][0], _webp(rgb[:2], duration=100)]))


@pytest.mark.parametrize(
    "fmt, mode, options",
    [("PNG", "RGB", {}), ("JPEG", "RGB", {}), ("GIF", "RGB", {}), ("BMP", "RGB", {}),
     ("WEBP", "RGB", {"lossless": True}), ("WEBP", "RGB", {"quality": 80}),
     ("WEBP", "RGBA", {"quality": 80})],  # VP8L, VP8 and VP8X headers
)
def test_declared_image_size_matches_the_decoder(fmt, mode, options):
    from tfdnc.data.transforms import declared_image_size

    for height, width in [(17, 300), (301, 5)]:
        data = _pil_encode(fmt, height, width, mode, **options)
        decoded = tf.io.decode_image(data, expand_animations=False).shape
        assert [int(v) for v in declared_image_size(tf.constant(data))] == list(decoded[:2])


def test_top_down_bmp_and_unknown_data_sizes():
    from tfdnc.data.transforms import declared_image_size

    data = bytearray(_pil_encode("BMP", 9, 13))
    data[22:26] = (-9).to_bytes(4, "little", signed=True)  # rows stored top-down
    assert [int(v) for v in declared_image_size(tf.constant(bytes(data)))] == [9, 13]
    assert [int(v) for v in declared_image_size(tf.constant(b"no image"))] == [0, 0]


def test_oversized_images_are_refused_before_decoding(model, loaded):
    from tfdnc.exporting.signatures import ServingGraphs

    graphs = ServingGraphs(model, IMAGE_SIZE, channels=1, max_pixels=300)
    decode = tf.function(lambda b: graphs.decode(b, "serving_default"))
    rng = np.random.default_rng(4)
    assert decode(tf.constant([random_png(rng, 15, 20)])).shape == (1, IMAGE_SIZE, IMAGE_SIZE, 1)
    for data in (random_png(rng, 20, 16), _pil_encode("JPEG", 16, 20)):
        with pytest.raises(tf.errors.InvalidArgumentError,
                           match=r"`image_bytes`\[0\] is (16x20|20x16) pixels; this export decodes at most 300"):
            decode(tf.constant([data]))
    # A PNG header declaring 60000 x 60000 pixels over a few bytes (a
    # decompression bomb) fails the request under the default limit.
    bomb = bytearray(random_png(rng, 8, 8))
    bomb[16:24] = (60000).to_bytes(4, "big") * 2
    with pytest.raises(tf.errors.InvalidArgumentError, match="is 60000x60000 pixels"):
        loaded.signatures["serving_default"](image_bytes=tf.constant([bytes(bomb)]))


def test_wrong_pixels_fail_with_a_clear_error(loaded):
    fn = loaded.signatures["embed_pixels"]
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"must have shape \(batch, 16, 16, 1\), got\] \[1 12 12 1\]"):
        fn(pixels=tf.zeros((1, 12, 12, 1)))
    with pytest.raises(tf.errors.InvalidArgumentError, match="empty batch"):
        fn(pixels=tf.zeros((0, IMAGE_SIZE, IMAGE_SIZE, 1)))
    with pytest.raises((TypeError, ValueError, tf.errors.InvalidArgumentError)):
        fn(pixels=tf.zeros((1, IMAGE_SIZE, IMAGE_SIZE, 1), tf.int32))
    assert fn(pixels=tf.zeros((2, IMAGE_SIZE, IMAGE_SIZE, 1)))["embeddings"].shape == (2, EMBED_DIM)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_pixels_are_an_invalid_argument(loaded, bad):
    pixels = np.full((2, IMAGE_SIZE, IMAGE_SIZE, 1), 128.0, np.float32)
    pixels[1, 3, 4, 0] = bad
    with pytest.raises(tf.errors.InvalidArgumentError, match="`pixels` holds NaN or infinite values"):
        loaded.signatures["embed_pixels"](pixels=tf.constant(pixels))


@pytest.mark.parametrize("bad", [1e30, -1e30, 300.0, -3.0, 256.5])
def test_pixels_outside_0_255_are_an_invalid_argument(loaded, bad):
    pixels = np.full((2, IMAGE_SIZE, IMAGE_SIZE, 1), 128.0, np.float32)
    pixels[1, 3, 4, 0] = bad
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"`pixels` holds values outside \[0, 255\]"):
        loaded.signatures["embed_pixels"](pixels=tf.constant(pixels))


def test_pixels_at_the_ends_of_0_255_are_accepted(loaded):
    """Round-off of a client's float preprocessing, within PIXEL_SLACK, is no error."""
    pixels = np.full((4, IMAGE_SIZE, IMAGE_SIZE, 1), 128.0, np.float32)
    pixels[0], pixels[1], pixels[2, 0], pixels[3, 0] = 0.0, 255.0, -0.5, 255.9
    out = loaded.signatures["embed_pixels"](pixels=tf.constant(pixels))["embeddings"].numpy()
    assert out.shape == (4, EMBED_DIM) and np.all(np.isfinite(out))


def test_session_feed_of_wrong_shape_is_an_invalid_argument(exported):
    """TF Serving runs signatures through Session::Run feeds, which skip the
    Python-side shape check; the graph's own assertion must catch it."""
    path = exported[1]
    png = random_png(np.random.default_rng(1), 16, 16)  # eager, before the graph
    graph = tf.Graph()
    with graph.as_default(), tf.compat.v1.Session(graph=graph) as sess:
        meta = tf.compat.v1.saved_model.loader.load(sess, ["serve"], path)
        sig = meta.signature_def["embed_pixels"]
        feed = graph.get_tensor_by_name(sig.inputs["pixels"].name)
        fetch = graph.get_tensor_by_name(sig.outputs["embeddings"].name)
        # Session::Run without the Python client's feed-shape check, as TF
        # Serving's C++ server calls it.
        from tensorflow.python.client import pywrap_tf_session

        def run(array):
            return pywrap_tf_session.TF_SessionRun_wrapper(
                sess._session, None, {feed._as_tf_output(): array}, [fetch._as_tf_output()], [], None
            )[0]

        for bad in [(2, 12, 12, 1), (2, IMAGE_SIZE, IMAGE_SIZE, 3), (0, IMAGE_SIZE, IMAGE_SIZE, 1)]:
            with pytest.raises(tf.errors.InvalidArgumentError, match="embed_pixels: `pixels`"):
                run(np.zeros(bad, np.float32))
        with pytest.raises(tf.errors.InvalidArgumentError, match="NaN or infinite"):
            run(np.full((1, IMAGE_SIZE, IMAGE_SIZE, 1), np.nan, np.float32))
        with pytest.raises(tf.errors.InvalidArgumentError, match=r"outside \[0, 255\]"):
            run(np.full((1, IMAGE_SIZE, IMAGE_SIZE, 1), 1e30, np.float32))

        sig = meta.signature_def["search_k"]
        images, k = (graph.get_tensor_by_name(sig.inputs[name].name)._as_tf_output() for name in ("image_bytes", "k"))
        ids = graph.get_tensor_by_name(sig.outputs["ids"].name)._as_tf_output()
        for count, bad_k in ((2, np.int32(2)), (1, np.array([2, 2], np.int32))):  # one k for two images, ...
            with pytest.raises(tf.errors.InvalidArgumentError, match="`k` must hold one value per image"):
                pywrap_tf_session.TF_SessionRun_wrapper(
                    sess._session, None, {images: np.array([png] * count, dtype=object), k: bad_k}, [ids], [], None)
        assert run(np.zeros((2, IMAGE_SIZE, IMAGE_SIZE, 1), np.float32)).shape == (2, EMBED_DIM)


# --- warm-up ------------------------------------------------------------------------


def test_warmup_records_replay_on_every_signature_and_batch_size(exported, loaded):
    """One record per signature and batch size the kit's server-side batching runs."""
    from tfdnc.exporting.warmup import DEFAULT_WARMUP_BATCH_SIZES

    path = exported[1]
    warmup_file = os.path.join(path, contract.ASSETS_EXTRA, contract.WARMUP_FILE)
    logs = read_warmup_requests(warmup_file)
    seen = []
    for log in logs:
        request = log.predict_log.request
        assert request.model_spec.name == "dnc"
        inputs = {k: tf.constant(tf.make_ndarray(v)) for k, v in request.inputs.items()}
        sizes = {int(v.shape[0]) for v in inputs.values()}
        assert len(sizes) == 1  # every input batched alike (k too), as TF Serving's batching needs
        size = sizes.pop()
        outputs = loaded.signatures[request.model_spec.signature_name](**inputs)
        assert all(v.shape[0] == size for v in outputs.values())
        seen.append((request.model_spec.signature_name, size))
    assert sorted(seen) == sorted((s, b) for s in contract.SIGNATURES for b in DEFAULT_WARMUP_BATCH_SIZES)
    # 117 pixel images over the five sizes stay small (one value for the batch).
    assert os.path.getsize(warmup_file) < 64 * IMAGE_SIZE * IMAGE_SIZE * 4
    metadata = json.load(open(os.path.join(path, contract.ASSETS_EXTRA, contract.METADATA_FILE)))
    assert metadata["warmup_batch_sizes"] == list(DEFAULT_WARMUP_BATCH_SIZES)


def test_warmup_batch_sizes_are_chosen_and_checked(model, tmp_path):
    path = export_model(model, tmp_path, "w", image_size=IMAGE_SIZE, warmup_batch_sizes=[8, 2, 8])
    logs = read_warmup_requests(os.path.join(path, contract.ASSETS_EXTRA, contract.WARMUP_FILE))
    sizes = sorted({tf.make_ndarray(next(iter(log.predict_log.request.inputs.values()))).shape[0] for log in logs})
    assert sizes == [2, 8] and len(logs) == 2 * 3  # no gallery: three signatures
    for bad in ([], [0, 4], ["x"]):
        with pytest.raises(ValueError, match="warmup_batch_sizes"):
            export_model(model, tmp_path, "bad", image_size=IMAGE_SIZE, warmup_batch_sizes=bad)


# --- run directory and the stand-alone contract ----------------------------------------


@pytest.fixture(scope="module")
def run_dir(model, tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    TrainConfig(image_size=IMAGE_SIZE, resize_size=RESIZE, embedding_dim=EMBED_DIM, k_final=4).save(
        str(run / "config.json")
    )
    model.save(run / "model.keras")
    return run


def test_export_run_reads_config_and_model(model, run_dir, tmp_path):
    path = export_run(run_dir, tmp_path, "fromrun", warmup=False)
    fn = tf.saved_model.load(path).signatures["serving_default"]
    png = random_png(np.random.default_rng(2), 33, 27)
    np.testing.assert_allclose(
        fn(image_bytes=tf.constant([png]))["embeddings"].numpy(), keras_reference(model, [png]), atol=1e-5
    )
    with pytest.raises(FileNotFoundError, match="model.keras"):
        export_run(tmp_path, tmp_path, "x")


CONTRACT_SCRIPT = textwrap.dedent(
    """
    import importlib.util, json, sys

    class BlockTfdnc:
        # Guarantees tfdnc cannot help even if it were installed in the venv.
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] == "tfdnc":
                raise ModuleNotFoundError("tfdnc is not available in this process")
            return None

    sys.meta_path.insert(0, BlockTfdnc())
    try:
        import tfdnc
        tfdnc_importable = True
    except ImportError:
        tfdnc_importable = False

    import numpy as np
    import tensorflow as tf

    export, pngs_file, pixels_file, out_file = sys.argv[1:]
    loaded = tf.saved_model.load(export)
    signatures = {}
    for name, fn in loaded.signatures.items():
        signatures[name] = {
            "inputs": {k: [v.dtype.name, v.shape.as_list()] for k, v in fn.structured_input_signature[1].items()},
            "outputs": {k: [v.dtype.name, v.shape.as_list()] for k, v in fn.structured_outputs.items()},
        }
    pngs = list(np.load(pngs_file, allow_pickle=True))
    pixels = np.load(pixels_file)
    result = {
        "tfdnc_importable": tfdnc_importable,
        "signatures": signatures,
        "serving_default": loaded.signatures["serving_default"](image_bytes=tf.constant(pngs))["embeddings"].numpy().tolist(),
        "embed_pixels": loaded.signatures["embed_pixels"](pixels=tf.constant(pixels))["embeddings"].numpy().tolist(),
        "search_ids": [[i.decode() for i in row] for row in loaded.signatures["search"](image_bytes=tf.constant(pngs))["ids"].numpy()],
        "tfdnc_modules": sorted(m for m in sys.modules if m.split(".")[0] == "tfdnc"),
    }
    json.dump(result, open(out_file, "w"))
    """
)


def test_contract_fresh_process_with_only_tensorflow(model, exported, tmp_path):
    rng = np.random.default_rng(11)
    pngs = [random_png(rng, h, w) for h, w in [(16, 16), (40, 21), (19, 55)]]
    pixels = rng.uniform(0, 255, (4, IMAGE_SIZE, IMAGE_SIZE, 1)).astype("float32")
    np.save(tmp_path / "pngs.npy", np.array(pngs, dtype=object), allow_pickle=True)
    np.save(tmp_path / "pixels.npy", pixels)
    (tmp_path / "contract.py").write_text(CONTRACT_SCRIPT)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    proc = subprocess.run(
        [sys.executable, "-I", str(tmp_path / "contract.py"), exported[1],
         str(tmp_path / "pngs.npy"), str(tmp_path / "pixels.npy"), str(tmp_path / "out.json")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.load(open(tmp_path / "out.json"))
    assert out["tfdnc_importable"] is False
    assert out["tfdnc_modules"] == []  # no tfdnc code, so no tfdnc Keras objects
    sigs = out["signatures"]
    assert sigs["serving_default"] == {
        "inputs": {"image_bytes": ["string", [None]]},
        "outputs": {"embeddings": ["float32", [None, EMBED_DIM]]},
    }
    assert sigs["embed_pixels"]["inputs"] == {"pixels": ["float32", [None, IMAGE_SIZE, IMAGE_SIZE, 1]]}
    assert set(sigs["search"]["outputs"]) == {"ids", "similarities", "indices"}
    assert set(sigs["embed_learners"]["outputs"]) == {"learner_embeddings"}
    np.testing.assert_allclose(out["serving_default"], keras_reference(model, pngs), atol=1e-5)
    np.testing.assert_allclose(out["embed_pixels"], model(pixels, training=False).numpy(), atol=1e-5)
    assert len(out["search_ids"]) == 3 and len(out["search_ids"][0]) == 4


def test_saved_model_cli_show_all(exported):
    cli = shutil.which("saved_model_cli") or os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
    if not os.path.exists(cli):
        pytest.skip("saved_model_cli is not installed beside this Python")
    proc = subprocess.run([cli, "show", "--all", "--dir", exported[1]], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    for name in contract.SIGNATURES:
        assert f"signature_def['{name}']" in proc.stdout
    assert "inputs['image_bytes'] tensor_info:" in proc.stdout
    assert "outputs['similarities'] tensor_info:" in proc.stdout
    assert "shape: (-1, 16, 16, 1)" in proc.stdout
