"""KerasHub transformer backbones (`--backbone hub:PRESET`): ViT, DINOv2, DINOv3.

`build_hub_backbone("hub:dinov2_small", (224, 224, 3))` returns a Keras model
that, like every tfdnc backbone, takes [0, 255] pixels and returns pooled
features. Inside it, in order:

1. the preset's image converter as plain Keras layers: per-channel
   `Rescaling(scale, offset)` from the preset's `image_converter.json` (or
   the family's published statistics when the folder has none, as a folder
   written by `Backbone.save_to_preset` alone), then a `Resizing` to the
   size the transformer needs when tfdnc's `--image-size` is not it (a
   multiple of the patch size; ViT: the preset's own size, its position
   embeddings are fixed);
2. the KerasHub backbone itself (a sequence of tokens out);
3. `TokenPooling`: the class token, or the mean of the patch tokens.

KerasHub is imported only when a hub backbone is built or checked, so tfdnc
without the `hub` extra is unchanged. A preset is a KerasHub preset name
(downloaded by KerasHub from Kaggle on first use, the path KerasHub
documents), a `kaggle://` or `hf://` handle, or a local preset folder.

Also here: the per-layer learning-rate multipliers of layer-wise decay
(`layer_decay_multipliers`) and the freezing of the first blocks
(`freeze_leading_blocks`), both keyed on the same numbering of the
transformer's layers (see `layer_ids`).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import keras
from keras import ops

HUB_PREFIX = "hub:"
POOLINGS = ("class", "mean")
_HANDLE_SCHEMES = ("kaggle://", "hf://", "modelscope://")

# Published normalisation of each family's weights, on the [0, 1] scale;
# used when a preset folder has no image_converter.json.
_IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
_HALF = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


@dataclass(frozen=True)
class HubFamily:
    """What tfdnc needs to know about one KerasHub backbone class.

    Attributes:
        block: class name of one transformer block (counted for layer ids).
        embedding: class name of the patch / position / token embedding layer.
        resizable: position embeddings follow any patch-multiple image size
            (interpolated or rotary); False: the preset's own size only.
        mean_std: (mean, std) on [0, 1], when the preset has no converter.
        source: where `mean_std` comes from.
    """

    block: str
    embedding: str
    resizable: bool
    mean_std: tuple
    source: str


FAMILIES: dict[str, HubFamily] = {
    # Google's ViT checkpoints scale pixels to [-1, 1] (mean = std = 0.5:
    # google/vit-base-patch16-224 preprocessor_config.json).
    "ViTBackbone": HubFamily("ViTEncoderBlock", "ViTPatchingAndEmbedding", False, _HALF,
                             "google/vit-base-patch16-224 preprocessor_config.json"),
    # DINOv2 / DINOv3 use ImageNet mean / std (facebookresearch/dinov2
    # dinov2/data/transforms.py IMAGENET_DEFAULT_MEAN / _STD).
    "DINOV2Backbone": HubFamily("DINOV2Layer", "DINOV2Embedding", True, _IMAGENET,
                                "facebookresearch/dinov2 dinov2/data/transforms.py"),
    "DINOV3Backbone": HubFamily("DINOV3Layer", "DINOV3Embedding", True, _IMAGENET,
                                "facebookresearch/dinov3 dinov3/data/transforms.py"),
}


def is_hub_backbone(name: str) -> bool:
    """True for `hub:PRESET` backbone names."""
    return isinstance(name, str) and name.startswith(HUB_PREFIX)


@keras.saving.register_keras_serializable(package="tfdnc")
class TokenPooling(keras.layers.Layer):
    """(batch, tokens, dim) -> (batch, dim): the class token or the mean of the patch tokens.

    Args:
        mode: "class" (token 0) or "mean" (mean of the tokens from
            `prefix_tokens` on: the patch tokens, without the class and
            register tokens).
        prefix_tokens: how many non-patch tokens lead the sequence (1 class
            token + the register tokens for DINOv2 / DINOv3; 1 or 0 for ViT).

    Examples:
        >>> TokenPooling("mean", prefix_tokens=1)(np.ones((2, 5, 8))).shape
        TensorShape([2, 8])
    """

    def __init__(self, mode: str = "class", prefix_tokens: int = 1, **kwargs):
        super().__init__(**kwargs)
        if mode not in POOLINGS:
            raise ValueError(f"TokenPooling: `mode` must be one of {POOLINGS}, got {mode!r}")
        if int(prefix_tokens) < 0 or (mode == "class" and int(prefix_tokens) < 1):
            raise ValueError(f"TokenPooling: `prefix_tokens` must be >= 0 (>= 1 for mode 'class'), "
                             f"got {prefix_tokens}")
        self.mode = mode
        self.prefix_tokens = int(prefix_tokens)

    def call(self, tokens):
        if self.mode == "class":
            return tokens[:, 0]
        return ops.mean(tokens[:, self.prefix_tokens:], axis=1)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[-1])

    def get_config(self):
        return {**super().get_config(), "mode": self.mode, "prefix_tokens": self.prefix_tokens}


@keras.saving.register_keras_serializable(package="tfdnc")
class HubTrunk(keras.layers.Layer):
    """A KerasHub backbone as one layer, whose frozen leading blocks survive saving.

    Keras does not save a variable's `trainable` flag, and a KerasHub
    backbone rebuilds its blocks from its own config; this layer keeps
    `freeze_layers` in its config and freezes again when a `.keras` file is
    loaded, so a loaded model trains (and restores its optimizer state) as
    the saved one did.

    Args:
        backbone: a KerasHub ViT / DINOv2 / DINOv3 backbone.
        freeze_layers: the embedding and the first `freeze_layers` blocks do
            not train (see `freeze_leading_blocks`).

    Examples:
        >>> trunk = HubTrunk(keras_hub.models.Backbone.from_preset(folder), freeze_layers=1)  # doctest: +SKIP
        >>> tokens = trunk(images)  # (batch, tokens, hidden_dim)  # doctest: +SKIP
    """

    def __init__(self, backbone: keras.Model, freeze_layers: int = 0, **kwargs):
        super().__init__(**kwargs)
        if type(backbone).__name__ not in FAMILIES:
            raise TypeError(f"HubTrunk: `backbone` must be one of {', '.join(FAMILIES)}, "
                            f"got {type(backbone).__name__}")
        self.backbone = backbone
        self.freeze_layers = int(freeze_layers)
        # DINOv2 / DINOv3's mask token replaces masked patches in their masked-image
        # pretraining only; nothing here masks patches, so it gets no gradient (and
        # Keras would warn about that on every trace): it does not train.
        for variable in backbone.weights:
            if variable.name == "mask_token":
                variable.trainable = False
        if self.freeze_layers:
            freeze_leading_blocks(backbone, self.freeze_layers)

    def build(self, input_shape):
        self.built = True  # the backbone is built by KerasHub already

    def call(self, images):
        # DINOv2 / DINOv3 name their input in a dict ({"images": ...}); ViT takes the tensor.
        inputs = self.backbone.input
        return self.backbone({key: images for key in inputs} if isinstance(inputs, dict) else images)

    def compute_output_shape(self, input_shape):
        return tuple(self.backbone.output_shape)

    def get_config(self):
        return {**super().get_config(), "backbone": keras.saving.serialize_keras_object(self.backbone),
                "freeze_layers": self.freeze_layers}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        _import_keras_hub()  # registers KerasHub's classes before they are rebuilt
        config["backbone"] = keras.saving.deserialize_keras_object(config["backbone"])
        return cls(**config)


# --- checking a preset without building it ----------------------------------------------


def _import_keras_hub():
    try:
        import keras_hub
    except ImportError as exc:
        raise ValueError(
            f"--backbone hub:...: KerasHub is not installed ({exc}); pip install 'tfdnc[hub]'"
        ) from None
    return keras_hub


def _is_local(preset: str) -> bool:
    return os.path.isdir(preset) or os.sep in preset or preset.startswith((".", "~"))


def check_hub_backbone(name: str) -> str:
    """Checks a `hub:PRESET` name without loading weights; returns the backbone's class name.

    A local folder must hold the `config.json` of a supported backbone
    class; a bare name must be one of KerasHub's presets of a supported
    family (`keras_hub.models.DINOV2Backbone.presets`, ...); a `kaggle://` /
    `hf://` handle is left to KerasHub (its class is known after download).
    Raises ValueError in one line naming the preset.

    Examples:
        >>> check_hub_backbone("hub:dinov2_small")  # a preset name: no download
        'DINOV2Backbone'
    """
    preset = name[len(HUB_PREFIX):] if is_hub_backbone(name) else name
    if not preset:
        raise ValueError("--backbone hub: needs a KerasHub preset name or a local preset folder "
                         "after 'hub:', e.g. hub:dinov2_small")
    if preset.startswith(_HANDLE_SCHEMES):
        _import_keras_hub()
        return ""
    if _is_local(preset):
        return _local_class_name(preset)
    keras_hub = _import_keras_hub()
    for class_name in FAMILIES:
        if preset in getattr(keras_hub.models, class_name).presets:
            return class_name
    known = sorted(p for c in FAMILIES for p in getattr(keras_hub.models, c).presets)
    raise ValueError(
        f"--backbone hub:{preset}: not a KerasHub ViT / DINOv2 / DINOv3 preset name nor a folder; "
        f"names: {', '.join(known)}"
    )


def _local_class_name(folder: str) -> str:
    config_file = os.path.join(os.path.expanduser(folder), "config.json")
    if not os.path.isdir(os.path.expanduser(folder)):
        raise ValueError(f"--backbone hub:{folder}: no such preset folder")
    if not os.path.isfile(config_file):
        raise ValueError(f"--backbone hub:{folder}: the folder has no config.json "
                         "(give a folder written by keras_hub Backbone.save_to_preset)")
    try:
        with open(config_file, encoding="utf-8") as f:
            class_name = json.load(f).get("class_name", "")
    except (OSError, ValueError, AttributeError) as exc:
        raise ValueError(f"--backbone hub:{folder}: {config_file} is not a KerasHub config ({exc})") from None
    if class_name not in FAMILIES:
        raise ValueError(f"--backbone hub:{folder}: backbone class {class_name or '(none)'!r} is not "
                         f"supported; supported: {', '.join(FAMILIES)}")
    _import_keras_hub()
    return class_name


# --- building -------------------------------------------------------------------------


def build_hub_backbone(
    name: str,
    input_shape: tuple[int, int, int] = (224, 224, 3),
    pooling: str | None = None,
    freeze_layers: int = 0,
) -> keras.Model:
    """A KerasHub transformer as a tfdnc backbone: [0, 255] pixels -> pooled features.

    Args:
        name: "hub:PRESET": a KerasHub preset name (downloaded by KerasHub,
            e.g. "hub:dinov2_small"), a `kaggle://` / `hf://` handle, or a
            local preset folder ("hub:/models/my_dinov2").
        input_shape: (height, width, 3): what the model takes. When the side
            is not what the transformer needs, a `Resizing` layer inside the
            model maps it (see the module docstring).
        pooling: "class" (the class token) or "mean" (mean of the patch
            tokens); None: the class token when the backbone has one, else
            the mean.
        freeze_layers: the patch embedding and the first `freeze_layers`
            transformer blocks stop training (0: all train).

    Returns:
        A `keras.Model` named "backbone" whose output is (batch, hidden_dim).

    Examples:
        >>> backbone = build_hub_backbone("hub:/tmp/tiny_dinov2", (32, 32, 3))  # doctest: +SKIP
    """
    class_name = _check_build(name, input_shape, pooling, freeze_layers)
    preset = os.path.expanduser(name[len(HUB_PREFIX):])
    keras_hub = _import_keras_hub()
    if not class_name:  # a kaggle:// or hf:// handle: KerasHub downloads, then we know the class
        class_name = _loaded_class_name(keras_hub, preset, name)
    family = FAMILIES[class_name]
    side = int(input_shape[0])
    hub, target = _load_preset(keras_hub, preset, name, family, side)
    scale, offset = _pixel_scale_offset(keras_hub, preset, family)

    inputs = keras.Input(shape=tuple(input_shape), name="pixels")
    x = keras.layers.Rescaling(scale, offset, name="pixel_normalization")(inputs)
    if target != side or int(input_shape[1]) != side:
        x = keras.layers.Resizing(target, target, name="patch_resize")(x)
    tokens = HubTrunk(hub, freeze_layers=int(freeze_layers), name="hub_trunk")(x)
    prefix = _prefix_tokens(hub)
    mode = pooling or ("class" if prefix else "mean")
    if mode == "class" and not prefix:
        raise ValueError(f"--backbone {name}: this backbone has no class token; use --backbone-pooling mean")
    features = TokenPooling(mode, prefix_tokens=prefix, name="token_pooling")(tokens)
    return keras.Model(inputs, features, name="backbone")


def _check_build(name: str, input_shape, pooling, freeze_layers) -> str:
    """`build_hub_backbone`'s checks; returns the backbone class name ("" for a kaggle:// or hf:// handle)."""
    class_name = check_hub_backbone(name)
    if len(input_shape) != 3 or input_shape[-1] != 3 or None in input_shape[:2]:
        raise ValueError(f"--backbone {name}: KerasHub transformers take RGB images of a fixed size "
                         f"(height, width, 3), got input shape {tuple(input_shape)}")
    if pooling is not None and pooling not in POOLINGS:
        raise ValueError(f"--backbone-pooling must be one of {POOLINGS}, got {pooling!r}")
    if int(freeze_layers) < 0:
        raise ValueError(f"--freeze-backbone-layers must be >= 0, got {freeze_layers}")
    return class_name


