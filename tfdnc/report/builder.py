"""Assembles the run report: figures from the run directory and from the model."""

from __future__ import annotations

import datetime
import os
import sys

import numpy as np

from tfdnc.evaluation.neighbors import nearest_neighbors
from tfdnc.report import figures
from tfdnc.report.page import Section, image_source, render_page
from tfdnc.report.runinfo import RunInfo, read_run
from tfdnc.rundir import CONFIG, HISTORY, METRICS, RunDir
from tfdnc.utils import l2_normalize, write_json

# Settings shown in the summary table, in this order, when the config has them.
_SUMMARY_KEYS = (
    "preset", "dataset", "data_dir", "backbone", "backbone_weights", "embedding_dim", "k_final", "growth",
    "mask_mode", "recluster_every", "full_embedding_epoch", "final_k1_epochs", "loss", "symmetrical",
    "classes_per_batch", "images_per_class", "learning_rate", "lr", "lr_schedule", "warmup_epochs", "epochs",
    "image_size", "resize_size",
)


def build_report(
    run_dir: str, output_dir: str | None = None, *, dataset: str | None = None, data_dir: str | None = None,
    projection: str = "tsne", max_points: int = 1500, map_classes: int = 20, num_queries: int = 6,
    top_k: int = 5, batch_size: int = 128, inline: bool = False, seed: int = 0, progress: bool = True,
) -> str:
    """Writes `index.html` and its PNG figures for a training run; returns the page's path.

    Args:
        run_dir: the directory `python train.py` wrote.
        output_dir: where to write (default: RUN_DIR/report).
        dataset, data_dir: evaluate on these instead of the run's own.
        projection: "tsne" or "pca" for the 2-D map of test embeddings.
        max_points: most points on the map.
        map_classes: classes drawn on the map (chosen at random), so that
            the colours stay distinguishable.
        num_queries, top_k: retrieval examples shown.
        batch_size: embedding batch size.
        inline: embed the PNGs in the page as data URIs (one portable file).
        seed: seeds every random choice (map classes, queries, k-means, t-SNE).
        progress: progress bars on stderr.

    Sections whose inputs are missing (no model, no history, no data)
    are replaced by a note saying what is missing.

    Examples:
        >>> build_report("runs/default", projection="pca")
        'runs/default/report/index.html'
    """
    if projection not in ("tsne", "pca"):
        raise ValueError(f"report: `projection` must be 'tsne' or 'pca', got {projection!r}")
    if max_points < 10 or num_queries < 0 or top_k < 1:
        raise ValueError("report: need max_points >= 10, num_queries >= 0 and top_k >= 1")
    info = read_run(run_dir)
    output_dir = output_dir or RunDir(run_dir).report
    os.makedirs(output_dir, exist_ok=True)
    stages = _Stages(progress, total=5)

    def src(path):
        return image_source(path, output_dir, inline)

    sections = [_summary_section(info, output_dir)]
    stages.step("training curves")
    sections.append(_training_section(info, output_dir, src))
    stages.step("loading the model")
    embedder, why_not = _load_model(info)
    sections.append(_masks_section(info, embedder, why_not, output_dir, src))
    splits, data_note = (None, why_not) if embedder is None else _load_data(info, dataset, data_dir)
    sections += _data_sections(info, embedder, splits, data_note, stages, src, output_dir,
                               dict(projection=projection, max_points=max_points, map_classes=map_classes,
                                    num_queries=num_queries, top_k=top_k, batch_size=batch_size, seed=seed,
                                    progress=progress))
    stages.close()
    return _write_page(run_dir, output_dir, sections)


