"""The report's figures, drawn with matplotlib's object API (no pyplot state).

Each function draws one PNG and returns its path.
"""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from tfdnc.report.runinfo import RunInfo

_DPI = 110


def _save(fig: Figure, path: str) -> str:
    fig.savefig(path, dpi=_DPI, bbox_inches="tight")
    return path


def _epoch_axis(ax) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _phase_lines(ax, info: RunInfo) -> None:
    """Marks the start of the full-embedding ("conquer") phase."""
    config = info.config
    epoch = getattr(config, "full_embedding_epoch", None)
    if epoch is not None and info.history and epoch <= len(info.history):
        ax.axvline(epoch, color="0.5", linestyle="--", linewidth=1)
        ax.text(epoch, ax.get_ylim()[1], " full embedding", va="top", fontsize=8, color="0.35")


def training_curves(info: RunInfo, path: str) -> str | None:
    """Losses (left) and Recall@K (right) per epoch; None if the history has neither."""
    keys = info.keys()
    loss_keys = [k for k in keys if k.endswith("loss") and len(info.series(k)[0])]
    recall_keys = [k for k in keys if "recall@" in k and len(info.series(k)[0])]
    if not loss_keys and not recall_keys:
        return None
    fig = Figure(figsize=(11, 3.8))
    axes = fig.subplots(1, 2)
    for key in loss_keys:
        epochs, values = info.series(key)
        axes[0].plot(epochs, values, marker="o", markersize=3, label=key)
    axes[0].set(title="training losses", xlabel="epoch", ylabel="loss")
    for ax in axes:
        _epoch_axis(ax)
    if loss_keys:
        axes[0].legend(fontsize=8)
        _phase_lines(axes[0], info)
    for key in recall_keys:
        epochs, values = info.series(key)
        scale = 100.0 if values.max() <= 1.0 else 1.0
        axes[1].plot(epochs, values * scale, marker="o", markersize=3, label=key,
                     linewidth=2.2 if key.endswith("recall@1") else 1.2)
    axes[1].set(title="Recall@K on the evaluation set", xlabel="epoch", ylabel="%")
    if recall_keys:
        axes[1].legend(fontsize=8)
        _phase_lines(axes[1], info)
    else:
        axes[1].text(0.5, 0.5, "no recall in history.json", ha="center", va="center",
                     transform=axes[1].transAxes)
    return _save(fig, path)


def clusters_over_time(info: RunInfo, path: str) -> str | None:
    """K (left) and the cluster sizes (right, stacked, largest first) per epoch."""
    k_epochs, k_values = info.series("K")
    sizes = [(i if not isinstance(e.get("epoch"), int) else e["epoch"], e["cluster_sizes"])
             for i, e in enumerate(info.history) if isinstance(e.get("cluster_sizes"), (list, tuple))]
    if not len(k_epochs) and not sizes:
        return None
    fig = Figure(figsize=(11, 3.8))
    axes = fig.subplots(1, 2)
    if len(k_epochs):
        axes[0].step(k_epochs, k_values, where="post", marker="o", markersize=3)
        axes[0].set_yscale("log", base=2)
    axes[0].set(title="number of learners K", xlabel="epoch", ylabel="K")
    for ax in axes:
        _epoch_axis(ax)
    if sizes:
        width = 0.8
        k_max = max(len(s) for _, s in sizes)
        colours = _colours(k_max)
        for epoch, row in sizes:
            bottom = 0.0
            for rank, size in enumerate(sorted((float(v) for v in row), reverse=True)):
                axes[1].bar(epoch, size, width, bottom=bottom, color=colours[rank], edgecolor="white",
                            linewidth=0.3)
                bottom += size
        axes[1].set(title="cluster sizes (stacked, largest first)", xlabel="epoch", ylabel="images")
    else:
        axes[1].text(0.5, 0.5, "no cluster_sizes in history.json", ha="center", va="center",
                     transform=axes[1].transAxes)
    return _save(fig, path)


def mask_heatmap(masks: np.ndarray, path: str, title: str = "masks") -> str:
    """One row per learner, one column per embedding dimension."""
    masks = np.atleast_2d(np.asarray(masks, dtype=np.float32))
    fig = Figure(figsize=(11, 1.2 + 0.28 * masks.shape[0]))
    ax = fig.subplots()
    image = ax.imshow(masks, aspect="auto", interpolation="nearest", cmap="viridis")
    ax.set(title=title, xlabel="embedding dimension", ylabel="learner")
    ax.set_yticks(range(masks.shape[0]))
    if masks.shape[0] > 16:
        ax.set_yticks(range(0, masks.shape[0], 4))
    fig.colorbar(image, ax=ax, fraction=0.03, pad=0.01)
    return _save(fig, path)


def embedding_map(points: np.ndarray, labels: np.ndarray, clusters: np.ndarray, path: str,
                  method: str) -> str:
    """The 2-D map twice: coloured by class and by cluster."""
    fig = Figure(figsize=(11, 5))
    axes = fig.subplots(1, 2)
    for ax, values, title in ((axes[0], labels, "by class"), (axes[1], clusters, "by cluster")):
        _, index = np.unique(values, return_inverse=True)
        colours = _colours(int(index.max()) + 1)
        ax.scatter(points[:, 0], points[:, 1], c=colours[index], s=7, linewidths=0)
        ax.set(title=f"test embeddings ({method}), {title}", xticks=[], yticks=[])
    return _save(fig, path)


def retrieval_examples(queries: np.ndarray, neighbours: np.ndarray, correct: np.ndarray, path: str,
                       query_labels=None, neighbour_labels=None) -> str:
    """One row per query: the query, then its top-k neighbours framed green (same class) or red.

    Args:
        queries: (Q, H, W, C) images in [0, 255].
        neighbours: (Q, k, H, W, C) images in [0, 255].
        correct: (Q, k) bool, neighbour shares the query's class.
    """
    n, k = correct.shape
    fig = Figure(figsize=(1.5 * (k + 1), 1.6 * n))
    axes = np.asarray(fig.subplots(n, k + 1, squeeze=False))
    for i in range(n):
        _show(axes[i, 0], queries[i], "black", "query" + (f"\n{query_labels[i]}" if query_labels is not None else ""))
        for j in range(k):
            ok = bool(correct[i, j])
            label = f"#{j + 1} " + ("\u2713" if ok else "\u2717")
            if neighbour_labels is not None:
                label += f" {neighbour_labels[i, j]}"
            _show(axes[i, j + 1], neighbours[i, j], "#1a9641" if ok else "#d7191c", label)
    fig.subplots_adjust(wspace=0.08, hspace=0.45)
    return _save(fig, path)


def _show(ax, image, colour, title):
    image = np.clip(np.asarray(image), 0, 255).astype(np.uint8)
    if image.shape[-1] == 1:
        ax.imshow(image[..., 0], cmap="gray", vmin=0, vmax=255)
    else:
        ax.imshow(image)
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_edgecolor(colour)
        spine.set_linewidth(4)
    ax.set_title(title, fontsize=8, color=colour if colour != "black" else "0.1")


def _colours(n: int) -> np.ndarray:
    """n distinguishable RGBA colours (tab20, then cycled hues)."""
    from matplotlib import colormaps

    if n <= 20:
        return colormaps["tab20"](np.arange(n) % 20)
    # Shuffled so neighbouring ids (often similar classes) get distant hues.
    order = np.random.default_rng(0).permutation(n)
    return colormaps["hsv"](np.linspace(0, 1, n, endpoint=False))[order]
