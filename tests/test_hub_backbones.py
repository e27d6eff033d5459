"""KerasHub transformer backbones (`--backbone hub:PRESET`): build, train, save, export, serve.

Nothing is downloaded: tiny randomly initialised DINOv2 and ViT backbones
are saved as local preset folders with `save_to_preset`, as a user's
fine-tuned or converted preset would be.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

keras_hub = pytest.importorskip("keras_hub")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402
from test_export import CONTRACT_SCRIPT, random_png  # noqa: E402  the TensorFlow-only process

import tfdnc  # noqa: E402
from tfdnc.backbones import build_backbone  # noqa: E402
from tfdnc.config import TrainConfig  # noqa: E402
from tfdnc.data.transforms import decode_image, eval_transform  # noqa: E402
from tfdnc.exporting import contract  # noqa: E402
from tfdnc.exporting.warmup import read_warmup_requests  # noqa: E402
from tfdnc.hub_backbones import layer_decay_multipliers  # noqa: E402
from tfdnc.losses import LOSSES, get_loss, loss_from_config  # noqa: E402
from tfdnc.model import DivideAndConquerModel  # noqa: E402
from tfdnc.optimizers import LayerDecayAdam  # noqa: E402

SIZE, RESIZE, DIM = 16, 20, 8
IMAGENET_MEAN, IMAGENET_STD = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])


@pytest.fixture(scope="module")
def presets(tmp_path_factory):
    """{"dinov2": folder, "vit": folder}: a 2-block DINOv2 (patch 5, one register token, its
    image converter saved too) and a 2-block ViT (patch 4, backbone only)."""
    root = tmp_path_factory.mktemp("presets")
    keras.utils.set_random_seed(0)
    dinov2 = keras_hub.models.DINOV2Backbone(
        patch_size=5, num_layers=2, hidden_dim=16, num_heads=2, intermediate_dim=32,
        num_register_tokens=1, image_shape=(20, 20, 3), position_embedding_shape=(30, 30, 3))
    dinov2.save_to_preset(str(root / "dinov2"))
    converter = keras_hub.layers.DINOV2ImageConverter(
        image_size=(20, 20), scale=list(1 / (255 * IMAGENET_STD)), offset=list(-IMAGENET_MEAN / IMAGENET_STD))
    converter.save_to_preset(str(root / "dinov2"))
    vit = keras_hub.models.ViTBackbone(image_shape=(SIZE, SIZE, 3), patch_size=4, num_layers=2, num_heads=2,
                                       hidden_dim=16, mlp_dim=32)
    vit.save_to_preset(str(root / "vit"))
    return {"dinov2": str(root / "dinov2"), "vit": str(root / "vit")}


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    """8 classes x 6 PNGs (24 x 24 RGB): each class a colour plus noise; 4 classes train."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for c in range(8):
        os.makedirs(root / f"c{c}")
        colour = rng.uniform(0, 255, 3)
        for i in range(6):
            pixels = np.clip(colour + rng.normal(0, 40, (24, 24, 3)), 0, 255).astype(np.uint8)
            tf.io.write_file(str(root / f"c{c}" / f"{i}.png"), tf.io.encode_png(pixels))
    return str(root)


def _pixels(n=3, side=SIZE, seed=1):
    return np.random.default_rng(seed).uniform(0, 255, (n, side, side, 3)).astype("float32")


def test_dinov2_runs_the_presets_converter_resizes_to_a_patch_multiple_and_pools_the_class_token(presets):
    backbone = build_backbone("hub:" + presets["dinov2"], (SIZE, SIZE, 3))
    hub = keras_hub.models.Backbone.from_preset(presets["dinov2"], image_shape=(15, 15, 3))
    converter = keras_hub.layers.ImageConverter.from_preset(presets["dinov2"])
    pixels = _pixels()
    # KerasHub's own preprocessing: the converter's resize and scale / offset, at tfdnc's
    # image size rounded to a patch multiple (16 -> 15 px: 3 patches of 5).
    converter.image_size = (15, 15)
    expected = converter(pixels)
    tokens = hub({"images": expected})
    assert tokens.shape[1] == 1 + 1 + 9  # class + register + 3 x 3 patches
    np.testing.assert_allclose(backbone(pixels), tokens[:, 0], atol=1e-4)
    mean = build_backbone("hub:" + presets["dinov2"], (SIZE, SIZE, 3), pooling="mean")
    np.testing.assert_allclose(mean(pixels), np.mean(tokens[:, 2:], axis=1), atol=1e-4)


def test_a_backbone_only_vit_folder_uses_the_vit_pixel_scaling(presets):
    backbone = build_backbone("hub:" + presets["vit"], (SIZE, SIZE, 3))
    hub = keras_hub.models.Backbone.from_preset(presets["vit"])
    pixels = _pixels()
    np.testing.assert_allclose(backbone(pixels), hub(pixels / 127.5 - 1.0)[:, 0], atol=1e-4)


