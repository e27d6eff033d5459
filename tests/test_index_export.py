"""`tfdnc index` with real exports: build/add/remove/search/calibrate/evaluate from image
folders, CSVs and run directories; the serving path (TF Serving REST and gRPC, in-process);
an index refused for another model's export."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pymilvus  # noqa: F401  imported before `capsys` swaps stderr: pymilvus binds its log handler to it
import pytest

import tfdnc
from tfdnc.exporting import export_model
from tfdnc.exporting.signatures import encode_png
from tfdnc.index import IndexMismatchError, SearchService, calibrate_threshold, open_index
from tfdnc.index.cli import run
from tfdnc.serving.local import ExportedModel

from rankings import assert_top_k  # tests/rankings.py

IMAGE_SIZE = 16


def tiny_model(seed):
    import keras

    from tfdnc.backbones import build_backbone
    from tfdnc.model import DivideAndConquerModel

    keras.utils.set_random_seed(seed)
    backbone = build_backbone("small_cnn", (IMAGE_SIZE, IMAGE_SIZE, 1), width=4)
    model = DivideAndConquerModel(backbone, embedding_dim=8, k_max=2, initial_k=1)
    model(np.zeros((1, IMAGE_SIZE, IMAGE_SIZE, 1), np.float32))
    return model


def stripes(rng, vertical):
    image = np.zeros((IMAGE_SIZE, IMAGE_SIZE, 1), np.float32)
    if vertical:
        image[:, ::3] = 255
    else:
        image[::3] = 255
    noisy = image + rng.normal(0, 40, image.shape)
    return encode_png(np.clip(noisy, 0, 255).astype(np.uint8))


def write_images(root, per_class, seed):
    rng = np.random.default_rng(seed)
    for label in ("horizontal", "vertical"):
        os.makedirs(root / label, exist_ok=True)
        for i in range(per_class):
            (root / label / f"{label[0]}{seed}_{i}.png").write_bytes(stripes(rng, label == "vertical"))
    return root


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    base = tmp_path_factory.mktemp("exports")
    ours = export_model(tiny_model(0), base, "dnc", image_size=IMAGE_SIZE, warmup=False)
    other = export_model(tiny_model(1), base, "other", image_size=IMAGE_SIZE, warmup=False)
    return base, ours, other


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    return {"gallery": write_images(root / "gallery", 6, 0), "queries": write_images(root / "queries", 3, 1),
            "extra": write_images(root / "extra", 2, 2)}


@pytest.fixture(scope="module")
def model(exports):
    return ExportedModel(exports[1])


def files(folder):
    return sorted(str(p) for p in folder.rglob("*.png"))


def cli(*argv):
    return run([str(a) for a in argv])


def brute_force(model, queries, gallery):
    """Cosine similarity of every query to every gallery image (float64)."""
    q, g = model.embed(queries).astype(np.float64), model.embed(gallery).astype(np.float64)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    g /= np.linalg.norm(g, axis=1, keepdims=True)
    return q @ g.T


def search_records(tmp_path, export, queries, *extra):
    out = tmp_path / f"hits{len(os.listdir(tmp_path))}.json"
    assert cli("search", export, queries, "-k", 3, "--output", out, *extra) == 0
    return json.load(open(out))


@pytest.mark.parametrize("backend", ["faiss", "milvus"])
def test_build_add_remove_search_versions(exports, images, model, backend, tmp_path, capsys):
    base, ours, _ = exports
    export = tmp_path / "dnc"
    shutil.copytree(ours, export / "1")  # a private copy: index versions go beside it
    gallery = files(images["gallery"]) + files(images["extra"])
    assert cli("build", export, images["gallery"], "--backend", backend, "--max-k", 5) == 0
    assert cli("add", export, images["extra"]) == 0
    # The writers' lock file stays; no working copy (a Milvus Lite database) is left behind.
    assert sorted(os.listdir(export / "1.index")) == [".lock", "1", "2"]
    queries = files(images["queries"])
    records = search_records(tmp_path, export, images["queries"])
    sims = brute_force(model, queries, gallery)
    got = np.array([[gallery.index(r["path"]) for r in records if r["query"] == q] for q in queries])
    assert got.shape == (len(queries), 3)
    assert_top_k(got, sims)  # near-ties in either order (tests/rankings.py)
    np.testing.assert_allclose([r["similarity"] for r in records], np.take_along_axis(sims, got, 1).ravel(),
                               atol=1e-5)
    assert {r["label"] for r in records} <= {"horizontal", "vertical"}

    first = gallery[got[0, 0]]
    assert cli("remove", export, "--paths", first) == 0
    after = search_records(tmp_path, export, images["queries"])
    assert first not in {r["path"] for r in after}
    assert len(open_index(export / "1.index" / "1")) == 12  # old versions are never changed
    assert len(open_index(export)) == len(gallery) - 1
    assert cli("search", export, queries[0], "-k", 6) == 2
    assert "k=6 exceeds this index's max_k=5" in capsys.readouterr().err
    capsys.readouterr()
    assert cli("info", export) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["count"] == len(gallery) - 1 and info["backend"] == backend
    assert info["export"]["version"] == 1 and info["export"]["model"] == "dnc"


def test_remove_takes_the_relative_or_absolute_path_from_any_directory(exports, images, tmp_path, monkeypatch,
                                                                        capsys):
    _, ours, _ = exports
    export = tmp_path / "dnc"
    shutil.copytree(ours, export / "1")
    shutil.copytree(images["gallery"], tmp_path / "gallery")
    monkeypatch.chdir(tmp_path)
    assert cli("build", export, "gallery") == 0  # kept as gallery/horizontal/...
    indexed = sorted((tmp_path / "gallery").rglob("*.png"))
    first, second, third = (p.relative_to(tmp_path).as_posix() for p in indexed[:3])
    assert cli("remove", export, "--paths", tmp_path / first) == 0
    assert cli("remove", export, "--paths", f"./{second}") == 0
    monkeypatch.chdir(images["queries"])  # elsewhere: the absolute path still names it
    assert cli("remove", export, "--paths", tmp_path / third) == 0
    left = {r["path"] for r in search_records(tmp_path, export, images["queries"])}
    assert left and not left & {first, second, third}
    assert len(open_index(export)) == 12 - 3
    capsys.readouterr()
    assert cli("remove", export, "--paths", tmp_path / first) == 2  # gone already: named, nothing removed
    assert f"image {str(tmp_path / first)!r} is not in the index" in capsys.readouterr().err


def test_build_and_add_skip_and_name_the_files_they_cannot_read(exports, images, model, tmp_path, capsys):
    _, ours, _ = exports
    export = tmp_path / "dnc"
    shutil.copytree(ours, export / "1")
    gallery = tmp_path / "gallery"
    shutil.copytree(images["gallery"], gallery)
    (gallery / "horizontal" / "notes.png").write_text("not an image")
    (gallery / "vertical" / "cut.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    capsys.readouterr()
    assert cli("build", export, gallery, "--batch-size", 4) == 0
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith(f"tfdnc index build: skipped {gallery / 'horizontal' / 'notes.png'}: ")
    assert err[0].endswith("is not a JPEG/PNG/GIF/BMP/WebP image")
    assert err[1] == (f"tfdnc index build: skipped {gallery / 'vertical' / 'cut.png'}: "
                      "Invalid PNG. Failed to initialize decoder.")
    assert err[2] == "tfdnc index build: skipped 2 of 14 image files the model cannot read"
    # The rest is indexed with its own path and label: each query finds itself.
    good = files(images["gallery"])
    records = search_records(tmp_path, export, images["gallery"])  # the same images, elsewhere
    top = {r["query"]: (r["path"], r["label"]) for r in records if r["rank"] == 1}
    assert len(top) == 12
    assert all(path == str(gallery / os.path.relpath(query, images["gallery"])) for query, (path, _) in top.items())
    assert all(label == os.path.basename(os.path.dirname(path)) for path, label in top.values())
    assert len(open_index(export)) == len(good)

    extra = tmp_path / "extra"
    shutil.copytree(images["extra"], extra)
    (extra / "vertical" / "empty.png").write_bytes(b"")
    assert cli("add", export, extra) == 0
    assert f"tfdnc index add: skipped {extra / 'vertical' / 'empty.png'}: " in capsys.readouterr().err
    assert len(open_index(export)) == len(good) + 4


def test_calibrate_then_search_answers_no_match_below(exports, images, model, tmp_path, capsys):
    export = tmp_path / "dnc"
    shutil.copytree(exports[1], export / "1")
    gallery = files(images["gallery"])
    assert cli("build", export, images["gallery"]) == 0
    validation = images["queries"]
    capsys.readouterr()
    q = model.embed(files(validation))
    g = model.embed(gallery)
    sims = (q / np.linalg.norm(q, axis=1, keepdims=True)) @ (g / np.linalg.norm(g, axis=1, keepdims=True)).T
    best = sims.argmax(1)
    labels = [os.path.basename(os.path.dirname(p)) for p in files(validation)]
    correct = [os.path.basename(os.path.dirname(gallery[b])) == label for b, label in zip(best, labels)]
    try:
        expected = calibrate_threshold(sims.max(1), correct, 0.6)
    except ValueError:
        expected = None
    status = cli("calibrate", export, validation, "--precision", 0.6)
    if expected is None:
        assert status == 2 and "no threshold reaches precision 0.6" in capsys.readouterr().err
        return
    assert status == 0
    result = json.loads(capsys.readouterr().out)
    assert result["threshold"] == pytest.approx(expected["threshold"], abs=1e-5)
    assert open_index(export).threshold == pytest.approx(expected["threshold"], abs=1e-5)
    records = search_records(tmp_path, export, validation)
    for query, top in zip(files(validation), sims.max(1)):
        mine = [r for r in records if r["query"] == query]
        if top < expected["threshold"] - 1e-5:
            assert mine == [{"query": query, "rank": None, "id": None, "path": None, "label": None,
                             "similarity": None, "match": False}]
        else:
            assert all(r["match"] and r["similarity"] >= expected["threshold"] - 1e-5 for r in mine)


def test_csv_source_and_run_directory(exports, images, model, tmp_path, capsys):
    run_dir = tmp_path / "run"
    shutil.copytree(exports[1], run_dir / "export" / "dnc" / "1")
    gallery = files(images["gallery"])
    listing = tmp_path / "gallery.csv"
    listing.write_text("path,label\n" + "".join(
        f"{os.path.relpath(p, tmp_path)},{os.path.basename(os.path.dirname(p))}\n" for p in gallery))
    assert cli("build", run_dir, listing) == 0
    index = open_index(run_dir / "export" / "dnc" / "1.index")
    assert len(index) == len(gallery)
    assert index.id_map.paths([0]) == [os.path.join(str(tmp_path), os.path.relpath(gallery[0], tmp_path))]
    assert cli("evaluate", run_dir, images["gallery"], "--ks", 1, 2, "--exclude-self") == 0
    out = json.loads(capsys.readouterr().out.split("\n", 1)[1])
    assert out["index"] == out["exact"]  # an exact index loses nothing


def test_index_of_another_export_is_refused(exports, images, tmp_path, capsys):
    _, ours, other = exports
    export = tmp_path / "dnc"
    shutil.copytree(ours, export / "1")
    assert cli("build", export, images["gallery"]) == 0
    with pytest.raises(IndexMismatchError, match="was built from export .*the model fingerprints differ"):
        open_index(export / "1.index", export=other)
    capsys.readouterr()
    assert cli("search", other, files(images["queries"])[0], "--index", export / "1.index") == 2
    assert "model fingerprints differ" in capsys.readouterr().err


def test_serving_path_rest_and_grpc_match_in_process(exports, images, tmp_path):
    from serving_fakes import LocalModelServer  # tests/serving_fakes.py

    base, ours, _ = exports
    export = tmp_path / "dnc"
    shutil.copytree(ours, export / "1")
    assert cli("build", export, images["gallery"]) == 0
    queries = files(images["queries"])
    local = SearchService.open(str(export / "1.index")).search(queries, k=4)
    with LocalModelServer(base, "dnc") as server:
        rest = SearchService.open(str(export / "1.index"), rest=server.rest_url)
        assert rest.embedder.version == 1  # pinned to the export the index was built from
        grpc = SearchService.open(str(export / "1.index"), grpc=server.grpc_target)
        for service in (rest, grpc):
            hits = service.search(queries, k=4)
            np.testing.assert_array_equal(hits.ids, local.ids)
            np.testing.assert_allclose(hits.similarities, local.similarities, atol=1e-5)
        bad = tmp_path / "broken.png"
        bad.write_bytes(b"not an image")
        with pytest.raises(ValueError, match="broken.png"):
            rest.search([queries[0], str(bad)], k=2)


def test_help_imports_no_tensorflow():
    code = ("import sys\nfrom tfdnc.index.cli import run\n"
            "try:\n    run(['search', '--help'])\nexcept SystemExit:\n    pass\n"
            "heavy = [m for m in ('tensorflow', 'faiss', 'pymilvus') if m in sys.modules]\n"
            "assert not heavy, heavy\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert done.returncode == 0, done.stderr
    assert "--rest" in done.stdout


# A `tfdnc index` process that imports what its command needs, waits at a barrier (writes
# `ready`, waits for `go`) and then runs the command: the writers start together.
CLI_WRITER = """
import os, sys, time
from tfdnc.index.cli import run
if sys.argv[3] != "remove":
    import tensorflow  # noqa: F401
