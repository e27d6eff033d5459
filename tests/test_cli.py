"""`python -m tfdnc.exporting` and the `tfdnc` command (embed, search, train)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import types

import numpy as np
import pytest

from tfdnc import cli
from tfdnc.backbones import build_backbone
from tfdnc.config import TrainConfig
from tfdnc.exporting.signatures import encode_png
from tfdnc.model import DivideAndConquerModel
from tfdnc.serving import ExportedModel

from rankings import assert_top_k  # tests/rankings.py

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZE = 16


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for i in range(5):
        folder = root / ("a" if i < 3 else "b")
        folder.mkdir(exist_ok=True)
        (folder / f"{i}.png").write_bytes(encode_png(rng.integers(0, 256, (20 + i, 18, 3), dtype=np.uint8)))
    (root / "notes.txt").write_text("not an image, not listed")
    return root


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    import keras

    keras.utils.set_random_seed(0)
    run = tmp_path_factory.mktemp("run")
    model = DivideAndConquerModel(build_backbone("small_cnn", (SIZE, SIZE, 3), width=4),
                                  embedding_dim=8, k_max=2, initial_k=2)
    model.compile(optimizer=keras.optimizers.Adam(1e-3))  # as train.py saves it
    model.save(run / "model.keras")
    TrainConfig(image_size=SIZE, embedding_dim=8).save(str(run / "config.json"))
    return run


@pytest.fixture(scope="module")
def export_base(run_dir, images, tmp_path_factory):
    run = run_dir
    base = tmp_path_factory.mktemp("exports")
    env = {**os.environ, "PYTHONPATH": ROOT, "TF_CPP_MIN_LOG_LEVEL": "2"}
    args = [sys.executable, "-m", "tfdnc.exporting", str(run), "--base", str(base), "--name", "cli",
            "--gallery", str(images), "--top-k", "3", "--max-k", "4"]
    proc = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == str(base / "cli" / "1")
    return base


def test_export_cli_refuses_an_existing_version_and_bad_sources(run_dir, export_base, tmp_path, capsys):
    from tfdnc.exporting.cli import main as export_main

    assert export_main([str(run_dir), "--base", str(export_base), "--name", "cli", "--version", "1"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert export_main([str(tmp_path), "--base", str(export_base), "--name", "x"]) == 2
    assert "model.keras" in capsys.readouterr().err
    (tmp_path / "m.keras").write_bytes(b"")
    assert export_main([str(tmp_path / "m.keras"), "--base", str(export_base), "--name", "x"]) == 2
    assert "--image-size is required" in capsys.readouterr().err
    assert export_main([str(run_dir), "--base", str(tmp_path), "--name", "x", "--warmup-batch-sizes", "1,0"]) == 2
    assert "--warmup-batch-sizes must be one or more positive integers" in capsys.readouterr().err
    assert export_main([str(run_dir), "--base", str(tmp_path), "--name", "x",
                        "--batching-parameters", str(tmp_path / "nope.txt")]) == 2
    assert "cannot read batching parameters" in capsys.readouterr().err


def test_export_cli_warms_up_the_batch_sizes_of_a_batching_file(run_dir, tmp_path, capsys):
    from tfdnc.exporting.cli import main as export_main

    config = tmp_path / "batching.txt"
    config.write_text("max_batch_size { value: 8 }\nallowed_batch_sizes: 2\nallowed_batch_sizes: 8\n")
    assert export_main([str(run_dir), "--base", str(tmp_path / "e"), "--name", "w",
                        "--batching-parameters", str(config)]) == 0
    version = capsys.readouterr().out.strip()
    metadata = json.load(open(os.path.join(version, "assets.extra", "tfdnc_export.json")))
    assert metadata["warmup_batch_sizes"] == [2, 8] and metadata["warmup_requests"] == 2 * 3


@pytest.fixture(scope="module")
def exported(export_base):
    return ExportedModel(export_base / "cli")


def _files(images):
    paths = sorted(p for p in images.rglob("*.png"))
    return [p.relative_to(images).as_posix() for p in paths], paths


def test_embed_writes_npy_json_csv(export_base, exported, images, tmp_path, capsys):
    ids, paths = _files(images)
    expected = exported.embed([str(p) for p in paths])
    assert cli.main(["embed", str(export_base / "cli"), str(images), "-o", str(tmp_path / "e.npy")]) == 0
    np.testing.assert_allclose(np.load(tmp_path / "e.npy"), expected, atol=1e-6)
    assert (tmp_path / "e.ids.txt").read_text().split() == ids

    assert cli.main(["embed", str(export_base / "cli" / "1"), str(images), "-o", str(tmp_path / "e.json"),
                     "--batch-size", "2"]) == 0
    data = json.load(open(tmp_path / "e.json"))
    assert data["ids"] == ids
    np.testing.assert_allclose(data["embeddings"], expected, atol=1e-6)

    assert cli.main(["embed", str(export_base / "cli"), str(paths[0]), str(paths[1]),
                     "-o", str(tmp_path / "e.csv")]) == 0
    rows = list(csv.reader(open(tmp_path / "e.csv")))
    assert rows[0] == ["id"] + [f"e{i}" for i in range(8)]
    np.testing.assert_allclose(np.array(rows[1][1:], float), expected[0], atol=1e-6)

    capsys.readouterr()
    assert cli.main(["embed", str(export_base / "cli"), str(images)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split(",")[0] for line in lines] == ids


def test_embed_learners(export_base, exported, images, tmp_path):
    _, paths = _files(images)
    assert cli.main(["embed", str(export_base / "cli"), str(images), "--learners",
                     "-o", str(tmp_path / "l.npy")]) == 0
    learners = np.load(tmp_path / "l.npy")
    assert learners.shape == (5, 2, 8)
    np.testing.assert_allclose(learners, exported.embed_learners([str(p) for p in paths]), atol=1e-6)


def test_search_with_the_exports_gallery(export_base, images, tmp_path):
    ids, paths = _files(images)
    out = tmp_path / "hits.json"
    assert cli.main(["search", str(export_base / "cli"), str(paths[3]), "-k", "2", "-o", str(out)]) == 0
    hits = json.load(open(out))
    assert [h["rank"] for h in hits] == [1, 2]
    assert hits[0]["id"] == ids[3] and hits[0]["similarity"] == pytest.approx(1.0, abs=1e-5)
    assert cli.main(["search", str(export_base / "cli"), str(paths[3]), "-k", "9"]) == 2


def test_search_k_beyond_the_exports_top_k_up_to_its_max_k(export_base, exported, images, tmp_path, capsys):
    ids, paths = _files(images)
    gallery = exported.embed([str(p) for p in paths])
    queries = exported.embed([str(paths[1]), str(paths[4])])
    sims = queries @ gallery.T
    out = tmp_path / "hits4.csv"
    # --top-k 3, --max-k 4: -k 4 is answered by `search_k`.
    assert cli.main(["search", str(export_base / "cli"), str(paths[1]), str(paths[4]), "-k", "4",
                     "--batch-size", "1", "-o", str(out)]) == 0
    rows = list(csv.DictReader(open(out)))
    assert_top_k(np.reshape([ids.index(r["id"]) for r in rows], (2, 4)), sims)  # tests/rankings.py
    assert cli.main(["search", str(export_base / "cli"), str(paths[1]), "-k", "5"]) == 2
    assert "-k 5 exceeds the 4 hits this export's `search_k` allows" in capsys.readouterr().err
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    assert cli.main(["search", str(export_base / "cli"), str(paths[1]), str(broken), "-k", "2"]) == 2
    err = capsys.readouterr().err
    assert "tfdnc search: error: cannot process image file" in err and "broken.png" in err


def test_search_with_a_gallery_folder_or_npz_matches_brute_force(export_base, exported, images, tmp_path, capsys):
    ids, paths = _files(images)
    gallery = exported.embed([str(p) for p in paths])
    queries = exported.embed([str(paths[0]), str(paths[4])])
    sims = queries @ gallery.T
    out = tmp_path / "hits.csv"
    assert cli.main(["search", str(export_base / "cli"), str(paths[0]), str(paths[4]),
                     "--gallery", str(images), "-k", "3", "-o", str(out)]) == 0
    rows = list(csv.DictReader(open(out)))
    got = np.reshape([ids.index(r["id"]) for r in rows], (2, 3))
    assert_top_k(got, sims)  # near-ties in either order (tests/rankings.py)
    np.testing.assert_allclose([float(r["similarity"]) for r in rows], np.take_along_axis(sims, got, 1).reshape(-1),
                               atol=1e-5)

    np.savez(tmp_path / "g.npz", embeddings=gallery, ids=np.array(ids))
    capsys.readouterr()
    assert cli.main(["search", str(export_base / "cli"), str(paths[0]), "--gallery",
                     str(tmp_path / "g.npz"), "-k", "1"]) == 0
    assert_top_k([[ids.index(capsys.readouterr().out.split("\t")[2])]], sims[:1])


def test_search_takes_the_npy_and_npz_tfdnc_embed_writes(export_base, exported, images, tmp_path, capsys):
    ids, paths = _files(images)
    gallery = exported.embed([str(p) for p in paths])
    nearest = int(np.argmax(exported.embed([str(paths[4])]) @ gallery.T))
    export = str(export_base / "cli")

    assert cli.main(["embed", export, str(images), "-o", str(tmp_path / "g.npz")]) == 0
    with np.load(tmp_path / "g.npz", allow_pickle=False) as data:  # strings, no pickled objects
        np.testing.assert_allclose(data["embeddings"], gallery, atol=1e-6)
        assert list(data["ids"]) == ids
        assert list(data["paths"]) == [str(p) for p in paths]
        assert list(data["labels"]) == [i.split("/")[0] for i in ids]  # the class subfolders
    assert cli.main(["embed", export, str(images), "-o", str(tmp_path / "g.npy")]) == 0
    capsys.readouterr()
    for name in ("g.npz", "g.npy"):  # the .npy's ids come from the .ids.txt beside it
        assert cli.main(["search", export, str(paths[4]), "--gallery", str(tmp_path / name), "-k", "1"]) == 0
        assert capsys.readouterr().out.split("\t")[2] == ids[nearest], name

    np.save(tmp_path / "bare.npy", gallery)  # no ids beside it: the row numbers
    assert cli.main(["search", export, str(paths[4]), "--gallery", str(tmp_path / "bare.npy"), "-k", "1"]) == 0
    assert capsys.readouterr().out.split("\t")[2] == str(nearest)
    np.save(tmp_path / "learners.npy", np.zeros((2, 2, 8), np.float32))
    assert cli.main(["search", export, str(paths[4]), "--gallery", str(tmp_path / "learners.npy")]) == 2
    assert "tfdnc search: error: Gallery: `embeddings` must be a non-empty (N, d) array" in capsys.readouterr().err


def test_embed_skips_and_names_the_files_it_cannot_read(export_base, exported, images, tmp_path, capsys):
    folder = tmp_path / "mixed"
    (folder / "a").mkdir(parents=True)
    _, paths = _files(images)
    (folder / "a" / "good.png").write_bytes(paths[0].read_bytes())
    (folder / "a" / "notes.jpg").write_text("a text file with an image's name")
    (folder / "b").mkdir()
    (folder / "b" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    (folder / "b" / "good.png").write_bytes(paths[4].read_bytes())
    expected = exported.embed([str(paths[0]), str(paths[4])])
    for batch_size in ("1", "3"):  # a bad file alone in its batch, or with good ones
        out = tmp_path / f"mixed{batch_size}.npz"
        capsys.readouterr()
        assert cli.main(["embed", str(export_base / "cli"), str(folder), "-o", str(out),
                         "--batch-size", batch_size]) == 0
        err = capsys.readouterr().err.splitlines()
        skipped = [line for line in err if line.startswith("tfdnc embed: skipped ")]
        assert [line.split()[3].rstrip(":") for line in skipped[:2]] == [str(folder / "a" / "notes.jpg"),
                                                                          str(folder / "b" / "broken.png")]
        assert skipped[0].endswith("(32 bytes) is not a JPEG/PNG/GIF/BMP/WebP image")  # why, without graph nodes
        assert skipped[1].endswith(": Invalid PNG. Failed to initialize decoder.")
        assert skipped[2] == "tfdnc embed: skipped 2 of 4 image files the model cannot read"
        with np.load(out) as data:  # ids and vectors still line up
            assert list(data["ids"]) == ["a/good.png", "b/good.png"]
            np.testing.assert_allclose(data["embeddings"], expected, atol=1e-6)
    (folder / "a" / "good.png").unlink()
    (folder / "b" / "good.png").unlink()
    assert cli.main(["embed", str(export_base / "cli"), str(folder)]) == 2
    assert "tfdnc embed: error: none of the 2 image files could be read" in capsys.readouterr().err


def test_bad_arguments_of_embed_are_named(export_base, images, tmp_path, capsys):
    folder = tmp_path / "mixed"
    folder.mkdir()
    _, paths = _files(images)
    (folder / "good.png").write_bytes(paths[0].read_bytes())
    assert cli.main(["embed", str(export_base / "cli"), str(tmp_path / "missing")]) == 2
    assert "missing" in capsys.readouterr().err
    assert cli.main(["embed", str(export_base / "cli"), str(folder), "-o", str(tmp_path / "x.txt")]) == 2
    assert "--output" in capsys.readouterr().err
    assert cli.main(["embed", str(tmp_path), str(folder)]) == 2  # not an export
    assert "saved_model.pb" in capsys.readouterr().err


def test_train_forwards_its_arguments(monkeypatch):
    seen = []
    fake = types.ModuleType("tfdnc.train")
    fake.main = lambda argv: seen.append(argv) or 0
    monkeypatch.setitem(sys.modules, "tfdnc.train", fake)
    assert cli.main(["train", "--epochs", "2"]) == 0
    assert seen == [["--epochs", "2"]]
