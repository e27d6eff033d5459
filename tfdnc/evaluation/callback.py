"""A Keras callback that writes retrieval metrics into the epoch logs."""

from __future__ import annotations

from typing import Sequence

import keras
import numpy as np

from tfdnc.evaluation.metrics import ALL_METRICS, evaluate


class RetrievalEvaluation(keras.callbacks.Callback):
    """Embeds an evaluation set with the model and logs Recall@K, MAP@R, mARP, NMI, F1.

    The model's output must be the embedding (the D&C model returns the
    L2-normalised full embedding). Metrics land in `logs` as
    `{prefix}recall@1`, `{prefix}map@r`, `{prefix}nmi`, ... so that History,
    CSVLogger, TensorBoard, EarlyStopping and ModelCheckpoint see them: put
    this callback *before* those in the `callbacks` list (Keras calls them in
    order with one shared `logs` dict; History is appended last).

    Evaluates after the first epoch, then every `every` epochs, and after the
    last one: the first epoch fixes CSVLogger's columns.

    Args:
        data: images as an array (N, H, W, C), or a `tf.data.Dataset` of
            batches yielding images or (images, labels) — in a fixed order.
        labels: (N,) class ids; None when `data` yields (images, labels).
        query_data, query_labels: a query set for query-vs-gallery
            evaluation (In-shop); `data` is then the gallery.
        every: evaluate every this many epochs.
        ks: the K of Recall@K.
        metrics: any of "recall", "map@r", "marp", "r_precision", "nmi", "f1"
            (`map@r` divides by R, `marp` by the hits in the top R; see
            `tfdnc.evaluation.metrics`).
        prefix: prepended to every key.
        batch_size: for `model.predict` on arrays.

    Example:

    ```python
    callbacks = [RetrievalEvaluation(test_images, test_labels, every=2),
                 keras.callbacks.CSVLogger("log.csv"),
                 keras.callbacks.EarlyStopping("val_recall@1", mode="max", patience=5)]
    model.fit(train_ds, epochs=20, callbacks=callbacks)
    ```
    """

    def __init__(
        self,
        data,
        labels=None,
        *,
        query_data=None,
        query_labels=None,
        every: int = 1,
        ks: Sequence[int] = (1, 2, 4, 8),
        metrics: Sequence[str] = ALL_METRICS,
        prefix: str = "val_",
        batch_size: int = 256,
        seed: int = 0,
        verbose: int = 0,
    ):
        super().__init__()
        if int(every) < 1:
            raise ValueError(f"`every` must be >= 1, got {every}")
        unknown = set(metrics) - set(ALL_METRICS)
        if unknown:
            raise ValueError(f"`metrics` must be among {ALL_METRICS}, got unknown {sorted(unknown)}")
        if (query_data is None) != (query_labels is None) and not _is_dataset(query_data):
            raise ValueError("pass `query_labels` with an array `query_data`")
        self.data, self.labels = data, _labels_or_none(labels, data, "labels")
        self.query_data, self.query_labels = query_data, _labels_or_none(query_labels, query_data, "query_labels")
        self.every = int(every)
        self.ks = tuple(int(k) for k in ks)
        self.metrics = tuple(metrics)
        self.prefix = prefix
        self.batch_size = int(batch_size)
        self.seed = seed
        self.verbose = verbose
        self.last_results: dict[str, float] = {}

    def _due(self, epoch: int) -> bool:
        last = self.params.get("epochs") if self.params else None
        return epoch == 0 or (epoch + 1) % self.every == 0 or (last is not None and epoch + 1 == last)

    def on_epoch_end(self, epoch, logs=None):
        if not self._due(epoch):
            return
        results = self.evaluate_model(self.model)
        self.last_results = results
        if logs is not None:
            logs.update({self.prefix + key: value for key, value in results.items()})
        if self.verbose:
            line = " - ".join(f"{self.prefix}{k}: {v:.4f}" for k, v in results.items())
            print(f"\nEpoch {epoch + 1}: {line}")

    def embed(self, model, data, labels):
        """(embeddings, labels) of one evaluation set."""
        if _is_dataset(data):
            embs, ys = [], []
            for batch in data:
                x, y = (batch[0], batch[1]) if isinstance(batch, (tuple, list)) else (batch, None)
                if isinstance(x, dict):
                    x = x["images"]
                embs.append(np.asarray(model.predict_on_batch(x)))
                if y is not None:
                    ys.append(np.asarray(y))
            emb = np.concatenate(embs)
            if labels is None:
                if not ys:
                    raise ValueError("the evaluation dataset yields no labels and `labels` is None")
                labels = np.concatenate(ys)
            return emb, labels
        return np.asarray(model.predict(data, batch_size=self.batch_size, verbose=0)), labels

    def evaluate_model(self, model) -> dict[str, float]:
        """The metrics of `model` on the evaluation set, without the prefix."""
        emb, labels = self.embed(model, self.data, self.labels)
        q_emb = q_labels = None
        if self.query_data is not None:
            q_emb, q_labels = self.embed(model, self.query_data, self.query_labels)
        return evaluate(emb, labels, ks=self.ks, query_embeddings=q_emb, query_labels=q_labels,
                        metrics=self.metrics, seed=self.seed)


def _is_dataset(data) -> bool:
    import tensorflow as tf

    return isinstance(data, tf.data.Dataset)


def _labels_or_none(labels, data, name):
    if labels is None:
        if data is not None and not _is_dataset(data):
            raise ValueError(f"`{name}` is required when the images are an array")
        return None
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"`{name}` must be 1-D, got shape {labels.shape}")
    if data is not None and not _is_dataset(data) and len(data) != len(labels):
        raise ValueError(f"`{name}` has {len(labels)} entries but the images {len(data)}")
    return labels
