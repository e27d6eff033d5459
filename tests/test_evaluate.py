"""`tfdnc evaluate` (tfdnc.evaluation_cli) on a run directory, a .keras file and a SavedModel export."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from tfdnc.evaluation_cli import main
from tfdnc.loading import load_embedder


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    import keras

    from tfdnc.backbones import build_backbone
    from tfdnc.config import TrainConfig
    from tfdnc.model import DivideAndConquerModel

    run = str(tmp_path_factory.mktemp("run"))
    keras.utils.set_random_seed(1)
    model = DivideAndConquerModel(build_backbone("small_cnn", (16, 16, 1), width=4), embedding_dim=8, k_max=2)
    model(np.zeros((1, 16, 16, 1), np.float32))
    model.save(os.path.join(run, "model.keras"))
    TrainConfig(dataset="digits", image_size=16, embedding_dim=8, k_final=2, run_dir=run).save(
        os.path.join(run, "config.json"))
    return run


def brute_recall_at_1(x, labels):
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    sims = x @ x.T
    np.fill_diagonal(sims, -np.inf)
    return float(np.mean(labels[np.argmax(sims, axis=1)] == labels))


def test_run_dir_results_match_a_direct_computation(run_dir, capsys):
    from tfdnc.datasets import load_dataset

    report = main([run_dir, "--no-progress", "--batch-size", "100"])
    out = capsys.readouterr().out
    assert "R@1" in out and "R@8" in out and "MAP@R" in out
    written = json.load(open(os.path.join(run_dir, "evaluation_digits.json")))
    assert written["results"] == report["results"]
    assert written["recall_ks"] == [1, 2, 4, 8] and written["model_kind"] == "keras"
    # the same number from the model called directly on the test images
    embedder = load_embedder(run_dir)
    test = load_dataset("digits").test
    x = np.asarray(embedder.model(test.images.astype(np.float32)))
    # The evaluation pipeline feeds the model the same pixels ...
    from tfdnc.evaluation.embedding import embed_image_set, model_function

    evaluated = embed_image_set(model_function(embedder.model), test, 16, batch_size=100)
    np.testing.assert_allclose(evaluated, x, atol=1e-5)
    # ... and its R@1 is brute force on those embeddings. (Brute force on `x`
    # itself can differ by one query: this untrained 8-d embedding has exact
    # top-1 ties, which 2e-7 of round-off between the two paths can flip.)
    assert report["results"]["test"]["recall@1"] == pytest.approx(brute_recall_at_1(evaluated, test.labels), abs=1e-6)
    assert report["sizes"]["test"] == {"queries": len(test), "gallery": len(test)}


def test_export_gives_the_same_results(run_dir, tmp_path):
    from tfdnc.exporting import export_run

    export_run(run_dir, str(tmp_path / "exports"), "dnc", warmup=False)
    keras_report = main([run_dir, "--no-progress", "--output", str(tmp_path / "k.json")])
    export_report = main([str(tmp_path / "exports" / "dnc"), "--dataset", "digits", "--no-progress",
                          "--output", str(tmp_path / "s.json")])
    assert export_report["model_kind"] == "savedmodel"
    assert export_report["image_size"] == 16
    for key, value in keras_report["results"]["test"].items():
        assert export_report["results"]["test"][key] == pytest.approx(value, abs=2e-3), key


def test_an_export_evaluates_on_its_runs_benchmark_and_writes_beside_itself(run_dir, tmp_path, monkeypatch, capsys):
    from tfdnc.exporting import export_model, export_run, load_keras_model

    version = export_run(run_dir, str(tmp_path / "exports"), "dnc", warmup=False)
    monkeypatch.chdir(tmp_path / "exports")  # nothing may land in the working directory
    report = main(["dnc", "--no-progress"])  # no --dataset: the run's config.json says digits
    written = os.path.join(version + ".evaluation_digits.json")
    assert capsys.readouterr().out.strip().splitlines()[-1] == f"wrote {written}"
    assert report["dataset"] == "digits" and json.load(open(written))["results"] == report["results"]
    assert sorted(os.listdir(tmp_path / "exports")) == ["dnc"]
    assert sorted(os.listdir(tmp_path / "exports" / "dnc")) == ["1", "1.evaluation_digits.json"]

    # A model exported without a run to read (a .keras file alone) still needs --dataset, and says so.
    export_model(load_keras_model(os.path.join(run_dir, "model.keras")), str(tmp_path / "exports"), "alone",
                 image_size=16, warmup=False)
    with pytest.raises(ValueError, match="--dataset is required for the export 'alone'"):  # a UserInputError
        main(["alone", "--no-progress"])


def test_bad_arguments(run_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        main([str(tmp_path / "nothing")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="neither a run directory"):
        main([str(tmp_path / "empty"), "--dataset", "digits"])
    with pytest.raises(ValueError, match="--image-size"):
        load_embedder(_copy_without_config(run_dir, tmp_path))


def _copy_without_config(run_dir, tmp_path):
    import shutil

    target = tmp_path / "alone.keras"
    shutil.copy(os.path.join(run_dir, "model.keras"), target)
    return str(target)
