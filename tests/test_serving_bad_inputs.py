"""The bad-input corpus (tests/badimages.py) through the serving graphs and an export gallery.

Every bad file sent in a request fails that request with INVALID_ARGUMENT
whose message names its index in the batch (never a crash inside TensorFlow,
and the model keeps answering); every odd file embeds where the training decoder reads it; a bad
file in a gallery folder fails the export with an error naming the file,
and leaves no version behind.
"""

from __future__ import annotations

import numpy as np
import pytest

from tfdnc.backbones import build_backbone
from tfdnc.exporting import export_model, list_versions
from tfdnc.exporting.signatures import encode_png
from tfdnc.model import DivideAndConquerModel
from tfdnc.serving import ExportedModel, ServingError

from badimages import bad_file_contents, write_odd_files  # tests/badimages.py

SIZE = 16


@pytest.fixture(scope="module", params=[1, 3], ids=["grey", "rgb"])
def served(request, tmp_path_factory):
    import keras

    channels = request.param
    keras.utils.set_random_seed(0)
    model = DivideAndConquerModel(build_backbone("small_cnn", (SIZE, SIZE, channels), width=4),
                                  embedding_dim=8, k_max=2, initial_k=2)
    base = tmp_path_factory.mktemp(f"bad_inputs_{channels}")
    rng = np.random.default_rng(0)
    export_model(model, base, "dnc", image_size=SIZE, gallery=(rng.normal(size=(4, 8)), list("abcd")),
                 top_k=2, warmup=False)
    return model, base, ExportedModel(base / "dnc")


GOOD = encode_png(np.random.default_rng(1).integers(0, 256, (20, 20, 3), dtype=np.uint8))


@pytest.mark.parametrize("name", sorted(bad_file_contents()))
def test_each_bad_file_fails_its_request_by_index(served, name):
    _, _, exported = served
    data = bad_file_contents()[name]
    for signature in ("serving_default", "embed_learners", "search"):
        with pytest.raises(ServingError) as err:
            exported.predict({"image_bytes": np.array([GOOD, data], dtype=object)}, signature)
        assert err.value.code == "INVALID_ARGUMENT", (name, err.value)
        if data[:3] not in (b"\xff\xd8\xff", b"\x89PN"):  # a truncated JPEG/PNG: the decoder's own words
            assert "`image_bytes`[1]" in err.value.details, (name, err.value.details)
    assert exported.embed([GOOD]).shape == (1, 8)  # still serving


def test_odd_files_embed_where_the_training_decoder_reads_them(served, tmp_path):
    """CMYK, palette, alpha, 16-bit, 1-bit PNG, animated GIF, 8/32-bit BMP, WebP: as training reads them."""
    import tensorflow as tf

    from tfdnc.data.transforms import decode_image

    _, _, exported = served
    channels = exported.export_metadata["channels"]
    embedded = []
    for name in sorted(write_odd_files(tmp_path)):
        data = (tmp_path / name).read_bytes()
        try:
            decode_image(tf.constant(data), channels)
            trains = True
        except tf.errors.InvalidArgumentError:
            trains = False
        if trains:
            assert np.all(np.isfinite(exported.embed([data]))), name
            embedded.append(name)
        else:
            with pytest.raises(ServingError) as err:
                exported.embed([data])
            assert err.value.code == "INVALID_ARGUMENT", name
    assert len(embedded) >= 11, embedded  # all but what TF cannot convert to grey (a CMYK JPEG)


def test_a_bad_file_in_a_gallery_folder_is_named(served, tmp_path):
    model, _, _ = served
    folder = tmp_path / "gallery" / "shoes"
    folder.mkdir(parents=True)
    (folder / "fine.png").write_bytes(GOOD)
    for name, data in sorted(bad_file_contents().items()):
        if name.startswith("huge"):
            continue  # 8000 x 8000: refused by max_pixels like the rest, but slow to embed alone
        (folder / name).write_bytes(data)
        with pytest.raises(ValueError, match=f"cannot embed gallery image '.*shoes/{name}'"):
            export_model(model, tmp_path / "exports", "g", image_size=SIZE, gallery=str(tmp_path / "gallery"),
                         warmup=False)
        (folder / name).unlink()
    assert list_versions(tmp_path / "exports" / "g") == []