def _load_preset(keras_hub, preset: str, name: str, family, side: int):
    """The KerasHub backbone at the patch-grid side nearest `side` (if its family resizes), and that side."""
    options = {}
    policy = keras.config.dtype_policy().name
    if policy != "float32":
        options["dtype"] = policy  # the preset's config pins float32; follow mixed precision
    try:
        if family.resizable:
            patch = _preset_json(preset)["config"]["patch_size"]
            patch = int(patch[0] if isinstance(patch, (list, tuple)) else patch)
            target = max(patch, patch * round(side / patch))
            hub = keras_hub.models.Backbone.from_preset(preset, image_shape=(target, target, 3), **options)
        else:
            hub = keras_hub.models.Backbone.from_preset(preset, **options)
            target = int(hub.image_shape[0])
    except (OSError, ValueError, KeyError) as exc:
        raise ValueError(f"--backbone {name}: KerasHub could not load the preset ({exc})") from None
    return hub, target


def _loaded_class_name(keras_hub, preset: str, name: str) -> str:
    try:
        class_name = _preset_json(preset).get("class_name", "")
    except (OSError, ValueError, KeyError) as exc:
        raise ValueError(f"--backbone {name}: KerasHub could not load the preset ({exc})") from None
    if class_name not in FAMILIES:
        raise ValueError(f"--backbone {name}: backbone class {class_name!r} is not supported; "
                         f"supported: {', '.join(FAMILIES)}")
    return class_name


