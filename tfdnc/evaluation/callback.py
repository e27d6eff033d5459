"""The Keras callback that writes retrieval metrics into the epoch logs, and the rule of when."""

from __future__ import annotations

from typing import Callable, Sequence

import keras
import numpy as np

from tfdnc.evaluation.metrics import ALL_METRICS, compute_metrics


def evaluation_due(epoch: int, every: int, epochs: int | None = None, *, first: bool = True) -> bool:
    """Whether an evaluation every `every` epochs runs after the 0-based `epoch`.

    Every `every`-th epoch and the last one (of `epochs`, when known); with
    `first`, also the first epoch (it fixes CSVLogger's columns).

    Examples:
        >>> [e for e in range(5) if evaluation_due(e, 2, 5)]
        [0, 1, 3, 4]
        >>> [e for e in range(5) if evaluation_due(e, 2, 5, first=False)]
        [1, 3, 4]
    """
    last = epochs is not None and epoch + 1 == epochs
    return (first and epoch == 0) or (epoch + 1) % every == 0 or last


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
        evaluator: instead of the sets above, a function `model ->
            ProtocolResult` (see `from_protocol`); the metrics of its first
            evaluation set go to the logs, the whole result to `result`.
        first: also evaluate after the first epoch.

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
        data=None,
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
        evaluator: Callable | None = None,
        first: bool = True,
    ):
        super().__init__()
        if data is None and evaluator is None:
            raise ValueError("pass the evaluation `data` (or an `evaluator`)")
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
        self.evaluator = evaluator
        self.first = bool(first)
        self.last_results: dict[str, float] = {}
        self.result = None  # the latest ProtocolResult (with an evaluator)
        self.result_epoch: int | None = None

    @classmethod
    def from_protocol(cls, splits, embed: Callable, *, every: int = 1, seed: int = 0, prefix: str = "val_",
                      verbose: int = 0) -> "RetrievalEvaluation":
        """Evaluates with the data set's protocol (`tfdnc.evaluation.protocols`) every `every` epochs.

        `embed` maps an `ImageSet` to its (N, d) embeddings. The first
        protocol set's metrics go to the logs (`val_recall@1`, `val_nmi`,
        ...); the first epoch is evaluated only when it is due anyway.
        """
        from tfdnc.evaluation.protocols import run_protocol

        return cls(evaluator=lambda model: run_protocol(splits, embed, seed=seed), every=every, prefix=prefix,
                   seed=seed, verbose=verbose, first=False)

    def on_epoch_end(self, epoch, logs=None):
        if not evaluation_due(epoch, self.every, self.params.get("epochs") if self.params else None,
                              first=self.first):
            return
        results = self.evaluate_model(self.model)
        self.last_results = results
        self.result_epoch = epoch
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
        if self.evaluator is not None:
            self.result = self.evaluator(model)
            return {key: float(value) for key, value in next(iter(self.result.results.values())).items()}
        emb, labels = self.embed(model, self.data, self.labels)
        q_emb = q_labels = None
        if self.query_data is not None:
            q_emb, q_labels = self.embed(model, self.query_data, self.query_labels)
        return compute_metrics(emb, labels, ks=self.ks, query_embeddings=q_emb, query_labels=q_labels,
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
