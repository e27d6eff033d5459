"""Bad settings, paths and data as a user hands them over: one line naming the culprit, exit status 2.

Each case runs the command (`tfdnc.cli.main`, or `python train.py` in a
subprocess) and checks the exit status, that stderr holds one line naming
the flag, file or value and no traceback, and that nothing was written: no
run directory for what is refused before the data is read, no run (model,
metrics, backup, export) for what the data itself refuses. The settings are
tiny, so that code which lets a case through trains for a step and fails
the test instead of hanging it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from tfdnc import cli
from tfdnc.rundir import RunDir
from tfdnc.utils.errors import UserInputError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# One step of one epoch at 12 px: what a case that is wrongly accepted costs.
# A case's own flags come after these and win.
QUICK = ["--image-size", "12", "--k-final", "2", "--epochs", "1", "--steps-per-epoch", "1", "--kmeans-iters", "5",
         "--eval-every", "100", "--verbose", "0", "--no-export"]


def _folder(root, classes: int, per_class: int = 3, broken: bool = False):
    rng = np.random.default_rng(0)
    for c in range(classes):
        os.makedirs(root / f"class{c}")
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)).save(root / f"class{c}" / f"{i}.png")
    if broken:
        (root / "class0" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    return root


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    return {
        # 8 classes -> 4 train classes (the other 4 test): K <= 2.
        "eight": _folder(root / "eight", 8),
        "one": _folder(root / "one", 1),
        "two": _folder(root / "two", 2),  # one train class, one test class
        "broken": _folder(root / "broken", 4, broken=True),
    }


def _one_error_line(err: str, prog: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err, err
    assert len(lines) == 1 and lines[0].startswith(f"{prog}: error: "), err
    return lines[0]


def _config_file(tmp_path, values: dict) -> str:
    path = tmp_path / "settings.json"
    path.write_text(json.dumps(values))
    return str(path)


# Refused before any data is read: no run directory is made.
BEFORE_DATA = {
    "one class per batch": (lambda tmp, data: ["--dataset", "digits", "--classes-per-batch", "1"],
                            ["--classes-per-batch 1", "--loss multi_similarity", "negatives"]),
    "one image per class": (lambda tmp, data: ["--dataset", "digits", "--loss", "triplet", "--images-per-class", "1"],
                            ["--images-per-class"]),
    "unknown loss option": (lambda tmp, data: ["--dataset", "digits", "--loss-options", '{"bogus": 1}'],
                            ["--loss-options", "'bogus'"]),
    "loss option of a wrong type": (lambda tmp, data: ["--dataset", "digits", "--loss-options", '{"alpha": "x"}'],
                                    ["--loss-options", "'alpha'", "must be a number"]),
    "crop_scale 5 in a config file": (lambda tmp, data: ["--dataset", "digits",
                                                         "--config", _config_file(tmp, {"crop_scale": 5})],
                                      ["settings.json", "'crop_scale'", "got 5"]),
    "embedding_dim '64' in a config file": (lambda tmp, data: ["--dataset", "digits", "--config",
                                                               _config_file(tmp, {"embedding_dim": "64"})],
                                            ["settings.json", "'embedding_dim'", '"64"']),
    "crop_scale out of range in a config file": (lambda tmp, data: ["--dataset", "digits", "--config",
                                                                    _config_file(tmp, {"crop_scale": [0.5, 5]})],
                                                 ["settings.json", "'crop_scale'", "0 < min <= max <= 1"]),
    "a config file that is not an object": (lambda tmp, data: ["--dataset", "digits",
                                                               "--config", _config_file(tmp, [1, 2])],
                                            ["--config", "settings.json"]),
    "unknown data set": (lambda tmp, data: ["--dataset", "nosuch"], ["--dataset", "'nosuch'"]),
    "nothing to resume": (lambda tmp, data: ["--dataset", "digits", "--resume"], ["--resume", "nothing to resume"]),
    "missing data directory": (lambda tmp, data: ["--data-dir", str(tmp / "nonexistent")],
                               ["--data-dir", "nonexistent", "does not exist"]),
}

# Refused by the data itself (after it is listed or decoded, before the model is built): no run.
FROM_DATA = {
    "unreadable image with --strict-images": (
        lambda tmp, data: ["--data-dir", str(data["broken"]), "--strict-images", "--k-final", "1"], ["broken.png"]),
    "a folder with one class": (lambda tmp, data: ["--dataset", "folder", "--data-dir", str(data["one"])],
                                [f"{os.sep}one: ", "1 class"]),
    "a folder with one training class": (lambda tmp, data: ["--data-dir", str(data["two"]), "--k-final", "1"],
                                         ["--data-dir", f"{os.sep}two", "1 class(es)"]),
    "--k-final beyond what the classes allow": (lambda tmp, data: ["--data-dir", str(data["eight"]), "--k-final", "4"],
                                                ["--k-final 4", "K <= 2"]),
}


@pytest.mark.parametrize("case", sorted(BEFORE_DATA))
def test_train_refuses_before_reading_data(case, data, tmp_path, capsys):
    argv, named = BEFORE_DATA[case]
    run_dir = tmp_path / "run"
    assert cli.main(["train", *QUICK, *argv(tmp_path, data), "--run-dir", str(run_dir)]) == 2
    line = _one_error_line(capsys.readouterr().err, "tfdnc train")
    for part in named:
        assert part in line, line
    assert not run_dir.exists()


@pytest.mark.parametrize("case", sorted(FROM_DATA))
def test_train_refuses_data_that_cannot_train(case, data, tmp_path, capsys):
    argv, named = FROM_DATA[case]
    run_dir = tmp_path / "run"
    assert cli.main(["train", *QUICK, *argv(tmp_path, data), "--run-dir", str(run_dir)]) == 2
    line = _one_error_line(capsys.readouterr().err, "tfdnc train")
    for part in named:
        assert part in line, line
    # The directory may hold the settings and the image-check cache; no run, so the next start needs no --resume.
    run = RunDir(run_dir)
    assert not run.holds_run() and not run.has_model()
    assert not os.path.exists(run.metrics_file) and not os.path.exists(run.export_base)


def test_a_settings_file_named_by_python_train_py_in_one_line(tmp_path):
    """As a user runs it: the script, a config file with a string for a number; no traceback."""
    config = _config_file(tmp_path, {"embedding_dim": "64"})
    done = subprocess.run([sys.executable, os.path.join(ROOT, "train.py"), "--config", config,
                           "--run-dir", str(tmp_path / "run")], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": ROOT, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    # TensorFlow's start-up lines may come first; the error is one line, the last.
    errors = [line for line in done.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and done.stderr.rstrip().endswith(errors[0]), done.stderr
    assert errors[0].startswith("train.py: error: ") and "settings.json" in errors[0] and "'embedding_dim'" in errors[0]
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("argv, named", [
    (lambda tmp: [str(tmp)], lambda tmp: [str(tmp), "is neither a run directory"]),  # a folder that is neither
    (lambda tmp: [str(tmp / "missing")], lambda tmp: [str(tmp / "missing"), "does not exist"]),
    (lambda tmp: [str(tmp), "--dataset", "nosuch"], lambda tmp: ["--dataset", "'nosuch'"]),
    (lambda tmp: [str(tmp), "--data-dir", str(tmp / "missing")], lambda tmp: ["--data-dir", str(tmp / "missing")]),
])
def test_evaluate_refuses_what_is_not_a_model_or_data_set(argv, named, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.txt").write_text("not a model")
    before = sorted(os.listdir(tmp_path))
    assert cli.main(["evaluate", *argv(tmp_path)]) == 2
    line = _one_error_line(capsys.readouterr().err, "tfdnc evaluate")
    for part in named(tmp_path):
        assert part in line, line
    assert sorted(os.listdir(tmp_path)) == before  # no evaluation_*.json


def test_debug_shows_the_traceback_of_a_user_error(tmp_path):
    with pytest.raises(UserInputError, match="--classes-per-batch"):
        cli.main(["train", "--classes-per-batch", "1", "--debug", "--run-dir", str(tmp_path / "run")])
    with pytest.raises(UserInputError, match="does not exist"):
        cli.main(["evaluate", str(tmp_path / "missing"), "--debug"])


def test_a_bug_keeps_its_traceback(tmp_path, monkeypatch):
    import tfdnc.train

    def broken(config):
        raise KeyError("a bug, not the user's input")

    monkeypatch.setattr(tfdnc.train, "check_data_location", broken)
    with pytest.raises(KeyError, match="a bug"):
        cli.main(["train", "--dataset", "digits", "--run-dir", str(tmp_path / "run")])


# --- what each loss needs from a batch ----------------------------------------------------


def test_a_loss_that_needs_no_positives_or_negatives_may_train_on_such_batches():
    from tfdnc.config import TrainConfig

    config = TrainConfig(loss="proxy_anchor", symmetrical=False, classes_per_batch=1)
    assert config.classes_per_batch == 1
    with pytest.raises(ValueError, match="--classes-per-batch 1 cannot train --loss margin"):
        TrainConfig(loss="margin", classes_per_batch=1)


@pytest.mark.parametrize("name", ["margin", "triplet", "multi_similarity", "lifted", "proxy_anchor"])
def test_the_declared_needs_match_what_a_one_class_batch_teaches(name):
    """A one-class batch gives pair losses nothing to learn (the zero loss the issue saw); proxies still teach."""
    import tensorflow as tf

    from tfdnc.losses import LOSSES, get_loss

    options = {"num_classes": 4, "embedding_dim": 8, "num_learners": 1} if name == "proxy_anchor" else {}
    loss = get_loss(name, **options)
    rng = np.random.default_rng(0)
    x = tf.Variable(tf.math.l2_normalize(rng.normal(size=(8, 8)).astype(np.float32), axis=1))
    for labels in (np.zeros(8, np.int32), np.repeat(np.arange(4), 2).astype(np.int32)):
        with tf.GradientTape() as tape:
            value = loss(labels, x)
        gradient = float(tf.norm(tape.gradient(value, x)))
        teaches = gradient > 1e-6
        one_class = len(np.unique(labels)) == 1
        assert teaches == (not one_class or not LOSSES[name].NEEDS.negatives), (name, labels, gradient)


# --- --data-dir alone: your images, not the generated set (issue 21) -------------------------


def _parsed(argv):
    from tfdnc.train import build_parser, config_from_args

    return config_from_args(build_parser().parse_args(argv))


def test_data_dir_alone_implies_the_folder_data_set(data, tmp_path, capsys):
    assert _parsed(["--data-dir", str(data["eight"])]).dataset == "folder"
    assert "--dataset folder" in capsys.readouterr().out  # said, not silent
    listing = tmp_path / "list.csv"
    listing.write_text("path,label,split\n")
    assert _parsed(["--data-dir", str(listing)]).dataset == "csv"
    assert _parsed([]).dataset == "shapes"
    assert _parsed(["--dataset", "cub", "--data-dir", str(data["eight"])]).dataset == "cub"
    from_file = _config_file(tmp_path, {"data_dir": str(data["eight"])})
    assert _parsed(["--config", from_file]).dataset == "folder"
    named = _config_file(tmp_path, {"dataset": "mnist"})
    assert _parsed(["--config", named, "--data-dir", str(data["eight"])]).dataset == "mnist"


# --- settings checked by their type hints, new ones included ---------------------------------


def test_a_new_setting_is_type_checked_without_an_edit_of_the_checks(tmp_path):
    """The checks read the fields' hints: a setting added to TrainConfig is covered by them as it is."""
    import dataclasses

    from tfdnc.config import TrainConfig

    @dataclasses.dataclass
    class WithNewSettings(TrainConfig):
        extra_epochs: int = 0
        extra_milestones: tuple[int, ...] = ()

    assert WithNewSettings(extra_epochs=2, extra_milestones=[4, 8]).extra_epochs == 2
    with pytest.raises(UserInputError, match=r"--extra-epochs must be an integer, got 1.5"):
        WithNewSettings(extra_epochs=1.5)
    with pytest.raises(UserInputError, match=r"cfg.json: setting 'extra_milestones' must be a list of integers"):
        WithNewSettings.from_dict({"extra_milestones": "4,8"}, source="cfg.json")
    with pytest.raises(UserInputError, match=r"setting 'flip' must be true or false, got \"yes\""):
        TrainConfig.from_dict({"flip": "yes"}, source="cfg.json")


def test_a_setting_out_of_range_is_named_where_it_came_from(tmp_path):
    from tfdnc.config import SettingError

    from_file = _config_file(tmp_path, {"k_final": 3})
    with pytest.raises(SettingError, match=r"^.*settings.json: setting 'k_final' must be a power of two"):
        _parsed(["--config", from_file])
    flag_wins = _config_file(tmp_path, {"k_final": 4})
    with pytest.raises(SettingError, match=r"^TrainConfig: --k-final must be a power of two"):
        _parsed(["--config", flag_wins, "--k-final", "3"])
