"""The Divide & Conquer model: backbone, embedding head, subspace masks, custom steps."""

from __future__ import annotations

import os
import warnings

import keras
import numpy as np
import tensorflow as tf
from keras import ops

# Registered for keras.saving.load_model after `import tfdnc.model` (docs/getting-started.md): the small
# CNN's BatchNormalization and the learning-rate schedule a trained model's optimizer is saved with.
import tfdnc.backbones  # noqa: F401
import tfdnc.training.lr  # noqa: F401
from tfdnc.distributed.gather import all_gather_batch, replica_loss_scale
from tfdnc.layers.masks import SubspaceMasks
from tfdnc.losses import MarginLoss, MetricLoss  # also registers every loss, for load_model
from tfdnc.losses.base import LossParameters

GALLERY_ASSET = "gallery"  # the index's folder inside the .keras file's assets


@keras.saving.register_keras_serializable(package="tfdnc")
class DivideAndConquerModel(keras.Model):
    """Backbone -> dense embedding -> K subspace learners, trained per cluster.

    Calling the model gives the full L2-normalised embedding (what
    evaluation and serving use). Training batches come from one cluster each
    and carry its id; `train_step` selects that learner's mask, applies the
    metric loss on the learner's embedding and adds the mask orthogonality
    loss. With `full_embedding=True` (the "conquer" phase) the loss uses the
    full embedding instead.

    Args:
        backbone: a Keras model mapping [0, 255] images to pooled features
            (see `tfdnc.backbones.build_backbone`).
        embedding_dim: d.
        k_final: the final number of learners K (`k_max`: its deprecated name).
        mask_mode: "learnable" (TPAMI) or "fixed" (CVPR).
        initial_k: learners active at the start.
        loss: deprecated: give the loss to `compile(loss=...)`. Still
            accepted (with a DeprecationWarning) for code and saved models
            from before.
        mask_loss_weight: lambda of the mask orthogonality loss.
        mask_learning_rate: Adam learning rate of the masks (the papers use
            100x the network's).
        weight_decay: coupled L2 weight decay of the network (backbone, head):
            `weight_decay * w` is added to every gradient before the optimizer
            step, as torch's `Adam(weight_decay=...)` does in both reference
            repos (CompVis/metric-learning-divide-and-conquer-improved:
            README.md:34 `--weight-decay=1e-4`). 0 leaves it to the optimizer
            (e.g. Keras's decoupled `Adam(weight_decay=...)`).
        mask_weight_decay: the same coupled L2 on the learnable masks (TPAMI:
            `--mask-wd-mult=1`, README.md:36; experiment/margin_loss_resnet50.py:197).
        loss_learning_rate: learning rate of the loss's own parameters (the
            margin loss's learnable beta): they get their own Adam without
            weight decay, as the reference's `lr_beta` parameter group
            (train.py:446-452). None: the network's learning rate at compile.

    The metric loss is given to `compile(loss=...)`, as in Keras: any
    `tfdnc.losses.MetricLoss` (default: `MarginLoss()`). Its own variables
    (a learnable beta, Proxy-Anchor proxies, an XBM memory) are tracked,
    trained and saved with the model, and `keras.saving.load_model` (or
    `tfdnc.load_model`) restores the compiled loss.

    Training data: what Keras takes: `fit(x, y)` with arrays, `fit(dataset)`
    with a finite `tf.data.Dataset` of `(image, label)` (batched or not, e.g.
    `keras.utils.image_dataset_from_directory`), or a
    `tfdnc.data.ClusterBatches`. `fit` reads such data into per-cluster
    batches and adds the `DivideAndConquerSchedule` that re-clusters it (see
    `fit`). Batches already made for a schedule,
    `({"images": (B, H, W, C), "cluster": (B,) int}, labels)`, pass through.

    Queries, as tensorflow-similarity's `SimilarityModel`: `index(x, y,
    data)` builds a gallery; `lookup`, `single_lookup`, `match`,
    `calibrate`, `evaluate_retrieval`, `evaluate_classification`,
    `index_summary`, `save_index` / `load_index`, `reset_index` use it. The
    gallery saves with `model.save` (inside the `.keras` file) and becomes
    the export's `search` / `search_k` gallery.

    Examples:
        >>> from tfdnc.backbones import build_backbone
        >>> from tfdnc.datasets import load_dataset
        >>> splits = load_dataset("shapes", num_classes=64, images_per_class=8)  # generated, 32 x 32 RGB
        >>> images, labels = splits.train.images, splits.train.labels
        >>> backbone = build_backbone("small_cnn", (32, 32, 3))
        >>> model = DivideAndConquerModel(backbone, embedding_dim=64, k_final=4)
        >>> model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=tfdnc.losses.MarginLoss())
        >>> history = model.fit(images, labels, epochs=4, verbose=0)
        >>> embeddings = model(images[:8])  # (batch, 64), unit norm
        >>> gallery_images, gallery_labels = splits.test.images[::2], splits.test.labels[::2]
        >>> query_images = splits.test.images[1::2]
        >>> ids = model.index(gallery_images, gallery_labels)
        >>> predicted = model.match(query_images, cutpoint=0.8)  # labels, -1 below the similarity 0.8
    """

    def __init__(
        self,
        backbone: keras.Model,
        embedding_dim: int = 128,
        k_final: int = 32,
        mask_mode: str = "learnable",
        initial_k: int = 1,
        loss=None,
        mask_loss_weight: float = 0.01,
        mask_learning_rate: float = 1e-3,
        weight_decay: float = 0.0,
        mask_weight_decay: float = 0.0,
        loss_learning_rate: float | None = None,
        **kwargs,
    ):
        if "k_max" in kwargs:  # the old name of `k_final`
            warnings.warn("DivideAndConquerModel(k_max=...) is deprecated: it is now `k_final`",
                          DeprecationWarning, stacklevel=2)
            k_final = kwargs.pop("k_max")
        super().__init__(**kwargs)
        _check_model_arguments(backbone, mask_loss_weight, mask_learning_rate, weight_decay, mask_weight_decay,
                               loss_learning_rate)
        if loss is not None:
            warnings.warn("DivideAndConquerModel(loss=...) is deprecated: give the loss to "
                          "model.compile(optimizer, loss=...)", DeprecationWarning, stacklevel=2)
        self._loss_from_constructor = loss is not None
        self.backbone = backbone
        self.embedding_dim = int(embedding_dim)
        self.mask_loss_weight = float(mask_loss_weight)
        self.mask_learning_rate = float(mask_learning_rate)
        self.weight_decay = float(weight_decay)
        self.mask_weight_decay = float(mask_weight_decay)
        self.loss_learning_rate = None if loss_learning_rate is None else float(loss_learning_rate)
        feature_dim = backbone.output_shape[-1]
        self.head = keras.layers.Dense(self.embedding_dim, name="embedding")
        self.head.build((None, feature_dim))
        self.masks = SubspaceMasks(self.embedding_dim, k_final, mode=mask_mode, initial_k=initial_k, name="subspace_masks")
        self.embedder = keras.Model(backbone.inputs, self.head(backbone.outputs[0]), name="embedder")
        self.mask_optimizer = keras.optimizers.Adam(self.mask_learning_rate, name="mask_adam")
        # Built now, so its state loads from any saved model, compiled or not.
        self.mask_optimizer.build(self.masks.trainable_variables)
        self._set_metric_loss(MarginLoss() if loss is None else loss)
        self._full_embedding = False
        self._backbone_frozen = False
        self.loss_tracker, self.metric_loss_tracker, self.mask_loss_tracker, self.active_tracker, self.k_tracker = (
            keras.metrics.Mean(name=name) for name in ("loss", "metric_loss", "mask_loss", "active_fraction", "K"))
        self._gallery = None  # the ModelIndex built by `index`, saved with the model
        self.built = True

    # --- inference ------------------------------------------------------------
    @property
    def image_shape(self) -> tuple:
        return tuple(self.backbone.input_shape[1:])

    @property
    def num_learners(self) -> int:
        return self.masks.num_active

    def call(self, inputs, training=False):
        images = inputs["images"] if isinstance(inputs, dict) else inputs
        return self.masks.full_embedding(self.embedder(images, training=training))

    def features(self, images, training=False):
        """Backbone ("penultimate") features, as the reference code clusters them."""
        return self.backbone(images, training=training)

    def learner_embeddings(self, images, training=False):
        """(batch, k_max, d) L2-normalised masked embeddings; the first K are active."""
        return self.masks(self.embedder(images, training=training))

    def compute_output_shape(self, input_shape):
        if isinstance(input_shape, dict):
            input_shape = input_shape["images"]
        return (input_shape[0], self.embedding_dim)

    # --- phases (set between epochs by the schedule callback) -------------------
    @property
    def full_embedding(self) -> bool:
        return self._full_embedding

    @full_embedding.setter
    def full_embedding(self, value: bool) -> None:
        if bool(value) != self._full_embedding:
            self._full_embedding = bool(value)
            self._retrace()

    @property
    def backbone_frozen(self) -> bool:
        return self._backbone_frozen

    @backbone_frozen.setter
    def backbone_frozen(self, value: bool) -> None:
        if bool(value) != self._backbone_frozen:
            self._backbone_frozen = bool(value)
            self._retrace()

    def _retrace(self):
        # The phase flags are read while tracing train_step; a new train
        # function picks them up, also in the middle of `fit`.
        if getattr(self, "train_function", None) is not None:
            self.make_train_function(force=True)

    # --- optimisation -----------------------------------------------------------
    def _set_metric_loss(self, loss) -> None:
        """Uses `loss`; tracks its variables and gives them their own optimizer."""
        if not isinstance(loss, MetricLoss):
            raise TypeError(
                f"DivideAndConquerModel: the loss must be a tfdnc.losses.MetricLoss (e.g. "
                f"tfdnc.losses.MarginLoss()), got {loss!r} ({type(loss).__name__}); Keras losses such as "
                "'mse' or keras.losses.CategoricalCrossentropy compare predictions with targets, not "
                "embeddings of a batch"
            )
        previous = getattr(self, "loss_weights_layer", None)
        if previous is not None and previous is not loss.variables_layer:
            # A replaced loss's variables leave the model (its weights, its save file).
            self._layers = [layer for layer in self._layers if layer is not previous]
        self.metric_loss = loss
        # Keras layers created inside the loss (learnable beta, proxies, XBM
        # memory) are tracked through this attribute, so they train and save
        # with the model.
        self.loss_weights_layer = loss.variables_layer
        # The loss's parameters (learnable beta) get an optimizer of their own;
        # its learning rate may default to the network's at compile.
        optimizer = None
        if self.loss_variables():
            optimizer = keras.optimizers.Adam(self.loss_learning_rate or 1e-3, name="loss_adam")
            optimizer.build(self.loss_variables())
        self.loss_optimizer = optimizer
        if getattr(self, "train_function", None) is not None:
            self.make_train_function(force=True)

    def loss_variables(self) -> list:
        """The loss's own parameters (e.g. the margin loss's per-class beta)."""
        return list(self.metric_loss.trainable_variables)

    def network_variables(self) -> list:
        """Variables the main optimizer updates: backbone and head."""
        # Every loss's parameters stay out, also those of a loss replaced by a later compile.
        losses_own = [v for layer in self._flatten_layers() if isinstance(layer, LossParameters)
                      for v in layer.trainable_variables]
        other = {id(v) for v in self.masks.trainable_variables + losses_own}
        return [v for v in self.trainable_variables if id(v) not in other]

    def compile(self, optimizer="adam", loss=None, **kwargs):
        """Keras's `compile`; `loss` is a `tfdnc.losses.MetricLoss` (None: keep the current one).

        Raises TypeError naming the loss when it is not a tfdnc metric loss.
        """
        if loss is not None:
            if isinstance(loss, str):
                from tfdnc.losses import LOSSES

                if loss.replace("-", "_") not in LOSSES:
                    self._set_metric_loss(loss)  # raises, naming it
                from tfdnc.losses import get_loss

                loss = get_loss(loss)
            self._set_metric_loss(loss)
        super().compile(optimizer=optimizer, **kwargs)
        # Build the optimizers on fixed variable lists, so their state saves
        # and restores one-to-one (BackupAndRestore, load_weights).
        self.optimizer.build(self.network_variables())
        if self.loss_optimizer is not None and self.loss_learning_rate is None:
            inner = getattr(self.optimizer, "inner_optimizer", self.optimizer)
            self.loss_optimizer.learning_rate = float(keras.ops.convert_to_numpy(inner.learning_rate))

    def get_compile_config(self):
        if getattr(self, "optimizer", None) is None:
            return None
        return {"optimizer": keras.saving.serialize_keras_object(self.optimizer),
                "loss": keras.saving.serialize_keras_object(self.metric_loss)}

    def compile_from_config(self, config):
        # Restores the optimizer and the loss on load_model; their variables
        # (optimizer state, learnable beta, proxies) load after this.
        if config and config.get("optimizer") is not None:
            # A model saved with the deprecated constructor loss has it already.
            loss = None if self._loss_from_constructor else config.get("loss")
            self.compile(optimizer=keras.saving.deserialize_keras_object(config["optimizer"]),
                         loss=None if loss is None else keras.saving.deserialize_keras_object(loss))

    def reset_mask_optimizer(self) -> None:
        """Restarts the mask optimizer after K doubles; keeps its learning rate.

        The TPAMI code gives the grown masks a fresh parameter group with the
        same settings (CompVis/metric-learning-divide-and-conquer-improved:
        metriclearning/model/inweave/models.py:244-250), i.e. zero moments and
        a zero step count (Adam's bias correction starts again) at the
        unchanged learning rate. Only the learning rate is kept here: in
        Keras 3 `optimizer.variables` holds it next to `iterations`.
        """
        optimizer = self.mask_optimizer
        keep = {id(v) for v in (optimizer._learning_rate,) if isinstance(v, keras.Variable)}
        for variable in optimizer.variables:
            if id(variable) not in keep:
                variable.assign(ops.zeros_like(variable))

    def grow_learners(self) -> int:
        """Doubles K after a split: children copy their parent's mask, the mask optimizer restarts."""
        k = self.masks.grow()
        self.reset_mask_optimizer()
        return k

    def set_num_learners(self, k: int) -> None:
        """Sets K without growth (a fixed-K run's first clustering, a K = 1 start); masks keep their values."""
        self.masks.set_num_active(k)

    @property
    def metrics(self):
        return [self.loss_tracker, self.metric_loss_tracker, self.mask_loss_tracker,
                self.active_tracker, self.k_tracker]

    def _learner_loss(self, images, labels, cluster, training):
        normalize = self.metric_loss.needs().normalized  # the loss's declared contract (LossNeeds)
        if training and self._backbone_frozen:
            # Only the embedding layer (and masks) learn on this epoch.
            z = self.head(ops.stop_gradient(self.backbone(images, training=False)))
        else:
            z = self.embedder(images, training=training)
        z = ops.cast(z, "float32")
        if self._full_embedding or not training:
            embeddings = self.masks.full_embedding(z) if normalize else z
        else:
            embeddings = self.masks(z, cluster=cluster, normalize=normalize)
        # Under a distribution strategy the loss mines the global batch.
        embeddings, labels = all_gather_batch(embeddings, labels)
        # Every loss is told whose batch this is (losses with per-learner state, proxies or an
        # XBM memory, use it) and must leave its state alone outside training.
        # With one learner (k_final = 1) the full embedding is that learner's
        # embedding, so a full-embedding phase keeps training its state
        # instead of starting the never-trained `None` slot. With K > 1 the full embedding has its own.
        full = self._full_embedding and self.masks.k_max > 1
        learner = None if full or not training else cluster
        return self.metric_loss.compute_loss_and_stats(labels, embeddings, learner=learner, training=training)

    def on_clusters_changed(self) -> None:
        """Called by the schedule whenever the cluster assignment changes.

        Re-clustering, growth, a restored state and the final K = 1 phase
        all change which images a learner sees; a loss that keeps state tied
        to the clusters (e.g. an XBM memory) is told here, through its own
        `on_clusters_changed`.
        """
        self.metric_loss.on_clusters_changed()

    def train_step(self, data):
        x, labels = data[0], data[1]
        images, cluster = x["images"], x["cluster"]
        cluster = ops.reshape(cluster, (-1,))[0]
        labels = ops.reshape(labels, (-1,))
        variables = self.network_variables()
        if self._backbone_frozen:
            frozen = {id(v) for v in self.backbone.trainable_variables}
            variables = [v for v in variables if id(v) not in frozen]
        mask_variables = self.masks.trainable_variables
        loss_variables = self.loss_variables()
        with tf.GradientTape() as tape:
            metric_loss, stats = self._learner_loss(images, labels, cluster, training=True)
            mask_loss = ops.zeros(())
            if mask_variables and not self._full_embedding:
                mask_loss = self.mask_loss_weight * self.masks.orthogonality_loss()
            total = metric_loss + mask_loss
            if self.losses:
                total = total + ops.sum(self.losses)
            # Every replica computes the global-batch loss and the optimizers
            # sum the replicas' gradients, hence the 1 / replicas.
            scaled = self.optimizer.scale_loss(total * replica_loss_scale())
        gradients = tape.gradient(scaled, variables + mask_variables + loss_variables)
        n_net, n_mask = len(variables), len(mask_variables)
        loss_scaled = isinstance(self.optimizer, keras.optimizers.LossScaleOptimizer)
        # Read before apply(), which may halve or double the scale.
        scale = ops.cast(self.optimizer.dynamic_scale, "float32") if loss_scaled else None
        # The decay joins each replica's share of the gradient, like the loss:
        # the optimizers sum the replicas' gradients. The network's gradients
        # stay loss-scaled (the LossScaleOptimizer unscales them), so the decay
        # term is scaled alike.
        share = replica_loss_scale()
        network_grads = _coupled_decay(gradients[:n_net], variables, self.weight_decay * share, scale)
        self.optimizer.apply(network_grads, variables)
        unscale = (lambda grads: [g / scale for g in grads]) if loss_scaled else (lambda grads: grads)
        if mask_variables and not self._full_embedding:
            # The mask and loss optimizers have no loss scale of their own.
            mask_grads = _coupled_decay(unscale(gradients[n_net:n_net + n_mask]), mask_variables,
                                        self.mask_weight_decay * share)
            self.mask_optimizer.apply(mask_grads, mask_variables)
        if loss_variables:
            self.loss_optimizer.apply(unscale(gradients[n_net + n_mask:]), loss_variables)
        return self._update_metrics(total, metric_loss, mask_loss, stats)

    def test_step(self, data):
        x, labels = data[0], data[1]
        images = x["images"] if isinstance(x, dict) else x
        labels = ops.reshape(labels, (-1,))
        metric_loss, stats = self._learner_loss(images, labels, 0, training=False)
        return self._update_metrics(metric_loss, metric_loss, ops.zeros(()), stats)

    def _update_metrics(self, total, metric_loss, mask_loss, stats):
        self.loss_tracker.update_state(total)
        self.metric_loss_tracker.update_state(metric_loss)
        self.mask_loss_tracker.update_state(mask_loss)
        self.active_tracker.update_state(stats.get("active_fraction", 0.0))
        self.k_tracker.update_state(ops.cast(self.masks.num_active_var, "float32"))
        return {m.name: m.result() for m in self.metrics}

    # --- Keras fit as Keras users call it ----------------------------------------------
    def fit(self, x=None, y=None, *, images_per_class: int | None = None, recluster_every: int | None = None,
            **kwargs):
        """Keras's `fit`, on the data Keras users have; Divide & Conquer's batches and schedule built here.

        `x, y` may be arrays (images with values in [0, 255], one class label
        each), a finite `tf.data.Dataset` of `(image, label)` (batched or not;
        what `keras.utils.image_dataset_from_directory` gives; one-hot labels
        are fine) or a `tfdnc.data.ClusterBatches`. The data is read once into
        a `ClusterBatches` of P x M batches (`batch_size` // `images_per_class`
        classes, `images_per_class` (default 4) images each; `batch_size`
        default 32), each batch from one cluster, and a
        `DivideAndConquerSchedule` is put first among the callbacks: it
        clusters the training set's embeddings and re-clusters every
        `recluster_every` epochs, doubling K up to the model's `k_final`
        (default T: `epochs // (log2(k_final) + 1)`, so every K trains as long).
        Pass your own schedule in `callbacks` to choose its other settings.
        With `keras.callbacks.BackupAndRestore` the cluster state is saved
        beside its backup, so a resumed `fit` continues with its clusters.

        `epochs`, `initial_epoch`, `callbacks`, `validation_data`,
        `validation_split` (arrays), `steps_per_epoch` and `verbose` mean what
        they mean in Keras. `shuffle` is not needed (batches are drawn at
        random); `sample_weight` / `class_weight` are refused. Batches made
        by `ClusterBatches.dataset()` or `tfdnc.data.pipeline` pass through
        unchanged, and need their schedule in `callbacks`.

        Raises:
            ValueError / TypeError: one line naming what to pass instead
            (an infinite dataset, no labels, one class, cluster batches
            without their schedule).

        Examples:
            >>> from tfdnc.datasets import load_dataset
            >>> splits = load_dataset("shapes", num_classes=32, images_per_class=8)
            >>> x_train, y_train = splits.train.images, splits.train.labels
            >>> x_val, y_val = splits.test.images, splits.test.labels
            >>> model = tfdnc.DivideAndConquerModel(tfdnc.build_backbone("small_cnn", (32, 32, 3)), embedding_dim=32, k_final=2)
            >>> model.compile(optimizer="adam", loss=tfdnc.losses.MultiSimilarityLoss())
            >>> history = model.fit(x_train, y_train, epochs=2, validation_data=(x_val, y_val), verbose=0)
            >>> model.num_learners
            2
        """
        from tfdnc.training.fit_inputs import prepare_fit

        if getattr(self, "optimizer", None) is None:
            # As Keras, which refuses fit before compile; the default loss is the margin loss.
            raise ValueError("DivideAndConquerModel.fit: call model.compile(optimizer, loss=...) first "
                             "(the loss defaults to tfdnc.losses.MarginLoss())")
        x, y, kwargs = prepare_fit(self, x, y, kwargs, images_per_class=images_per_class,
                                   recluster_every=recluster_every)
        return self._fit_prepared(x, y, kwargs)

    def _fit_prepared(self, x, y, kwargs: dict):
        """Keras's `fit` on data `prepare_fit` made; under a strategy, `fit_mirrored` for cluster batches."""
        from tfdnc.training.fit_inputs import is_cluster_dataset

        strategy = getattr(self, "_distribute_strategy", None)
        try:
            if strategy is not None and is_cluster_dataset(x):
                # A model built under a strategy makes Keras pull a batch before
                # the schedule publishes the first epoch; fit_mirrored avoids it.
                from tfdnc.distributed.driver import fit_mirrored

                return fit_mirrored(self, strategy, x, **kwargs)
            return super().fit(x, y, **kwargs)
        except BaseException:
            # Keras skips on_train_end when fit raises: end the batch planner
            # (the schedule would), or freeing the dataset's iterator waits for it forever.
            sampler = getattr(x, "_tfdnc_sampler", None)
            if sampler is not None:
                sampler.close()
            raise

    # --- the model as a search engine (tensorflow-similarity's SimilarityModel methods) ----
    def embed_with_labels(self, dataset, batch_size: int = 32) -> tuple:
        """(embeddings, labels) of an `(image, label)` dataset in one pass, each row beside its own label.

        A dataset that shuffles (`image_dataset_from_directory` does by
        default) gives another order on every pass, so `predict(ds)` and
        the labels read in a second pass do not line up; this reads both at once.
        """
        return self._embed(dataset, None, batch_size)

    def create_index(self, index_type: str = "flat", max_k: int = 100) -> None:
        """Starts an empty gallery index: a `tfdnc.index.FaissIndex` of `index_type` ("flat": exact)."""
        from tfdnc.index.model_index import ModelIndex

        self._gallery = ModelIndex(self.embedding_dim, index_type=index_type, max_k=max_k)

    def index(self, x, y=None, data=None, batch_size: int = 32) -> np.ndarray:
        """Embeds `x` and adds it to the gallery with labels `y` and `data` (strings); returns their ids.

        `x`: images (arrays with values in [0, 255]) or an `(image, label)`
        dataset (its labels are `y`).
        """
        embeddings, labels = self._embed(x, y, batch_size)
        if self._gallery is None:
            self.create_index()
        return self._gallery.add(embeddings, labels, data)

    def index_single(self, x, y=None, data=None) -> int:
        """Adds one image (H, W, C) with its label and data; returns its id."""
        return int(self.index(np.asarray(x)[None], None if y is None else [y],
                              None if data is None else [data])[0])

    def lookup(self, x, k: int = 5, batch_size: int = 32) -> list:
        """The k nearest gallery items of each image: lists of `Lookup` (rank, id, label, data, similarity)."""
        return self._index_or_raise("lookup").lookup(self._embed(x, None, batch_size)[0], k)

    def single_lookup(self, x, k: int = 5) -> list:
        """The k nearest gallery items of one image (H, W, C)."""
        return self.lookup(np.asarray(x)[None], k)[0]

    def match(self, x, cutpoint="optimal", no_match_label=-1, batch_size: int = 32) -> np.ndarray:
        """The label of each image's nearest gallery item; `no_match_label` below the cutpoint's similarity.

        `cutpoint`: "optimal" (the best F1 found by `calibrate`), the name of
        another calibrated cutpoint, or a cosine similarity.
        """
        return self._index_or_raise("match").match(self._embed(x, None, batch_size)[0], cutpoint, no_match_label)

    def calibrate(self, x, y=None, metric: str = "f1", target: float | None = None, batch_size: int = 32) -> dict:
        """Chooses the match threshold on labelled held-out images for an F1, precision or recall target.

        Returns the chosen threshold with its precision, recall and F1, the
        whole curve (`"curve"`: one entry per candidate threshold) and the
        cutpoints `match` can use (see `tfdnc.index.model_index.ModelIndex.calibrate`).
        """
        embeddings, labels = self._embed(x, y, batch_size, need_labels="calibrate")
        return self._index_or_raise("calibrate").calibrate(embeddings, labels, metric=metric, target=target)

    def evaluate_retrieval(self, x, y=None, ks=(1, 2, 4, 8), batch_size: int = 32) -> dict:
        """Recall@K and precision@K of labelled images answered from the gallery."""
        embeddings, labels = self._embed(x, y, batch_size, need_labels="evaluate_retrieval")
        return self._index_or_raise("evaluate_retrieval").evaluate_retrieval(embeddings, labels, ks)

    def evaluate_classification(self, x, y=None, batch_size: int = 32) -> dict:
        """Precision, recall, F1 and accuracy of `match` at each calibrated cutpoint."""
        embeddings, labels = self._embed(x, y, batch_size, need_labels="evaluate_classification")
        return self._index_or_raise("evaluate_classification").evaluate_classification(embeddings, labels)

    def index_summary(self) -> dict:
        """Prints and returns the gallery's size, dimension, index type, threshold and cutpoints."""
        summary = self._index_or_raise("index_summary").summary()
        print("\n".join(f"{key}: {value}" for key, value in summary.items()))
        return summary

    def index_size(self) -> int:
        return 0 if self._gallery is None else len(self._gallery)

    def to_data_frame(self, num_items: int = 0):
        """The gallery's items (`id`, `label`, `data`) as a pandas DataFrame (needs pandas)."""
        try:
            import pandas
        except ImportError:
            raise ImportError("DivideAndConquerModel.to_data_frame needs pandas (pip install pandas); "
                              "model.index_records() gives the same rows as dicts") from None
        return pandas.DataFrame(self.index_records(num_items))

    def index_records(self, num_items: int = 0) -> list:
        """The gallery's items in id order as dicts `id`, `label`, `data` (`num_items` > 0: the first ones)."""
        return [] if self._gallery is None else self._gallery.records(num_items)

    def reset_index(self) -> None:
        """Empties the gallery and forgets its calibration."""
        if self._gallery is not None:
            self._gallery.reset()

    def save_index(self, path: str) -> str:
        """Saves the gallery as a new index version under `path` (`tfdnc index` reads it); returns its folder."""
        return self._index_or_raise("save_index").save(path)

    def load_index(self, path: str) -> None:
        """Loads a gallery saved by `save_index` (the latest version under `path`), checksums checked."""
        from tfdnc.index.model_index import ModelIndex

        self._gallery = ModelIndex.load(path, dim=self.embedding_dim)

    def index_gallery(self):
        """(embeddings, ids) of the gallery for an export's `search` signatures; None without one."""
        if self._gallery is None or not len(self._gallery):
            return None
        return self._gallery.gallery()

    # Keras calls these on `model.save` / `load_model`: the gallery lives in the .keras file's assets.
    def save_assets(self, dir_path: str) -> None:
        if self._gallery is not None and len(self._gallery):
            self._gallery.save(os.path.join(dir_path, GALLERY_ASSET))

    def load_assets(self, dir_path: str) -> None:
        folder = os.path.join(dir_path, GALLERY_ASSET)
        if os.path.isdir(folder):
            self.load_index(folder)

    def _index_or_raise(self, what: str):
        if self._gallery is None or not len(self._gallery):
            raise ValueError(f"DivideAndConquerModel.{what}: the gallery is empty; add images with "
                             "model.index(x, y) first (or model.load_index(path))")
        return self._gallery

    def _embed(self, x, y, batch_size: int, need_labels: str | None = None) -> tuple:
        """(embeddings, labels): arrays embedded in order; a labelled dataset in one pass."""
        if isinstance(x, tf.data.Dataset) and isinstance(x.element_spec, tuple):
            if y is not None:
                raise ValueError("the dataset holds the labels; leave `y` out")
            if x.element_spec[0].shape.rank == len(self.image_shape):
                x = x.batch(batch_size)
            chunks, labels = [], []
            for images, batch_labels in x:
                chunks.append(np.asarray(self.predict_on_batch(images)))
                labels.append(np.asarray(batch_labels))
            if not chunks:
                raise ValueError("the dataset is empty")
            return np.concatenate(chunks), np.concatenate(labels)
        if need_labels and y is None:
            raise ValueError(f"DivideAndConquerModel.{need_labels}: give the labels `y` of the images")
        if isinstance(x, tf.data.Dataset):
            return np.asarray(self.predict(x, verbose=0)), y
        return np.asarray(self.predict(np.asarray(x), batch_size=batch_size, verbose=0)), y

    # --- serialisation ------------------------------------------------------------
    def get_config(self):
        return {
            "name": self.name,
            "backbone": keras.saving.serialize_keras_object(self.backbone),
            "embedding_dim": self.embedding_dim,
            "k_final": self.masks.k_max,
            "mask_mode": self.masks.mode,
            "initial_k": self.masks.initial_k,
            # The loss is compile config; models saved before kept it here.
            **({"loss": keras.saving.serialize_keras_object(self.metric_loss)}
               if self._loss_from_constructor else {}),
            "mask_loss_weight": self.mask_loss_weight,
            "mask_learning_rate": self.mask_learning_rate,
            "weight_decay": self.weight_decay,
            "mask_weight_decay": self.mask_weight_decay,
            "loss_learning_rate": self.loss_learning_rate,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["backbone"] = keras.saving.deserialize_keras_object(config["backbone"])
        loss = config.pop("loss", None)
        model = cls(**config)
        if loss is not None:  # a model saved with the deprecated constructor argument
            model._set_metric_loss(keras.saving.deserialize_keras_object(loss))
            model._loss_from_constructor = True
        return model


def _check_model_arguments(backbone, mask_loss_weight, mask_learning_rate, weight_decay, mask_weight_decay,
                           loss_learning_rate) -> None:
    """DivideAndConquerModel's arguments, checked up front (a ValueError / TypeError naming the argument)."""
    if not isinstance(backbone, keras.Model):
        raise TypeError(f"DivideAndConquerModel: `backbone` must be a keras.Model, got {type(backbone)}")
    if mask_loss_weight < 0:
        raise ValueError(f"DivideAndConquerModel: `mask_loss_weight` must be >= 0, got {mask_loss_weight}")
    if mask_learning_rate <= 0:
        raise ValueError(f"DivideAndConquerModel: `mask_learning_rate` must be > 0, got {mask_learning_rate}")
    for arg, value in (("weight_decay", weight_decay), ("mask_weight_decay", mask_weight_decay)):
        if not 0 <= value < float("inf"):  # also refuses NaN
            raise ValueError(f"DivideAndConquerModel: `{arg}` must be a finite number >= 0, got {value}")
    if loss_learning_rate is not None and not loss_learning_rate > 0:
        raise ValueError(f"DivideAndConquerModel: `loss_learning_rate` must be > 0 or None, got {loss_learning_rate}")


def _coupled_decay(gradients: list, variables: list, decay: float, scale=None) -> list:
    """torch-style coupled L2: g + decay * w (times the loss scale, if any)."""
    if not decay:
        return gradients
    factor = decay if scale is None else decay * scale
    return [None if g is None else g + ops.cast(factor, g.dtype) * ops.cast(v, g.dtype)
            for g, v in zip(gradients, variables)]


def load_model(path: str, compile: bool = True) -> DivideAndConquerModel:
    """Loads a `.keras` file saved by tfdnc (`model.save`, a run's model.keras).

    Every tfdnc class (model, losses, layers) is registered by importing
    this module, so `tfdnc.load_model(path)` needs no other import. With
    `compile=True` the optimizer and the metric loss come back too.

    Examples:
        >>> model = tfdnc.load_model("runs/default/model.keras")
        >>> images = np.zeros((2, *model.backbone.input_shape[1:]), "float32")   # a batch at the run's image size
        >>> embeddings = model.predict(images, verbose=0)
        >>> embeddings.shape
        (2, 64)
    """
    import os

    # Layers and optimizers saved models may hold, registered before Keras looks them up:
    # frozen-statistics BatchNormalization, the KerasHub trunk and pooling, LayerDecayAdam.
    import tfdnc.backbones  # noqa: F401
    import tfdnc.optimizers  # noqa: F401

    if not str(path).endswith(".keras"):
        raise ValueError(f"tfdnc.load_model: {str(path)!r} is not a .keras file (for an export folder use "
                         "tfdnc.serving.local.ExportedModel; for a run directory, RUN_DIR/model.keras)")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"tfdnc.load_model: {str(path)!r} does not exist")
    return keras.saving.load_model(path, compile=compile)
