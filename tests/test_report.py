"""The run report: figures drawn from a run directory, every link and image resolving."""

from __future__ import annotations

import base64
import io
import json
import os
from html.parser import HTMLParser

import numpy as np
import pytest
from PIL import Image

from tfdnc.report import build_report, read_run
from tfdnc.report.builder import nearest
from tfdnc.report.runinfo import normalise_history

from rankings import assert_top_k  # tests/rankings.py

FIGURES = {"curves.png", "clusters.png", "masks.png", "embedding_map.png", "retrieval.png"}


def write_history(run_dir, epochs=6):
    history, k = [], 1
    for epoch in range(epochs):
        if epoch in (2, 4):
            k *= 2
        sizes = np.random.default_rng(epoch).multinomial(450, [1 / k] * k).tolist()
        history.append({"epoch": epoch, "loss": 0.3 / (epoch + 1), "mask_loss": 0.01, "K": k,
                        "val_recall@1": 0.5 + 0.02 * epoch, "cluster_sizes": sizes})
    with open(os.path.join(run_dir, "history.json"), "w") as f:
        json.dump(history, f)
    return history


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A real (tiny) run of the default training on the digits data: what `python train.py` leaves."""
    from tfdnc.config import TrainConfig
    from tfdnc.train import run

    run_dir = str(tmp_path_factory.mktemp("run"))
    config = TrainConfig(dataset="digits", image_size=16, embedding_dim=8, k_final=2, recluster_every=1,
                         epochs=2, steps_per_epoch=3, full_embedding_epoch=None, kmeans_iters=10,
                         run_dir=run_dir)
    run(config, export=False, verbose=0)
    return run_dir


class PageRefs(HTMLParser):
    def __init__(self):
        super().__init__()
        self.images, self.links = [], []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs["src"])
        if tag == "a":
            self.links.append(attrs["href"])


def refs(page):
    parser = PageRefs()
    with open(page, encoding="utf-8") as f:
        parser.feed(f.read())
    return parser


def assert_png(data_or_path):
    image = Image.open(data_or_path)
    assert image.format == "PNG" and image.size[0] > 100 and image.size[1] > 50


def test_report_renders_every_figure_and_every_reference_resolves(run_dir):
    page = build_report(run_dir, projection="pca", progress=False, num_queries=4, top_k=3)
    assert page == os.path.join(run_dir, "report", "index.html")
    found = refs(page)
    assert {os.path.basename(src) for src in found.images} == FIGURES
    folder = os.path.dirname(page)
    for src in found.images:
        assert not os.path.isabs(src) and not src.startswith("data:")
        assert_png(os.path.join(folder, src))
    assert {"evaluation.json", "../config.json", "../history.json", "../metrics.json"} <= set(found.links)
    for href in found.links:
        assert os.path.isfile(os.path.join(folder, href)), href
    text = open(page, encoding="utf-8").read()
    assert 'class="note"' not in text  # no section skipped
    after = json.load(open(os.path.join(run_dir, "metrics.json")))["after"]["results"]["test"]["recall@1"]
    assert f"<td>after</td><td>test</td><td>{100 * after:.2f}</td>" in text  # metrics.json is shown
    history = read_run(run_dir).history
    assert history[-1]["K"] == 2 and "cluster_sizes" in history[-1]  # what the K figure draws


def test_report_evaluation_matches_the_evaluate_command(run_dir, tmp_path):
    from tfdnc.evaluation_cli import main as evaluate_main

    build_report(run_dir, str(tmp_path / "r"), projection="pca", progress=False, num_queries=0)
    from_report = json.load(open(tmp_path / "r" / "evaluation.json"))
    from_cli = evaluate_main([run_dir, "--no-progress", "--output", str(tmp_path / "e.json")])
    assert from_report["results"]["test"] == pytest.approx(from_cli["results"]["test"])
    assert set(from_cli["results"]["test"]) >= {"recall@1", "recall@8", "nmi", "f1", "map@r"}


def test_inline_report_is_one_file(run_dir, tmp_path):
    page = build_report(run_dir, str(tmp_path / "inline"), projection="pca", progress=False, inline=True,
                        num_queries=2, top_k=2)
    found = refs(page)
    assert len(found.images) == len(FIGURES)
    for src in found.images:
        prefix = "data:image/png;base64,"
        assert src.startswith(prefix)
        assert_png(io.BytesIO(base64.b64decode(src[len(prefix):])))


def test_report_without_model_says_what_is_missing(tmp_path):
    write_history(str(tmp_path), epochs=3)
    # a config from a newer version (unknown field) naming its preset
    with open(tmp_path / "config.json", "w") as f:
        json.dump({"dataset": "cub", "preset": "tpami-cub", "field_from_the_future": 1}, f)
    assert read_run(str(tmp_path)).config.dataset == "cub"
    np.save(tmp_path / "masks.npy", np.random.default_rng(0).random((4, 16)))
    page = build_report(str(tmp_path), progress=False)
    found = refs(page)
    assert {os.path.basename(s) for s in found.images} == {"curves.png", "clusters.png", "masks.png"}
    text = open(page, encoding="utf-8").read()
    assert "no model.keras" in text
    assert "published recall@1 67.7, nmi 69.8" in text  # the preset's target
    assert found.links == ["../config.json", "../history.json"]


def test_history_forms_and_bad_files(tmp_path):
    as_lists = normalise_history({"loss": [3.0, 2.0], "K": [1, 2]})
    assert as_lists == [{"loss": 3.0, "K": 1}, {"loss": 2.0, "K": 2}]
    with pytest.raises(ValueError, match="different lengths"):
        normalise_history({"loss": [1.0], "K": [1, 2]})
    (tmp_path / "history.json").write_text("{not json")
    with pytest.raises(ValueError, match="history.json"):
        read_run(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="run directory"):
        read_run(str(tmp_path / "absent"))
    with pytest.raises(ValueError, match="projection"):
        build_report(str(tmp_path), projection="umap")


def test_nearest_matches_brute_force_and_excludes_the_query():
    rng = np.random.default_rng(2)
    gallery = rng.normal(size=(40, 5))
    picks = np.array([3, 17, 28])
    top = nearest(gallery[picks], gallery, 4, exclude=picks)
    for row, i in zip(top, picks):
        sims = gallery @ gallery[i]
        sims[i] = -np.inf
        assert_top_k(row[None], sims[None])  # near-ties in either order (tests/rankings.py)
        assert i not in row
    # ties: the lower gallery index first
    tied = nearest(np.ones((1, 2)), np.ones((5, 2)), 3)
    np.testing.assert_array_equal(tied, [[0, 1, 2]])


def test_report_for_a_query_gallery_data_set(tmp_path):
    """Image files listed in a CSV with query / gallery splits, and an RGB model."""
    import keras

    from tfdnc.backbones import build_backbone
    from tfdnc.config import TrainConfig
    from tfdnc.model import DivideAndConquerModel

    rng = np.random.default_rng(3)
    lines = ["path,label,split"]
    for item in range(12):
        colour = rng.integers(0, 255, size=3)
        for j, split in enumerate(["train", "train"] if item < 4 else ["query", "query", "gallery"]):
            pixels = np.clip(colour + rng.normal(0, 20, size=(20, 18, 3)), 0, 255).astype(np.uint8)
            name = f"img/{item}_{j}.png"
            os.makedirs(tmp_path / "img", exist_ok=True)
            Image.fromarray(pixels).save(tmp_path / name)
            lines.append(f"{name},item{item:02d},{split}")
    (tmp_path / "list.csv").write_text("\n".join(lines) + "\n")

    run = tmp_path / "run"
    run.mkdir()
    keras.utils.set_random_seed(0)
    model = DivideAndConquerModel(build_backbone("small_cnn", (16, 16, 3), width=4), embedding_dim=8, k_max=2)
    model(np.zeros((1, 16, 16, 3), np.float32))
    model.save(str(run / "model.keras"))
    TrainConfig(dataset="csv", data_dir=str(tmp_path / "list.csv"), image_size=16, resize_size=18,
                embedding_dim=8, k_final=2, run_dir=str(run)).save(str(run / "config.json"))

    page = build_report(str(run), projection="tsne", progress=False, num_queries=3, top_k=4, max_points=50)
    found = refs(page)
    assert {os.path.basename(s) for s in found.images} == FIGURES - {"curves.png", "clusters.png"}
    for src in found.images:
        assert_png(os.path.join(os.path.dirname(page), src))
    evaluation = json.load(open(run / "report" / "evaluation.json"))
    assert list(evaluation["results"]) == ["query/gallery"]
    assert evaluation["sizes"]["query/gallery"] == {"queries": 16, "gallery": 8}
    text = open(page, encoding="utf-8").read()
    assert "top 4 gallery images" in text and "history.json has no losses" in text


# --- what the page says and draws matches what the run did (issue 21) -----------------------------


@pytest.fixture
def drawn(monkeypatch):
    """The matplotlib Figures the report draws, by file name (saved as usual)."""
    from tfdnc.report import figures

    found = {}
    save = figures._save

    def keep(fig, path):
        found[os.path.basename(path)] = fig
        return save(fig, path)

    monkeypatch.setattr(figures, "_save", keep)
    return found


def _k1_copy(run_dir, tmp_path, full_embedding_epoch=None):
    """The tiny run, as if it had ended at K = 1 (history and config say so)."""
    import shutil

    copy = str(tmp_path / "k1run")
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("report", ".lock"))
    history = json.load(open(os.path.join(copy, "history.json")))
    for entry in history:
        entry["K"] = 1
        entry.pop("cluster_sizes", None)
    json.dump(history, open(os.path.join(copy, "history.json"), "w"))
    config = json.load(open(os.path.join(copy, "config.json")))
    config.update(k_final=1, full_embedding_epoch=full_embedding_epoch)
    json.dump(config, open(os.path.join(copy, "config.json"), "w"))
    return copy


def test_a_k1_run_is_not_described_with_clusters(run_dir, tmp_path, drawn):
    copy = _k1_copy(run_dir, tmp_path)
    page = build_report(copy, projection="pca", progress=False, num_queries=0)
    text = open(page, encoding="utf-8").read()
    assert "K = 2" not in text and "ended with K = 1" in text
    assert len(drawn["embedding_map.png"].axes) == 1  # by class only
    # K on a linear axis ticked at the K the run had (a log axis ticked 2^-1 here)
    k_axis = drawn["clusters.png"].axes[0]
    assert list(k_axis.get_yticks()) == [1] and k_axis.get_yscale() == "linear"


def test_epochs_are_numbered_as_training_printed_them(run_dir, drawn):
    build_report(run_dir, projection="pca", progress=False, num_queries=0)
    history = read_run(run_dir).history
    loss_line = drawn["curves.png"].axes[0].get_lines()[0]
    # history.json keeps Keras' 0-based epochs; training printed "Epoch 1/2", "Epoch 2/2"
    assert [e["epoch"] for e in history] == [0, 1]
    assert list(loss_line.get_xdata()) == [1, 2]


def test_the_dashed_line_is_named_only_where_it_is_drawn(run_dir, tmp_path, drawn):
    # the fixture run never reaches a full-embedding phase (full_embedding_epoch None)
    page = build_report(run_dir, projection="pca", progress=False, num_queries=0)
    assert "dashed" not in open(page, encoding="utf-8").read()
    assert not [line for line in drawn["curves.png"].axes[0].get_lines() if line.get_linestyle() == "--"]
    # the same run with the phase starting at its second epoch (0-based 1): drawn between 1 and 2, and named
    import shutil

    copy = str(tmp_path / "phase")
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("report", ".lock"))
    config = json.load(open(os.path.join(copy, "config.json")))
    config["full_embedding_epoch"] = 1
    json.dump(config, open(os.path.join(copy, "config.json"), "w"))
    drawn.clear()
    page = build_report(copy, projection="pca", progress=False, num_queries=0)
    assert "dashed line marks the start of the full-embedding (conquer) phase at epoch 2" in open(
        page, encoding="utf-8").read()
    dashed = [line for line in drawn["curves.png"].axes[0].get_lines() if line.get_linestyle() == "--"]
    assert len(dashed) == 1 and dashed[0].get_xdata()[0] == pytest.approx(1.5)


def test_mask_heatmap_does_not_stretch_noise_into_structure(tmp_path, drawn):
    from tfdnc.report import figures

    undivided = 1.0 + np.random.default_rng(0).uniform(-0.01, 0.01, size=(4, 16))
    figures.mask_heatmap(undivided, str(tmp_path / "masks.png"))
    low, high = drawn["masks.png"].axes[0].images[0].get_clim()
    assert low == 0.0 and high == pytest.approx(undivided.max())  # 0.99-1.01 fills the top 2% of the scale
    divided = np.where(np.arange(16) < 8, 1.3, 0.0)[None].repeat(2, 0)
    figures.mask_heatmap(divided, str(tmp_path / "masks.png"))
    assert drawn["masks.png"].axes[0].images[0].get_clim() == pytest.approx((0.0, 1.3))


def test_report_on_a_folder_that_is_not_a_run_is_one_line_and_writes_nothing(tmp_path):
    import subprocess
    import sys

    (tmp_path / "photo.png").write_bytes(b"not a run")
    before = sorted(os.listdir(tmp_path))
    result = subprocess.run([sys.executable, "-m", "tfdnc.cli", "report", str(tmp_path)], capture_output=True,
                            text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "is not a training run" in lines[0] and "Traceback" not in result.stderr
    assert sorted(os.listdir(tmp_path)) == before  # no report/ written into the user's folder