def _preset_json(preset: str) -> dict:
    """The preset's config.json (downloaded by KerasHub for names and handles).

    KerasHub has no public call that reads a preset's config without
    building the model; this is the function its own loaders use
    (keras_hub/src/utils/preset_utils.py `load_json`).
    """
    from keras_hub.src.utils.preset_utils import load_json

    return load_json(preset)


def _pixel_scale_offset(keras_hub, preset: str, family: HubFamily) -> tuple[list, list]:
    """[0, 255] -> what the weights expect: the preset's converter, else the family's statistics."""
    try:
        converter = keras_hub.layers.ImageConverter.from_preset(preset)
    except (FileNotFoundError, ValueError):
        converter = None
    if converter is not None and (converter.scale is not None or converter.offset is not None):
        scale = converter.scale if converter.scale is not None else 1.0
        offset = converter.offset if converter.offset is not None else 0.0
        return _per_channel(scale), _per_channel(offset)
    mean, std = family.mean_std
    return [1.0 / (255.0 * s) for s in std], [-m / s for m, s in zip(mean, std)]


def _per_channel(value) -> list:
    values = list(value) if isinstance(value, (list, tuple)) else [value] * 3
    return [float(v) for v in values]


def _prefix_tokens(hub) -> int:
    """Class token + register tokens leading the sequence."""
    if type(hub).__name__ == "ViTBackbone":
        return 1 if hub.use_class_token else 0
    return 1 + int(getattr(hub, "num_register_tokens", 0))