open(sys.argv[1], "w").close()
while not os.path.exists(sys.argv[2]):
    time.sleep(0.005)
sys.exit(run(sys.argv[3:]))
"""


def test_concurrent_index_writers_lose_nothing(exports, images, tmp_path):
    """`tfdnc index add` twice, `remove` and `calibrate`, all at once: the newest version has every change."""
    export = tmp_path / "dnc"
    shutil.copytree(exports[1], export / "1")
    assert cli("build", export, images["gallery"]) == 0
    gallery = files(images["gallery"])
    more = write_images(tmp_path / "more", 2, 3)
    # Validation images identical to gallery images (other paths): their nearest hit is right,
    # so a threshold always exists.
    validation = tmp_path / "validation"
    shutil.copytree(images["gallery"], validation)
    root = os.path.dirname(os.path.dirname(os.path.abspath(tfdnc.__file__)))  # the tfdnc under test
    env = {**os.environ, "PYTHONPATH": root}
    go = tmp_path / "go"
    commands = [["add", export, images["extra"]], ["add", export, more], ["remove", export, "--paths", gallery[0]],
                ["calibrate", export, validation, "--precision", 0.5]]
    procs = [subprocess.Popen([sys.executable, "-c", CLI_WRITER, tmp_path / f"ready{i}", go, *map(str, command)],
                              cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i, command in enumerate(commands)]
    while not all((tmp_path / f"ready{i}").exists() for i in range(len(procs))):
        assert all(p.poll() is None for p in procs), [p.communicate() for p in procs]
        time.sleep(0.01)
    go.touch()
    outcomes = [(p.wait(timeout=600), *p.communicate()) for p in procs]
    assert [rc for rc, _, _ in outcomes] == [0] * len(procs), outcomes
    newest = open_index(export)  # the version search opens
    assert newest.saved_path == str(export / "1.index" / "5")
    indexed = newest.id_map.paths(newest.id_map.ids)
    assert sorted(indexed) == sorted(gallery[1:] + files(images["extra"]) + files(more))
    assert newest.threshold is not None and newest.calibration["target_precision"] == 0.5
