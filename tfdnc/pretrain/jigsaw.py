"""The ordering pretext task: cut inputs into items, shuffle, classify the order.

Two item makers share one classifier:

- `JigsawTiles` cuts an image into a grid x grid set of tiles (Noroozi &
  Favaro, 2016): the image is resized to `grid * cell_size` squared, each
  cell gives one `tile_size` crop at a random offset inside the cell (so
  tiles never share an edge and the network cannot match borders), and each
  tile is normalised on its own (so brightness and colour carry no clue).
- `ClipFrames` takes a clip of T frames (the temporal variant): every frame is
  one item, cropped at its own random offset and normalised on its own.

`OrderPredictionModel` applies one backbone to every item (a shared trunk,
the same backbone later used for metric learning), concatenates the item
features and classifies which permutation of a fixed set was applied. Its
`train_step` draws the permutations on the fly from `sampling_logits`, a
variable the sampling policy (`tfdnc.pretrain.callbacks`) rewrites between
blocks of training steps; left at zeros it draws uniformly.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from tfdnc.pretrain.permutations import validate_permutations

# Normalised tiles are mapped back to pixel scale, so the backbone keeps its
# [0, 255] input contract (its first layer rescales pixels).
_TILE_MEAN = 127.5
_TILE_STD = 64.0


def shuffle_items(items: tf.Tensor, permutations: tf.Tensor, labels: tf.Tensor) -> tf.Tensor:
    """Reorders items: `out[b, i] = items[b, permutations[labels[b], i]]`.

    Args:
        items: (B, n, ...) tensor, items in their original order.
        permutations: (N, n) int permutation set.
        labels: (B,) int index of the permutation applied to each example.
    """
    order = tf.gather(tf.convert_to_tensor(permutations, tf.int32), tf.cast(labels, tf.int32))
    return tf.gather(items, order, axis=1, batch_dims=1)


def normalize_items(items: tf.Tensor, epsilon: float = 1.0) -> tf.Tensor:
    """Per-item standardisation, mapped back to the [0, 255] pixel range.

    Channel means are removed per item (no colour cue) and each item is
    divided by its own standard deviation (no contrast cue). `epsilon` (in
    pixel units) keeps flat items, such as MNIST background, from being
    blown up into noise.
    """
    mean = tf.reduce_mean(items, axis=(-3, -2), keepdims=True)
    centred = items - mean
    std = tf.sqrt(tf.reduce_mean(tf.square(centred), axis=(-3, -2, -1), keepdims=True))
    out = centred / tf.maximum(std, epsilon) * _TILE_STD + _TILE_MEAN
    return tf.clip_by_value(out, 0.0, 255.0)


def _crop_items(items, size, offsets):
    """Crops (B, n, S, S, C) items to (B, n, size, size, C) at per-item offsets (B, n, 2)."""
    steps = tf.range(size, dtype=tf.int32)
    rows = offsets[..., 0:1] + steps
    cols = offsets[..., 1:2] + steps
    items = tf.gather(items, rows, axis=2, batch_dims=2)
    return tf.gather(items, cols, axis=3, batch_dims=2)


@keras.saving.register_keras_serializable(package="tfdnc")
class JigsawTiles(keras.layers.Layer):
    """Cuts images into a grid of jittered, normalised tiles, in row-major order.

    Args:
        grid: tiles per side (3 for the classic jigsaw: 9 tiles).
        cell_size: the image is resized to `grid * cell_size` squared.
        tile_size: side of the crop taken inside each cell (<= cell_size).
        jitter: in training, crop each tile at a random offset inside its
            cell; otherwise (and always at inference) crop the cell's centre.
        normalize: standardise every tile on its own (see `normalize_items`).
        seed: seed of the jitter.

    Input: (B, H, W, C) images with values in [0, 255].
    Output: (B, grid * grid, tile_size, tile_size, C) float32 in [0, 255].

    Examples:
        >>> tiler = JigsawTiles(grid=3, cell_size=12, tile_size=10)
        >>> tiles = tiler(np.zeros((2, 28, 28, 1)), training=True)  # (2, 9, 10, 10, 1)
    """

    def __init__(self, grid: int = 3, cell_size: int = 12, tile_size: int = 10,
                 jitter: bool = True, normalize: bool = True, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        if grid < 2:
            raise ValueError(f"JigsawTiles: `grid` must be >= 2, got {grid}")
        if not 1 <= tile_size <= cell_size:
            raise ValueError(
                f"JigsawTiles: need 1 <= `tile_size` <= `cell_size`, got {tile_size} and {cell_size}"
            )
        self.grid = int(grid)
        self.cell_size = int(cell_size)
        self.tile_size = int(tile_size)
        self.jitter = bool(jitter)
        self.normalize = bool(normalize)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    @property
    def num_items(self) -> int:
        return self.grid * self.grid

    def cells(self, images: tf.Tensor) -> tf.Tensor:
        """The full grid cells, (B, grid * grid, cell_size, cell_size, C), row-major."""
        g, s = self.grid, self.cell_size
        images = tf.cast(images, tf.float32)
        if images.shape.rank != 4:
            raise ValueError(f"JigsawTiles: expected (B, H, W, C) images, got shape {images.shape}")
        images = tf.image.resize(images, (g * s, g * s), antialias=True)
        channels = tf.shape(images)[-1]
        cells = tf.reshape(images, tf.stack([-1, g, s, g, s, channels]))
        cells = tf.transpose(cells, (0, 1, 3, 2, 4, 5))
        return tf.reshape(cells, tf.stack([-1, g * g, s, s, channels]))

    def call(self, images, training=False):
        cells = self.cells(images)
        batch = tf.shape(cells)[0]
        margin = self.cell_size - self.tile_size
        if training and self.jitter and margin > 0:
            offsets = keras.random.randint(
                (batch, self.num_items, 2), 0, margin + 1, dtype="int32", seed=self.seed_generator
            )
        else:
            offsets = tf.fill(tf.stack([batch, self.num_items, 2]), margin // 2)
        tiles = _crop_items(cells, self.tile_size, offsets)
        return normalize_items(tiles) if self.normalize else tiles

    def get_config(self):
        return {**super().get_config(), "grid": self.grid, "cell_size": self.cell_size,
                "tile_size": self.tile_size, "jitter": self.jitter,
                "normalize": self.normalize, "seed": self.seed}


@keras.saving.register_keras_serializable(package="tfdnc")
class ClipFrames(keras.layers.Layer):
    """The temporal variant: each frame of a clip is one item.

    Args:
        crop_size: side of the crop taken from each frame.
        jitter: in training, crop every frame at its own random offset (so
            pixel-exact continuity between frames gives nothing away);
            otherwise crop the centre.
        normalize: standardise every frame on its own.
        seed: seed of the jitter.

    Input: (B, T, H, W, C) clips in [0, 255] with H, W >= crop_size.
    Output: (B, T, crop_size, crop_size, C) float32.

    Examples:
        >>> frames = ClipFrames(crop_size=24)(np.zeros((2, 4, 28, 28, 1)))  # (2, 4, 24, 24, 1)
    """

    def __init__(self, crop_size: int, jitter: bool = True, normalize: bool = True,
                 seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        if crop_size < 1:
            raise ValueError(f"ClipFrames: `crop_size` must be >= 1, got {crop_size}")
        self.crop_size = int(crop_size)
        self.jitter = bool(jitter)
        self.normalize = bool(normalize)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, clips, training=False):
        clips = tf.cast(clips, tf.float32)
        if clips.shape.rank != 5:
            raise ValueError(f"ClipFrames: expected (B, T, H, W, C) clips, got shape {clips.shape}")
        height, width = clips.shape[2], clips.shape[3]
        if height is None or width is None or min(height, width) < self.crop_size:
            raise ValueError(
                f"ClipFrames: frames must be static and at least {self.crop_size} px, got {clips.shape}"
            )
        batch, frames = tf.shape(clips)[0], tf.shape(clips)[1]
        # Square the frames first so one offset range fits both axes.
        side = min(height, width)
        top, left = (height - side) // 2, (width - side) // 2
        clips = clips[:, :, top : top + side, left : left + side]
        margin = side - self.crop_size
        if training and self.jitter and margin > 0:
            offsets = keras.random.randint(
                tf.stack([batch, frames, 2]), 0, margin + 1, dtype="int32", seed=self.seed_generator
            )
        else:
            offsets = tf.fill(tf.stack([batch, frames, 2]), margin // 2)
        crops = _crop_items(clips, self.crop_size, offsets)
        return normalize_items(crops) if self.normalize else crops

    def get_config(self):
        return {**super().get_config(), "crop_size": self.crop_size, "jitter": self.jitter,
                "normalize": self.normalize, "seed": self.seed}


@keras.saving.register_keras_serializable(package="tfdnc")
class OrderPredictionModel(keras.Model):
    """Shared-trunk classifier of which permutation shuffled the items.

    Each item goes through `backbone` (the same weights for all items), then
    a per-item dense layer; the item features are concatenated in their
    shuffled order and a two-layer head scores the N permutations.

    `fit` takes a data set of raw inputs (images, or clips with `ClipFrames`),
    optionally as `(inputs, ignored_labels)`: `train_step` makes the items,
    draws one permutation per example from `softmax(sampling_logits)`, shuffles
    and trains on the permutation index. `permutation_counts` accumulates how
    often each permutation was drawn (read and reset by the policy callback).

    Args:
        backbone: Keras model mapping one item (h, w, C) in [0, 255] to a
            feature vector, e.g. `tfdnc.backbones.build_backbone(...)`.
        permutations: (N, n) permutation set (`generate_permutations`).
        items: the item maker, `JigsawTiles` or `ClipFrames`.
        item_units: width of the per-item dense layer.
        hidden_units: width of the head's hidden layer.
        dropout: dropout rate before the last layer.
        seed: seed of the permutation draws.

    Examples:
        >>> from tfdnc.backbones import build_backbone
        >>> from tfdnc.pretrain.permutations import generate_permutations
        >>> images = np.random.default_rng(0).integers(0, 256, (32, 36, 36, 1)).astype("float32")  # 3 x 3 cells of 12 px
        >>> images_dataset = tf.data.Dataset.from_tensor_slices(images).batch(8)
        >>> backbone = build_backbone("small_cnn", (10, 10, 1))
        >>> model = OrderPredictionModel(backbone, generate_permutations(24), JigsawTiles())
        >>> model.compile(optimizer="adam")
        >>> history = model.fit(images_dataset, epochs=1, verbose=0)
        >>> int(model.permutation_counts.numpy().sum())
        32
    """

    def __init__(self, backbone: keras.Model, permutations, items: keras.layers.Layer,
                 item_units: int = 128, hidden_units: int = 256, dropout: float = 0.3,
                 seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        perms = validate_permutations(permutations, "OrderPredictionModel: `permutations`")
        num_items = getattr(items, "num_items", None)
        if num_items is not None and num_items != perms.shape[1]:
            raise ValueError(
                f"OrderPredictionModel: the item maker yields {num_items} items but the "
                f"permutations order {perms.shape[1]}"
            )
        if item_units < 1 or hidden_units < 1:
            raise ValueError("OrderPredictionModel: `item_units` and `hidden_units` must be >= 1")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"OrderPredictionModel: `dropout` must be in [0, 1), got {dropout}")
        self.backbone = backbone
        self.items = items
        self.permutations = perms
        self.num_permutations = int(perms.shape[0])
        self.num_items = int(perms.shape[1])
        self.item_units = int(item_units)
        self.hidden_units = int(hidden_units)
        self.dropout_rate = float(dropout)
        self.seed = seed
        self.item_dense = keras.layers.Dense(self.item_units, activation="relu", name="item_dense")
        self.hidden = keras.layers.Dense(self.hidden_units, activation="relu", name="hidden")
        self.dropout = keras.layers.Dropout(self.dropout_rate)
        self.classifier = keras.layers.Dense(self.num_permutations, name="classifier")
        self.sampling_logits = self.add_weight(
            shape=(self.num_permutations,), initializer="zeros", trainable=False,
            name="sampling_logits")
        self.permutation_counts = self.add_weight(
            shape=(self.num_permutations,), initializer="zeros", trainable=False,
            name="permutation_counts")
        self.sample_seed = keras.random.SeedGenerator(seed)
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.accuracy_tracker = keras.metrics.SparseCategoricalAccuracy(name="accuracy")

    def call(self, items, training=False):
        """Permutation logits (B, N) for already shuffled items (B, n, h, w, C)."""
        shape = tf.shape(items)
        flat = tf.reshape(items, tf.concat([[-1], shape[2:]], axis=0))
        features = self.item_dense(self.backbone(flat, training=training))
        features = tf.reshape(features, (-1, self.num_items * self.item_units))
        hidden = self.dropout(self.hidden(features), training=training)
        return self.classifier(hidden)

    @property
    def metrics(self):
        return [self.loss_tracker, self.accuracy_tracker]

    def sample_permutations(self, batch_size) -> tf.Tensor:
        """Draws (batch_size,) permutation indices from softmax(sampling_logits)."""
        draws = keras.random.categorical(
            self.sampling_logits[None, :], batch_size, seed=self.sample_seed)
        return tf.cast(draws[0], tf.int32)

    def make_examples(self, inputs, labels=None, training=False):
        """Inputs -> (shuffled items, permutation labels); draws labels if None."""
        items = self.items(inputs, training=training)
        if labels is None:
            labels = self.sample_permutations(tf.shape(items)[0])
        return shuffle_items(items, self.permutations, labels), labels

    def train_step(self, data):
        inputs = data[0] if isinstance(data, (tuple, list)) else data
        shuffled, labels = self.make_examples(inputs, training=True)
        self.permutation_counts.assign_add(
            tf.math.bincount(labels, minlength=self.num_permutations,
                             maxlength=self.num_permutations, dtype=tf.float32))
        with tf.GradientTape() as tape:
            logits = self(shuffled, training=True)
            loss = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(
                labels, logits, from_logits=True))
            if self.losses:
                loss = loss + tf.add_n(self.losses)
        gradients = tape.gradient(loss, self.trainable_variables)
        self.optimizer.apply_gradients(zip(gradients, self.trainable_variables))
        self.loss_tracker.update_state(loss)
        self.accuracy_tracker.update_state(labels, logits)
        return {m.name: m.result() for m in self.metrics}

    def test_step(self, data):
        inputs = data[0] if isinstance(data, (tuple, list)) else data
        batch = tf.shape(inputs)[0]
        # Deterministic and balanced: example b is shuffled by permutation b mod N.
        labels = tf.math.floormod(tf.range(batch, dtype=tf.int32), self.num_permutations)
        shuffled, labels = self.make_examples(inputs, labels=labels, training=False)
        logits = self(shuffled, training=False)
        loss = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(
            labels, logits, from_logits=True))
        self.loss_tracker.update_state(loss)
        self.accuracy_tracker.update_state(labels, logits)
        return {m.name: m.result() for m in self.metrics}

    def get_config(self):
        return {
            **super().get_config(),
            "backbone": keras.saving.serialize_keras_object(self.backbone),
            "permutations": self.permutations.tolist(),
            "items": keras.saving.serialize_keras_object(self.items),
            "item_units": self.item_units,
            "hidden_units": self.hidden_units,
            "dropout": self.dropout_rate,
            "seed": self.seed,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["backbone"] = keras.saving.deserialize_keras_object(config["backbone"])
        config["items"] = keras.saving.deserialize_keras_object(config["items"])
        config["permutations"] = np.asarray(config["permutations"], dtype=np.int32)
        return cls(**config)
