"""The one `tfdnc` command: every subcommand's --help (fast, no TensorFlow), bad arguments, one real run each."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tfdnc import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SUBCOMMANDS = ("train", "export", "evaluate", "report", "pretrain", "embed", "search", "index")


def _python(code: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": ROOT, **(env or {})})


@pytest.mark.parametrize("command", ("", *SUBCOMMANDS))
def test_help_answers_without_importing_tensorflow(command):
    argv = [command, "--help"] if command else ["--help"]
    done = _python("import sys, time\n"
                   "from tfdnc.cli import main\n"
                   f"try:\n    main({argv!r})\nexcept SystemExit as e:\n    code = e.code\n"
                   "print('EXIT', code, 'TF', 'tensorflow' in sys.modules, 'KERAS', 'keras' in sys.modules)")
    assert "EXIT 0 TF False KERAS False" in done.stdout, done.stderr
    assert "usage: tfdnc" in done.stdout


def test_python_train_py_help_is_the_same_command_without_tensorflow():
    done = subprocess.run([sys.executable, "-X", "importtime", os.path.join(ROOT, "train.py"), "--help"],
                          capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": ROOT})
    assert done.returncode == 0 and "usage: train.py" in done.stdout and "--learning-rate" in done.stdout
    assert " tensorflow\n" not in done.stderr and "| keras\n" not in done.stderr  # -X importtime lists imports


@pytest.mark.parametrize("argv, named", [
    (["train", "--epochs", "x"], "--epochs"),
    (["train", "--k-final", "3"], "--k-final"),
    (["export", "run"], "--name"),
    (["evaluate", "run", "--batch-size", "0"], "--batch-size"),
    (["report", "run", "--projection", "umap"], "--projection"),
    (["pretrain", "--grid", "x"], "--grid"),
    (["embed", "exports/dnc", "a.png", "--batch-size", "0"], "--batch-size"),
    (["search", "exports/dnc", "a.png", "-k", "0"], "-k"),
    (["index", "build", "exports/dnc", "g/", "--backend", "annoy"], "--backend"),
    (["nonsense"], "COMMAND"),
])
def test_a_bad_argument_exits_2_with_one_line_naming_it(argv, named):
    done = subprocess.run([sys.executable, "-m", "tfdnc.cli", *argv], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "PYTHONPATH": ROOT})
    assert done.returncode == 2
    # One line: the error naming the argument (a setting checked against the library's own lists,
    # as --k-final, is checked after TensorFlow started, whose start-up lines may come before it).
    errors = [line for line in done.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and named in errors[0] and done.stderr.rstrip().endswith(errors[0]), done.stderr
    assert "usage:" not in done.stderr


def test_import_tfdnc_sets_only_the_keras_backend_and_refuses_another():
    done = _python("import os, sys\nbefore = dict(os.environ)\nimport tfdnc\n"
                   "changed = sorted(k for k in set(before) | set(os.environ) if before.get(k) != os.environ.get(k))\n"
                   "print(changed, 'tensorflow' in sys.modules)",
                   env={"KERAS_BACKEND": "", "TF_CPP_MIN_LOG_LEVEL": ""})
    # An empty KERAS_BACKEND reads as unset to Keras; tfdnc treats it the same.
    assert done.stdout.strip() in ("['KERAS_BACKEND'] False", "[] False"), done.stderr
    refused = _python("import tfdnc", env={"KERAS_BACKEND": "jax"})
    assert refused.returncode != 0 and "KERAS_BACKEND='jax'" in refused.stderr


# --- one real run of each subcommand, on a tiny run --------------------------------


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    from PIL import Image

    root = tmp_path_factory.mktemp("command")
    images = root / "images"
    rng = np.random.default_rng(0)
    for c in range(3):
        os.makedirs(images / f"c{c}")
        for i in range(2):
            Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(images / f"c{c}" / f"{i}.png")
    return root


def _tfdnc(*argv) -> int:
    return cli.main([str(a) for a in argv])


def test_every_subcommand_runs_once(workspace, capsys):
    run_dir, exports = workspace / "run", workspace / "exports"
    assert _tfdnc("train", "--dataset", "digits", "--image-size", "16", "--embedding-dim", "8", "--k-final", "2",
                  "--classes-per-batch", "4", "--images-per-class", "2", "--epochs", "2", "--steps-per-epoch", "3",
                  "--recluster-every", "1", "--kmeans-iters", "5", "--eval-every", "100", "--verbose", "0",
                  "--learning-rate", "1e-3", "--run-dir", run_dir) == 0
    metrics = json.load(open(run_dir / "metrics.json"))
    assert metrics["K"] == 2 and os.path.isdir(metrics["export"])
    assert os.path.basename(os.path.dirname(metrics["export"])) == "dnc"  # the name export/models.config serves
    assert _tfdnc("export", run_dir, "--base", exports, "--name", "dnc", "--gallery", workspace / "images",
                  "--no-warmup") == 0
    assert os.path.isfile(exports / "dnc" / "1" / "saved_model.pb")
    assert _tfdnc("evaluate", run_dir, "--no-progress", "--output", workspace / "eval.json") == 0
    assert "recall@1" in json.load(open(workspace / "eval.json"))["results"]["test"]
    assert _tfdnc("report", run_dir, "--no-progress", "--max-points", "60", "--projection", "pca") == 0
    assert os.path.isfile(run_dir / "report" / "index.html")
    assert _tfdnc("embed", exports / "dnc", workspace / "images", "--output", workspace / "e.npy") == 0
    assert np.load(workspace / "e.npy").shape == (6, 8)
    assert _tfdnc("search", exports / "dnc", workspace / "images" / "c0" / "0.png", "-k", "2",
                  "--output", workspace / "hits.json") == 0
    hits = json.load(open(workspace / "hits.json"))
    assert hits[0]["id"].replace(os.sep, "/") == "c0/0.png" and len(hits) == 2
    assert _tfdnc("index", "build", exports / "dnc", workspace / "images") == 0
    capsys.readouterr()
    assert _tfdnc("index", "info", exports / "dnc") == 0
    assert "6" in capsys.readouterr().out
    out = workspace / "pre.weights.h5"
    assert _tfdnc("pretrain", "--dataset", "digits", "--image-size", "24", "--grid", "2", "--num-permutations", "4",
                  "--heldout", "8", "--width", "4", "--batch-size", "8", "--epochs", "1", "--steps-per-epoch", "2",
                  "--sampling", "uniform", "--item-units", "8", "--hidden-units", "8", "--max-images", "64",
                  "--out", out, "--verbose", "0") == 0
    assert os.path.isfile(out)


def test_the_kit_serves_the_name_a_run_exports_under():
    import re

    from tfdnc import rundir

    with open(os.path.join(ROOT, "export", "models.config")) as f:
        names = re.findall(r'name:\s*"([^"]+)"', f.read())
    assert names == [rundir.EXPORT_NAME]