def _data_sections(info, embedder, splits, data_note, stages, src, output_dir, options) -> list:
    """The evaluation, embedding-map and retrieval sections (notes saying why when there is no data)."""
    results_section = Section("Evaluation")
    map_section = Section("Test embeddings")
    retrieval_section = Section("Retrieval examples")
    sections = [results_section, map_section, retrieval_section]
    if splits is None:
        for section in sections:
            section.note(f"Skipped: {data_note}.")
        stages.step("embedding (skipped)")
        stages.step("figures (skipped)")
        return sections
    seed = options["seed"]
    stages.step("embedding and evaluating")
    result, embedded, sets = _evaluate(embedder, splits, options["batch_size"], seed, options["progress"])
    _results(results_section, result, output_dir)
    stages.step("map and retrieval examples")
    query_set, gallery_set = next(iter(sets.values()))
    gallery_embeddings = embedded[id(gallery_set)]
    path, caption = _embedding_map(gallery_set, gallery_embeddings, _final_k(info), options["projection"],
                                   options["max_points"], options["map_classes"], seed, output_dir)
    map_section.figure(src(path), caption, "2-D map of test embeddings")
    if options["num_queries"]:
        path, caption = _retrieval(embedder, query_set, gallery_set,
                                   embedded[id(query_set)] if query_set is not None else None,
                                   gallery_embeddings, options["num_queries"], options["top_k"], seed, output_dir)
        retrieval_section.figure(src(path), caption, "retrieval examples")
    else:
        retrieval_section.note("No retrieval examples requested (--num-queries 0).")
    return sections


def _write_page(run_dir: str, output_dir: str, sections: list) -> str:
    title = f"tfdnc run report: {os.path.basename(os.path.abspath(run_dir))}"
    subtitle = f"{os.path.abspath(run_dir)} \u00b7 generated {datetime.datetime.now():%Y-%m-%d %H:%M}"
    page = os.path.join(output_dir, "index.html")
    with open(page, "w", encoding="utf-8") as f:
        f.write(render_page(title, subtitle, sections))
    return page


# --- sections ------------------------------------------------------------------


def _training_section(info: RunInfo, output_dir: str, src) -> Section:
    training = Section("Training")
    path = figures.training_curves(info, os.path.join(output_dir, "curves.png"))
    if path:
        start = figures.full_embedding_start(info)
        line = ("" if start is None else f"; the dashed line marks the start of the full-embedding (conquer) "
                f"phase at epoch {start + 1}")
        training.figure(src(path), f"Losses and Recall@K after each epoch (numbered from 1, as training "
                        f"printed them){line}.", "loss and recall curves")
    else:
        training.note("history.json has no losses or recalls to plot.")
    path = figures.clusters_over_time(info, os.path.join(output_dir, "clusters.png"))
    if path:
        training.figure(src(path), "Number of learners K and the training-cluster sizes at every epoch.",
                        "K and cluster sizes over time")
    else:
        training.note("history.json records neither K nor cluster_sizes.")
    return training


def _masks_section(info: RunInfo, embedder, why_not: str | None, output_dir: str, src) -> Section:
    section = Section("Subspace masks")
    masks = info.masks
    if masks is None and embedder is not None and hasattr(getattr(embedder.model, "masks", None), "mask_values"):
        masks = np.asarray(embedder.model.masks.mask_values())
    if masks is None:
        section.note(f"No masks: no masks.npy and {why_not or 'the model has no masks layer'}.")
        return section
    mode = info.config_values.get("mask_mode", "")
    path = figures.mask_heatmap(masks, os.path.join(output_dir, "masks.png"),
                                f"{mode} masks: learner x embedding dimension".strip())
    section.figure(src(path), "Effective mask values: one row per learner (subspace), one "
                   "column per embedding dimension.", "mask heat map")
    return section


def _results(section: Section, result, output_dir: str) -> None:
    """The protocol table, in percent, and evaluation.json beside the page."""
    headers = ["set", "queries", "gallery"] + [title for _, title in result.columns()]
    rows = []
    for name, metrics in result.results.items():
        q, g = result.sizes[name]
        rows.append([name, q, g] + [
            "-" if metrics.get(key) is None else f"{100 * metrics[key]:.2f}" for key, _ in result.columns()
        ])
    section.paragraph(f"{result.protocol.title}, {result.protocol.name} protocol "
                      f"({'query vs gallery' if result.protocol.query_gallery else 'all-vs-all'}), in percent.")
    section.table(headers, rows)
    write_json(os.path.join(output_dir, "evaluation.json"), result.to_dict())
    section.links([("evaluation.json", "evaluation.json")])