# --- layer numbering: layer-wise learning-rate decay and freezing ----------------------


def hub_trunk(model: keras.Model):
    """The KerasHub backbone inside a tfdnc backbone (or the model itself); None if there is none."""
    if type(model).__name__ in FAMILIES:
        return model
    for layer in _sublayers(model):
        if type(layer).__name__ in FAMILIES:
            return layer
    return None


def layer_ids(model: keras.Model) -> tuple[dict[int, int], int]:
    """{id(variable): layer id} of a hub backbone's variables, and the number of blocks L.

    The numbering of BEiT's layer-wise decay (microsoft/unilm
    beit/optim_factory.py, `get_num_layer_for_vit`), also used by MAE
    (facebookresearch/mae util/lr_decay.py): 0 for the embedding (patch
    projection, position embeddings, class / register / mask tokens),
    i + 1 for block i, L + 1 for everything after the blocks (the final
    layer norm; tfdnc's embedding head is outside the backbone and counts
    as L + 1 too).
    """
    trunk = hub_trunk(model)
    if trunk is None:
        raise ValueError("layer-wise learning rates and --freeze-backbone-layers need a hub: "
                         "transformer backbone")
    family = FAMILIES[type(trunk).__name__]
    ids: dict[int, int] = {}
    blocks = [layer for layer in _sublayers(trunk) if type(layer).__name__ == family.block]
    for layer in _sublayers(trunk):
        if type(layer).__name__ == family.embedding:
            for v in layer.weights:
                ids[id(v)] = 0
    for i, block in enumerate(blocks):
        for v in block.weights:
            ids[id(v)] = i + 1
    for v in trunk.weights:
        ids.setdefault(id(v), len(blocks) + 1)
    return ids, len(blocks)