def test_a_dinov3_folder_pools_past_its_register_tokens(tmp_path):
    keras.utils.set_random_seed(0)
    dinov3 = keras_hub.models.DINOV3Backbone(patch_size=4, num_layers=2, hidden_dim=16, num_heads=2,
                                             intermediate_dim=32, num_register_tokens=2, image_shape=(SIZE, SIZE, 3))
    dinov3.save_to_preset(str(tmp_path / "dinov3"))
    pixels = _pixels()
    # ImageNet statistics: no converter saved
    tokens = dinov3({"pixel_values": (pixels / 255.0 - IMAGENET_MEAN) / IMAGENET_STD})
    assert tokens.shape[1] == 1 + 2 + 16
    for pooling, expected in (("class", tokens[:, 0]), ("mean", np.mean(tokens[:, 3:], axis=1))):
        backbone = build_backbone(f"hub:{tmp_path / 'dinov3'}", (SIZE, SIZE, 3), pooling=pooling)
        np.testing.assert_allclose(backbone(pixels), expected, atol=1e-4)


def test_freezing_and_layer_decay_follow_the_blocks(presets):
    backbone = build_backbone("hub:" + presets["vit"], (SIZE, SIZE, 3), freeze_layers=1)
    trainable = {v.path for v in backbone.trainable_variables}
    assert not any("patch_embedding" in p or "class_token" in p or "transformer_block_1/" in p for p in trainable)
    assert any("transformer_block_2/" in p for p in trainable)
    multipliers = layer_decay_multipliers(build_backbone("hub:" + presets["vit"], (SIZE, SIZE, 3)), 0.5)
    assert multipliers["vit_patching_and_embedding/patch_embedding/kernel"] == pytest.approx(0.5 ** 3)
    assert multipliers["vit_encoder/transformer_block_1/mlp/dense_1/kernel"] == pytest.approx(0.5 ** 2)
    assert multipliers["vit_encoder/transformer_block_2/mlp/dense_1/kernel"] == pytest.approx(0.5)
    assert multipliers["vit_encoder/ln/gamma"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="only 2 transformer blocks"):
        build_backbone("hub:" + presets["vit"], (SIZE, SIZE, 3), freeze_layers=3)


def test_layer_decay_adam_scales_each_variables_step():
    a, b = keras.Variable(np.zeros(2, "float32"), name="a"), keras.Variable(np.zeros(2, "float32"), name="b")
    optimizer = LayerDecayAdam(0.1, lr_multipliers={a.path: 0.25})
    optimizer.apply([np.ones(2, "float32"), np.ones(2, "float32")], [a, b])
    # Adam's first step moves every weight by lr (times the multiplier), whatever the gradient's size.
    np.testing.assert_allclose(a.numpy(), -0.025, rtol=1e-3)
    np.testing.assert_allclose(b.numpy(), -0.1, rtol=1e-3)
    restored = LayerDecayAdam.from_config(optimizer.get_config())
    assert restored.lr_multipliers == {a.path: 0.25}