def _summary_section(info: RunInfo, output_dir: str) -> Section:
    section = Section("Run")
    values = info.config_values
    rows = [[key, _fmt(values[key])] for key in _SUMMARY_KEYS if key in values]
    if rows:
        section.table(["setting", "value"], rows)
    else:
        section.note("No config.json in the run directory.")
    preset = values.get("preset")
    if preset:
        from tfdnc.presets import PRESETS

        if preset in PRESETS:
            target = PRESETS[preset]
            figures_text = ", ".join(f"{k} {v}" for k, v in target.published.items())
            section.paragraph(f"Preset {preset}: {target.source}; published {figures_text} (%)"
                              + (f"; note: {target.note}" if target.note else "") + ".")
    if info.metrics:
        _metrics_tables(section, info.metrics)
    files = [(name, os.path.relpath(os.path.join(info.run_dir, name), output_dir).replace(os.sep, "/"))
             for name in (CONFIG, HISTORY, METRICS)
             if os.path.isfile(os.path.join(info.run_dir, name))]
    if files:
        section.links(files)
    return section


def _metrics_tables(section: Section, metrics: dict) -> None:
    """metrics.json: protocol results (before / after training) as one table, the rest as another."""
    stages = {k: v for k, v in metrics.items() if isinstance(v, dict) and isinstance(v.get("results"), dict)}
    if stages:
        keys: list[str] = []
        for stage in stages.values():
            for values in stage["results"].values():
                keys += [k for k in values if k not in keys and k != "num_queries"]
        rows = []
        for name, stage in stages.items():
            for set_name, values in stage["results"].items():
                rows.append([name, set_name] + [
                    f"{100 * values[k]:.2f}" if isinstance(values.get(k), (int, float)) else "-" for k in keys
                ])
        section.paragraph("Evaluations recorded by training (metrics.json), in percent:")
        section.table(["when", "set"] + keys, rows)
    rest = [[k, _fmt(v)] for k, v in _flatten({k: v for k, v in metrics.items() if k not in stages})]
    if rest:
        section.table(["metrics.json", "value"], rest)


def _load_model(info: RunInfo):
    if info.model_path is None:
        return None, "the run directory has no model.keras"
    if info.config is None:
        return None, "config.json is missing or unreadable (image sizes unknown)"
    from tfdnc.loading import load_embedder

    return load_embedder(info.run_dir), None


def _load_data(info: RunInfo, dataset: str | None, data_dir: str | None):
    from tfdnc.datasets import DatasetError, load_dataset

    config = info.config
    name = dataset or config.dataset
    same = name == config.dataset
    directory = data_dir or (config.data_dir if same else None)
    try:
        splits = load_dataset(name, directory, use_boxes=bool(same and config.use_boxes))
    except (DatasetError, ImportError, OSError) as exc:
        return None, f"cannot load the {name!r} data set ({exc})"
    return splits, None


def _evaluate(embedder, splits, batch_size, seed, progress):
    from tfdnc.evaluation.protocols import embed_evaluation_sets, embedded_arrays, evaluate_embedded

    protocol, sets, embedded = embed_evaluation_sets(
        splits, lambda s: embedder.embed(s, batch_size=batch_size, progress=progress))
    result = evaluate_embedded(protocol, embedded_arrays(sets, embedded), seed=seed, progress=progress)
    return result, embedded, sets


def _final_k(info: RunInfo) -> int:
    _, k = info.series("K")
    if len(k):
        return int(k[-1])
    return int(info.config_values.get("k_final", 1))


def _embedding_map(image_set, embeddings, k, projection, max_points, map_classes, seed, output_dir):
    from tfdnc.clustering import kmeans

    rng = np.random.default_rng(seed)
    x = l2_normalize(embeddings)
    # A run that ended with one learner has no clusters to show: one panel, by class.
    k = int(min(k, len(x)))
    clusters = kmeans(x, k, seed=seed, spherical=True)[0] if k > 1 else None
    classes = np.unique(image_set.labels)
    chosen = rng.permutation(classes)[:map_classes]
    index = np.flatnonzero(np.isin(image_set.labels, chosen))
    if len(index) > max_points:
        index = np.sort(rng.choice(index, max_points, replace=False))
    points = _project(x[index], projection, seed)
    path = figures.embedding_map(points, image_set.labels[index], None if clusters is None else clusters[index],
                                 os.path.join(output_dir, "embedding_map.png"), projection.upper()
                                 if projection == "pca" else "t-SNE")
    caption = (f"{len(index)} test images of {len(np.intersect1d(chosen, image_set.labels))} classes "
               f"(of {len(classes)}), projected with {'PCA' if projection == 'pca' else 't-SNE'}"
               + (f"; right: spherical k-means of all {len(x)} test embeddings into K = {k} clusters, the "
                  "run's final number of learners." if clusters is not None else
                  "; the run ended with K = 1 (one learner), so no cluster panel is drawn."))
    return path, caption