def _sublayers(layer):
    """Every nested layer, depth first in creation order (Keras's `_flatten_layers` runs a stack,
    which lists blocks last to first)."""
    for sub in getattr(layer, "_layers", []):
        yield sub
        yield from _sublayers(sub)


def freeze_leading_blocks(model: keras.Model, n: int) -> int:
    """Stops training of the embedding and the first `n` blocks; returns how many variables froze.

    Each variable's `trainable` flag is cleared (Keras leaves such variables
    out of `trainable_variables`, so no optimizer touches them). Keras does
    not save the flag; `HubTrunk` keeps `n` in its config and calls this
    again on load.
    """
    ids, blocks = layer_ids(model)
    if n > blocks:
        raise ValueError(f"--freeze-backbone-layers {n}: the backbone has only {blocks} transformer blocks")
    frozen = 0
    for v in hub_trunk(model).weights:
        if ids[id(v)] <= n and v.trainable:
            v.trainable = False
            frozen += 1
    return frozen


def layer_decay_multipliers(model: keras.Model, decay: float) -> dict[str, float]:
    """{variable path: learning-rate multiplier} of layer-wise decay over a hub backbone.

    The multiplier of layer id i is `decay ** (L + 1 - i)` (BEiT / MAE), so
    the last block learns at `decay` times the head's rate and the patch
    embedding at `decay ** (L + 1)`; variables outside the backbone (the
    head) keep 1. Paths inside the backbone are unique (checked).

    Examples:
        >>> layer_decay_multipliers(backbone, 0.75)["encoder/layers_0/norm1/gamma"]  # 0.75 ** L  # doctest: +SKIP
    """
    if not 0 < decay <= 1:
        raise ValueError(f"--layer-decay must be in (0, 1], got {decay}")
    ids, blocks = layer_ids(model)
    multipliers: dict[str, float] = {}
    for v in hub_trunk(model).weights:
        if not v.trainable:
            continue
        value = float(decay ** (blocks + 1 - ids[id(v)]))
        if multipliers.get(v.path, value) != value:
            raise ValueError(f"layer_decay_multipliers: two variables share the path {v.path!r}")
        multipliers[v.path] = value
    return multipliers
