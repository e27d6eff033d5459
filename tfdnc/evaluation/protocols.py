"""Evaluation protocols: which retrieval sets and Recall@K each benchmark reports.

=============  ==========================  =====================================
protocol       Recall@K                    sets evaluated
=============  ==========================  =====================================
default        1, 2, 4, 8                  test all-vs-all (and query/gallery
                                           when the data set has one)
cub, cars      1, 2, 4, 8                  test all-vs-all
sop            1, 10, 100, 1000            test all-vs-all
inshop         1, 10, 20, 30, 50           query vs gallery
vehicleid      1, 5                        query vs gallery per test size
                                           (800, 1,600, 2,400)
=============  ==========================  =====================================

Every set also gets NMI and F1 (k-means with as many clusters as classes),
MAP@R (`map@r`, Musgrave et al. 2020: divided by R) and mARP (`marp`, the
TPAMI D&C code's MAP@R: divided by the hits in the top R,
CompVis/metric-learning-divide-and-conquer-improved:
metriclearning/evaluation/mean_avg_precision.py:14), computed by
`tfdnc.evaluation.metrics.compute_metrics`. All-vs-all excludes the query itself
from its neighbours.

Examples:
    >>> model = tfdnc.load_model("runs/default/model.keras")
    >>> from tfdnc.datasets import load_dataset
    >>> splits = load_dataset("digits")
    >>> from tfdnc.evaluation.embedding import embed_image_set, model_function
    >>> def embed(image_set):   # ImageSet -> (N, d) array
    ...     return embed_image_set(model_function(model), image_set, image_size=32)
    >>> result = run_protocol(splits, embed)
    >>> print(result.table())
    Test classes ...
    >>> 0 <= result.to_dict()["results"]["test"]["recall@1"] <= 1
    True
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping

import numpy as np

from tfdnc.datasets.base import DataSplits, ImageSet
from tfdnc.evaluation.metrics import compute_metrics

METRICS = ("recall", "map@r", "marp", "r_precision", "nmi", "f1")


@dataclass(frozen=True)
class Protocol:
    """How a benchmark is evaluated.

    Attributes:
        name: the `DataSplits.protocol` it serves.
        title: the benchmark's name for tables.
        recall_ks: the Recall@K cut-offs reported.
        query_gallery: True when the benchmark is query vs gallery only.
    """

    name: str
    title: str
    recall_ks: tuple[int, ...]
    query_gallery: bool = False

    def evaluation_sets(self, splits: DataSplits) -> dict[str, tuple[ImageSet | None, ImageSet]]:
        """name -> (query set or None for all-vs-all, gallery / test set)."""
        sets: dict[str, tuple[ImageSet | None, ImageSet]] = {}
        if splits.test is not None and not self.query_gallery:
            sets["test"] = (None, splits.test)
        extra = dict(splits.extra_tests)
        pair = (splits.query, splits.gallery)
        if pair[0] is not None and pair[1] is not None:
            # VehicleID's main pair is also one of its extra tests: list it once.
            if not any(q is pair[0] and g is pair[1] for q, g in extra.values()):
                sets["query/gallery"] = pair
        for name in sorted(extra, key=_natural_key):
            query, gallery = extra[name]
            sets[name] = (query, gallery)
        if not sets:
            raise ValueError(
                f"protocol {self.name!r}: the data set has no "
                f"{'query and gallery' if self.query_gallery else 'test'} images to evaluate on"
            )
        return sets


PROTOCOLS: dict[str, Protocol] = {
    p.name: p
    for p in (
        Protocol("default", "Test classes", (1, 2, 4, 8)),
        Protocol("cub", "CUB-200-2011", (1, 2, 4, 8)),
        Protocol("cars", "CARS196", (1, 2, 4, 8)),
        Protocol("sop", "Stanford Online Products", (1, 10, 100, 1000)),
        Protocol("inshop", "In-shop Clothes", (1, 10, 20, 30, 50), query_gallery=True),
        Protocol("vehicleid", "PKU VehicleID", (1, 5), query_gallery=True),
    )
}


def get_protocol(name: str) -> Protocol:
    """The protocol named `name`; ValueError listing the known ones otherwise."""
    if name not in PROTOCOLS:
        raise ValueError(f"unknown evaluation protocol {name!r}; choose one of {', '.join(PROTOCOLS)}")
    return PROTOCOLS[name]


@dataclass
class ProtocolResult:
    """Metrics per evaluation set, in [0, 1].

    Attributes:
        protocol: the protocol evaluated.
        results: set name -> {"recall@1": ..., "nmi": ..., "f1": ..., "map@r": ...,
            "marp": ...}.
        sizes: set name -> (queries, gallery items); all-vs-all: (n, n).
    """

    protocol: Protocol
    results: dict[str, dict[str, float]] = field(default_factory=dict)
    sizes: dict[str, tuple[int, int]] = field(default_factory=dict)

    def columns(self) -> list[tuple[str, str]]:
        """(metric key, column title) in table order."""
        cols = [(f"recall@{k}", f"R@{k}") for k in self.protocol.recall_ks]
        return cols + [("nmi", "NMI"), ("f1", "F1"), ("map@r", "MAP@R"), ("marp", "mARP")]

    def table(self) -> str:
        """A plain-text table, figures in percent as the papers print them."""
        headers = ["set", "queries", "gallery"] + [title for _, title in self.columns()]
        rows = []
        for name, metrics in self.results.items():
            queries, gallery = self.sizes.get(name, (0, 0))
            cells = [name, str(queries), str(gallery)]
            for key, _ in self.columns():
                value = metrics.get(key)
                cells.append("-" if value is None else f"{100 * value:.2f}")
            rows.append(cells)
        widths = [max(len(r[i]) for r in [headers] + rows) for i in range(len(headers))]

        def line(cells):
            return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

        mode = "query vs gallery" if self.protocol.query_gallery else "all-vs-all"
        title = f"{self.protocol.title} ({self.protocol.name} protocol, {mode}; %)"
        return "\n".join([title, line(headers), line(["-" * w for w in widths])] + [line(r) for r in rows])

    def to_dict(self) -> dict:
        return {
            "protocol": self.protocol.name,
            "recall_ks": list(self.protocol.recall_ks),
            "results": self.results,
            "sizes": {k: {"queries": q, "gallery": g} for k, (q, g) in self.sizes.items()},
        }


def evaluate_embedded(
    protocol: Protocol | str,
    sets: Mapping[str, tuple[np.ndarray | None, np.ndarray | None, np.ndarray, np.ndarray]],
    metrics=METRICS,
    seed: int = 0,
    progress: bool = False,
) -> ProtocolResult:
    """Evaluates precomputed embeddings under `protocol`.

    Args:
        protocol: a `Protocol` or its name.
        sets: name -> (query embeddings or None, query labels or None,
            gallery embeddings, gallery labels); None queries mean
            all-vs-all on the gallery.
        metrics: passed to `tfdnc.evaluation.metrics.compute_metrics`.
        seed: k-means seed for NMI / F1.
        progress: a progress bar over the sets.
    """
    if isinstance(protocol, str):
        protocol = get_protocol(protocol)
    result = ProtocolResult(protocol)
    items = list(sets.items())
    for name, (q, ql, g, gl) in _progress(items, progress, "evaluating"):
        if (q is None) != (ql is None):
            raise ValueError(f"evaluation set {name!r}: give query embeddings and labels together")
        result.results[name] = compute_metrics(
            g, gl, ks=protocol.recall_ks, query_embeddings=q, query_labels=ql,
            metrics=metrics, seed=seed,
        )
        result.sizes[name] = (len(g) if q is None else len(q), len(g))
    return result


def run_protocol(
    splits: DataSplits,
    embed: Callable[[ImageSet], np.ndarray],
    protocol: Protocol | str | None = None,
    metrics=METRICS,
    seed: int = 0,
    progress: bool = False,
) -> ProtocolResult:
    """Embeds the evaluation images of `splits` and evaluates them.

    Args:
        splits: the data set (its `protocol` field picks the protocol).
        embed: maps an `ImageSet` to its (N, d) embeddings, in order.
        protocol: override the data set's protocol.
        metrics, seed, progress: see `evaluate_embedded`.

    Images that several sets share (VehicleID's test lists overlap) are
    embedded once.
    """
    protocol, image_sets, embedded = embed_evaluation_sets(splits, embed, protocol)
    return evaluate_embedded(protocol, embedded_arrays(image_sets, embedded), metrics=metrics, seed=seed,
                             progress=progress)


def evaluate_dataset(
    dataset: str,
    embed: Callable[[ImageSet], np.ndarray],
    data_dir: str | None = None,
    *,
    use_boxes: bool = False,
    seed: int = 0,
    progress: bool = False,
    **dataset_options,
) -> ProtocolResult:
    """Loads the data set named `dataset` and runs its protocol with `embed`.

    Examples:
        >>> evaluate_dataset("cub", embedder.embed, "/data/CUB_200_2011").table()  # doctest: +SKIP
    """
    from tfdnc.datasets import load_dataset

    splits = load_dataset(dataset, data_dir, use_boxes=use_boxes, **dataset_options)
    return run_protocol(splits, embed, seed=seed, progress=progress)


def embed_evaluation_sets(
    splits: DataSplits, embed: Callable[[ImageSet], np.ndarray], protocol: Protocol | str | None = None,
) -> tuple[Protocol, dict[str, tuple[ImageSet | None, ImageSet]], dict[int, np.ndarray]]:
    """(protocol, name -> (query set or None, gallery set), id(set) -> embeddings), each image embedded once."""
    protocol = get_protocol(protocol or splits.protocol) if not isinstance(protocol, Protocol) else protocol
    image_sets = protocol.evaluation_sets(splits)
    unique = [s for pair in image_sets.values() for s in pair if s is not None]
    return protocol, image_sets, embed_once(unique, embed)


def embedded_arrays(image_sets: Mapping[str, tuple[ImageSet | None, ImageSet]],
                    embedded: Mapping[int, np.ndarray]) -> dict[str, tuple]:
    """The `sets` argument of `evaluate_embedded` from `embed_evaluation_sets`' output."""
    sets = {}
    for name, (query, gallery) in image_sets.items():
        q = embedded[id(query)] if query is not None else None
        sets[name] = (q, query.labels if query is not None else None, embedded[id(gallery)], gallery.labels)
    return sets


def embed_once(image_sets: list[ImageSet], embed: Callable[[ImageSet], np.ndarray]) -> dict[int, np.ndarray]:
    """Embeddings of each image set (keyed by `id`), each distinct image embedded once.

    File-backed sets are merged on (path, box) into one set, embedded in a
    single call; in-memory sets are embedded one by one.
    """
    distinct = list({id(s): s for s in image_sets}.values())
    out: dict[int, np.ndarray] = {}
    files = [s for s in distinct if s.paths is not None]
    boxed = {s.boxes is not None for s in files}
    if len(files) > 1 and len(boxed) == 1:
        keys: dict[tuple, int] = {}
        rows: dict[int, np.ndarray] = {}
        paths, labels, boxes = [], [], []
        for s in files:
            index = np.empty(len(s), dtype=np.int64)
            for i, path in enumerate(s.paths):
                key = (path, tuple(s.boxes[i].tolist())) if s.boxes is not None else (path,)
                if key not in keys:
                    keys[key] = len(paths)
                    paths.append(path)
                    labels.append(s.labels[i])
                    if s.boxes is not None:
                        boxes.append(s.boxes[i])
                index[i] = keys[key]
            rows[id(s)] = index
        union = ImageSet(labels=np.array(labels), paths=paths,
                         boxes=np.array(boxes) if boxes else None, name="evaluation images")
        embeddings = _check(embed(union), union)
        for s in files:
            out[id(s)] = embeddings[rows[id(s)]]
    else:
        for s in files:
            out[id(s)] = _check(embed(s), s)
    for s in distinct:
        if s.paths is None:
            out[id(s)] = _check(embed(s), s)
    return out


def _check(embeddings, image_set: ImageSet) -> np.ndarray:
    embeddings = np.asarray(embeddings)
    if embeddings.ndim != 2 or len(embeddings) != len(image_set):
        raise ValueError(
            f"embed({image_set.name!r}) must return ({len(image_set)}, d) embeddings, got {embeddings.shape}"
        )
    return embeddings


def _natural_key(name: str):
    return (0, int(name)) if name.isdigit() else (1, name)


def _progress(items, enabled: bool, desc: str):
    if not enabled:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, unit="set")