def _retrieval(embedder, query_set, gallery_set, query_embeddings, gallery_embeddings, num_queries,
               top_k, seed, output_dir):
    rng = np.random.default_rng(seed + 1)
    all_vs_all = query_set is None
    queries = gallery_set if all_vs_all else query_set
    q_emb = l2_normalize(gallery_embeddings if all_vs_all else query_embeddings)
    g_emb = l2_normalize(gallery_embeddings)
    picks = np.sort(rng.choice(len(queries), min(num_queries, len(queries)), replace=False))
    top = nearest(q_emb[picks], g_emb, top_k, exclude=picks if all_vs_all else None)
    k = top.shape[1]
    correct = gallery_set.labels[top] == queries.labels[picks][:, None]
    query_images = _pixels(embedder, queries.subset(picks, name="queries"))
    neighbour_images = _pixels(embedder, gallery_set.subset(top.reshape(-1), name="neighbours"))
    neighbour_images = neighbour_images.reshape((len(picks), k) + neighbour_images.shape[1:])
    path = figures.retrieval_examples(query_images, neighbour_images, correct,
                                      os.path.join(output_dir, "retrieval.png"),
                                      queries.labels[picks], gallery_set.labels[top])
    caption = (f"{len(picks)} random queries and their top {k} "
               f"{'other test images' if all_vs_all else 'gallery images'}; green: same class "
               f"({correct.mean() * 100:.0f}% of those shown), red: another class. Labels are class ids.")
    return path, caption


def nearest(queries: np.ndarray, gallery: np.ndarray, k: int, exclude: np.ndarray | None = None) -> np.ndarray:
    """Indices (Q, k) of the k most similar gallery rows (inner product), best first.

    `exclude[i]` is a gallery index query i may not retrieve (itself, in
    all-vs-all retrieval). Ties rank the lower gallery index first: the
    search is `tfdnc.evaluation.neighbors.nearest_neighbors`.
    """
    k = min(int(k), gallery.shape[0] - (1 if exclude is not None else 0))
    return nearest_neighbors(queries, gallery, k, exclude=exclude, metric="inner_product")[0]


def _pixels(embedder, image_set) -> np.ndarray:
    from tfdnc.data.pipeline import make_eval_dataset

    batches = make_eval_dataset(image_set, embedder.image_size, embedder.resize_size, batch_size=64)
    return np.concatenate([np.asarray(b) for b in batches])


def _project(x: np.ndarray, projection: str, seed: int) -> np.ndarray:
    if len(x) < 3:
        return np.pad(x[:, :2], ((0, 0), (0, max(0, 2 - x.shape[1]))))
    if projection == "pca":
        from sklearn.decomposition import PCA

        return PCA(n_components=2, random_state=seed).fit_transform(x)
    from sklearn.manifold import TSNE

    perplexity = float(min(30, max(2, (len(x) - 1) // 3)))
    return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(x)


def _flatten(values, prefix=""):
    for key, value in values.items() if isinstance(values, dict) else []:
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            yield from _flatten(value, f"{name}.")
        elif not isinstance(value, list):
            yield name, value


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "none" if value is None else str(value)


class _Stages:
    """A progress bar over the report's stages."""

    def __init__(self, enabled: bool, total: int):
        self.bar = None
        if enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc="report", unit="stage", file=sys.stderr)
        self.started = False

    def step(self, name: str) -> None:
        if self.bar is None:
            return
        if self.started:
            self.bar.update(1)
        self.started = True
        self.bar.set_postfix_str(name)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.update(1)
            self.bar.close()
