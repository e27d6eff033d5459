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


def shown_epochs(epochs: np.ndarray) -> np.ndarray:
    """History epochs (Keras' 0-based indices) as training printed them ("Epoch 1/N")."""
    return np.asarray(epochs) + 1


def full_embedding_start(info: RunInfo) -> int | None:
    """The 0-based epoch the full-embedding ("conquer") phase began at, if the run reached it.

    The figures draw a dashed line there and the captions mention it only
    when this is not None, so a caption never names a line that is not drawn.
    """
    epoch = getattr(info.config, "full_embedding_epoch", None)
    if getattr(info.config, "k_final", 1) <= 1:
        return None  # one learner all along: there is no divided phase to end
    trained = [e.get("epoch", i) for i, e in enumerate(info.history)]
    if epoch is None or not trained or epoch > max(trained) or epoch == 0:
        return None
    return int(epoch)


def _phase_lines(ax, info: RunInfo) -> None:
    """Marks the start of the full-embedding ("conquer") phase, between the last epoch before it and its first."""
    epoch = full_embedding_start(info)
    if epoch is not None:
        x = epoch + 0.5  # shown epochs are 1-based: the phase's first epoch is shown as epoch + 1
        ax.axvline(x, color="0.5", linestyle="--", linewidth=1)
        ax.text(x, ax.get_ylim()[1], " full embedding", va="top", fontsize=8, color="0.35")


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
        axes[0].plot(shown_epochs(epochs), values, marker="o", markersize=3, label=key)
    axes[0].set(title="training losses", xlabel="epoch", ylabel="loss")
    for ax in axes:
        _epoch_axis(ax)
    if loss_keys:
        axes[0].legend(fontsize=8)
        _phase_lines(axes[0], info)
    for key in recall_keys:
        epochs, values = info.series(key)
        scale = 100.0 if values.max() <= 1.0 else 1.0
        axes[1].plot(shown_epochs(epochs), values * scale, marker="o", markersize=3, label=key,
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
        axes[0].step(shown_epochs(k_epochs), k_values, where="post", marker="o", markersize=3)
        # A linear axis ticked at the K values the run had: a log axis drew ticks
        # such as 2^-1 for a run that stayed at K = 1.
        ks = np.unique(k_values.astype(int))
        axes[0].set_yticks(ks)
        axes[0].set_ylim(0, ks.max() * 1.15 + 0.5)
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
                axes[1].bar(epoch + 1, size, width, bottom=bottom, color=colours[rank], edgecolor="white",
                            linewidth=0.3)
                bottom += size
        axes[1].set(title="cluster sizes (stacked, largest first)", xlabel="epoch", ylabel="images")
    else:
        axes[1].text(0.5, 0.5, "no cluster_sizes in history.json", ha="center", va="center",
                     transform=axes[1].transAxes)
    return _save(fig, path)


def mask_scale(masks: np.ndarray) -> tuple[float, float]:
    """The colour range of the masks heat map: from 0 (a switched-off dimension) to at least 1.

    Scaling to the values' own min and max made masks of 0.99-1.01 (undivided)
    look as structured as masks that switch dimensions off.
    """
    masks = np.asarray(masks, dtype=np.float64)
    return min(0.0, float(masks.min())), max(1.0, float(masks.max()))


def mask_heatmap(masks: np.ndarray, path: str, title: str = "masks") -> str:
    """One row per learner, one column per embedding dimension, on a fixed 0..max(1, masks) scale."""
    masks = np.atleast_2d(np.asarray(masks, dtype=np.float32))
    fig = Figure(figsize=(11, 1.2 + 0.28 * masks.shape[0]))
    ax = fig.subplots()
    vmin, vmax = mask_scale(masks)
    image = ax.imshow(masks, aspect="auto", interpolation="nearest", cmap="viridis", vmin=vmin, vmax=vmax)
    ax.set(title=title, xlabel="embedding dimension", ylabel="learner")
    ax.set_yticks(range(masks.shape[0]))
    if masks.shape[0] > 16:
        ax.set_yticks(range(0, masks.shape[0], 4))
    fig.colorbar(image, ax=ax, fraction=0.03, pad=0.01)
    return _save(fig, path)


def embedding_map(points: np.ndarray, labels: np.ndarray, clusters: np.ndarray | None, path: str,
                  method: str) -> str:
    """The 2-D map coloured by class, and beside it by cluster when `clusters` is given."""
    panels = [(labels, "by class")] + ([] if clusters is None else [(clusters, "by cluster")])
    fig = Figure(figsize=(5.5 * len(panels), 5))
    axes = np.atleast_1d(fig.subplots(1, len(panels)))
    for ax, (values, title) in zip(axes, panels):
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