@pytest.mark.parametrize("loss", sorted(LOSSES))
def test_every_loss_trains_a_dnc_model_on_a_hub_backbone(presets, loss):
    keras.utils.set_random_seed(0)
    backbone = build_backbone("hub:" + presets["vit"], (SIZE, SIZE, 3))
    model = DivideAndConquerModel(backbone, embedding_dim=DIM, k_final=2, initial_k=2)
    # The run's own loss arguments, Symmetrical Synthesis on (the default) where the loss takes it.
    config = TrainConfig(loss=loss, embedding_dim=DIM, k_final=2, symmetrical=loss != "proxy_anchor")
    # Eager: the graph-mode run is the end-to-end test below; here each loss only has to train.
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=loss_from_config(config.loss_config, num_classes=4, embedding_dim=DIM, num_learners=2),
                  run_eagerly=True)
    labels = np.repeat(np.arange(4, dtype="int32"), 2)
    data = tf.data.Dataset.from_tensors(({"images": _pixels(8), "cluster": np.ones(8, "int32")}, labels))
    history = model.fit(data.repeat(), steps_per_epoch=2, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"]).all()


def _reference(model, pngs) -> np.ndarray:
    """What the serving graph must compute: decode (RGB) -> eval_transform -> model."""
    pixels = tf.stack([eval_transform(decode_image(p, 3), SIZE, RESIZE) for p in pngs])
    return model(pixels, training=False).numpy()


@pytest.mark.parametrize("family, flags", [
    ("dinov2", ["--freeze-backbone-layers", "1", "--layer-decay", "0.75"]),
    ("vit", ["--backbone-pooling", "mean", "--loss", "margin", "--freeze-backbone-after-recluster"]),
])
@pytest.mark.filterwarnings("error:Skipping variable loading for optimizer")  # the state must load whole
def test_train_save_load_export_and_serve_without_tfdnc(presets, image_folder, tmp_path, family, flags):
    from tfdnc.cli import main as tfdnc_main
    from tfdnc.train import main as train_main

    run_dir = str(tmp_path / "run")
    argv = ["--dataset", "folder", "--data-dir", image_folder, "--backbone", "hub:" + presets[family],
            "--image-size", str(SIZE), "--resize-size", str(RESIZE), "--embedding-dim", str(DIM),
            "--k-final", "2", "--recluster-every", "1", "--epochs", "2", "--steps-per-epoch", "2",
            "--classes-per-batch", "2", "--images-per-class", "3", "--kmeans-iters", "5", "--eval-every", "100",
            "--learning-rate", "1e-3", "--full-embedding-epoch", "none", "--run-dir", run_dir, "--verbose", "0",
            "--no-export", *flags]
    assert train_main(argv) == 0
    metrics = json.load(open(os.path.join(run_dir, "metrics.json")))
    assert metrics["K"] == 2  # D&C grew 1 -> 2 on the transformer's features

    model = tfdnc.load_model(os.path.join(run_dir, "model.keras"))
    if family == "dinov2":  # the frozen patch embedding kept the preset's weights
        preset = keras_hub.models.Backbone.from_preset(presets[family])
        trunk = model.backbone.get_layer("hub_trunk").backbone
        kernel = trunk.embeddings.patch_embeddings.projection.kernel
        np.testing.assert_array_equal(kernel.numpy(), preset.embeddings.patch_embeddings.projection.kernel.numpy())
        block = trunk.encoder.layers[1].mlp.fc1.kernel  # trained
        assert not np.allclose(block.numpy(), preset.encoder.layers[1].mlp.fc1.kernel.numpy())
        # The loaded model keeps the freezing and the layer-wise learning rates: it trains on as saved.
        assert not kernel.trainable and block.trainable
        assert type(model.optimizer).__name__ == "LayerDecayAdam"
        assert model.optimizer.lr_multipliers[block.path] == pytest.approx(0.75)

    base = tmp_path / "exports"
    gallery = os.path.join(image_folder, "c5")
    assert tfdnc_main(["export", run_dir, "--base", str(base), "--name", "hub", "--gallery", gallery]) == 0
    version = str(base / "hub" / "1")
    loaded = tf.saved_model.load(version)
    logs = read_warmup_requests(os.path.join(version, contract.ASSETS_EXTRA, contract.WARMUP_FILE))
    assert logs
    for log in logs:  # the warm-up records replay on the export
        request = log.predict_log.request
        inputs = {k: tf.constant(tf.make_ndarray(v)) for k, v in request.inputs.items()}
        loaded.signatures[request.model_spec.signature_name](**inputs)

    rng = np.random.default_rng(3)
    pngs = [random_png(rng, h, w) for h, w in [(16, 16), (40, 21), (19, 55)]]
    pixels = _pixels(4)
    np.save(tmp_path / "pngs.npy", np.array(pngs, dtype=object), allow_pickle=True)
    np.save(tmp_path / "pixels.npy", pixels)
    (tmp_path / "contract.py").write_text(CONTRACT_SCRIPT)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    proc = subprocess.run(
        [sys.executable, "-I", str(tmp_path / "contract.py"), version,
         str(tmp_path / "pngs.npy"), str(tmp_path / "pixels.npy"), str(tmp_path / "out.json")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.load(open(tmp_path / "out.json"))
    assert out["tfdnc_importable"] is False and out["tfdnc_modules"] == []
    served = np.array(out["serving_default"])
    np.testing.assert_allclose(np.linalg.norm(served, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(served, _reference(model, pngs), atol=1e-4)
    np.testing.assert_allclose(out["embed_pixels"], model(pixels, training=False).numpy(), atol=1e-4)


@pytest.mark.parametrize("backbone, message", [
    ("hub:no_such_preset_xyz", "hub:no_such_preset_xyz: not a KerasHub ViT / DINOv2 / DINOv3 preset name"),
    ("hub:{tmp}/missing", "no such preset folder"),
    ("hub:{tmp}", "has no config.json"),
    ("hub:", "needs a KerasHub preset name"),
])
def test_a_bad_preset_is_one_line_with_exit_status_2(tmp_path, capsys, backbone, message):
    from tfdnc.cli import main as tfdnc_main

    assert tfdnc_main(["train", "--backbone", backbone.format(tmp=tmp_path), "--run-dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not os.path.exists(tmp_path / "run")


def test_a_folder_of_an_unsupported_class_is_named(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"class_name": "GemmaBackbone", "config": {}}))
    with pytest.raises(ValueError, match="'GemmaBackbone' is not supported"):
        build_backbone(f"hub:{tmp_path}", (SIZE, SIZE, 3))


def test_transformer_flags_on_a_cnn_are_refused(tmp_path, capsys):
    from tfdnc.cli import main as tfdnc_main

    assert tfdnc_main(["train", "--backbone", "small_cnn", "--layer-decay", "0.7", "--run-dir", str(tmp_path / "r")]) == 2
    assert "--layer-decay applies to hub: transformer backbones" in capsys.readouterr().err


def test_without_keras_hub_the_line_says_what_to_install(presets, monkeypatch):
    monkeypatch.setitem(sys.modules, "keras_hub", None)  # `import keras_hub` raises ImportError
    with pytest.raises(ValueError, match=r"KerasHub is not installed .*pip install 'tfdnc\[hub\]'"):
        build_backbone("hub:" + presets["vit"], (SIZE, SIZE, 3))
