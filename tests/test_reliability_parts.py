"""The parts behind "every kill resumes": backup generations, the run lock, atomic files, resume overrides.

The end-to-end kills are in test_reliability.py; these tests are fast and
each looks at one behaviour a user meets.
"""

import json
import os
import signal
import subprocess
import sys

import keras
import numpy as np
import pytest

from tfdnc.config import TrainConfig
from tfdnc.rundir import RunDir
from tfdnc.train import build_parser, config_from_args, main, nonfinite_advice, prepare_run_dir, record_resume, run
from tfdnc.training.backup import save_model_atomic
from tfdnc.training.callbacks import NonFiniteLossError, NonFiniteLossGuard
from tfdnc.training.generations import GenerationStore
from tfdnc.training.lock import RunLock, RunLockedError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _write(folder, text):
    with open(os.path.join(folder, "data.txt"), "w") as f:
        f.write(text)


# --- generations ---------------------------------------------------------------------------


def test_a_generation_is_seen_only_once_committed_and_the_previous_stays_until_then(tmp_path):
    store = GenerationStore(tmp_path / "backup")
    assert store.latest() is None
    store.commit(1, lambda d: _write(d, "one"))
    store.commit(2, lambda d: _write(d, "two"))

    def killed_while_writing(folder):
        _write(folder, "three, half")
        raise KeyboardInterrupt  # the writer dies before COMMIT

    with pytest.raises(KeyboardInterrupt):
        store.commit(3, killed_while_writing)
    assert store.latest().generation == 2
    assert open(os.path.join(store.latest().directory, "data.txt")).read() == "two"
    # A folder named like a generation but without a COMMIT, or with another's, is never read.
    os.makedirs(tmp_path / "backup" / "gen-00000009")
    os.makedirs(tmp_path / "backup" / "gen-00000008")
    (tmp_path / "backup" / "gen-00000008" / "COMMIT").write_text(json.dumps(
        {"format": "tfdnc-generation/1", "generation": 2, "epoch": 2}))
    assert [g.generation for g in store.committed()] == [2, 1]
    assert store.clean() and not any(n.startswith(".tmp") for n in os.listdir(tmp_path / "backup"))
    # Two generations are kept; committing the third removes the first.
    store.commit(3, lambda d: _write(d, "three"))
    assert [g.generation for g in store.committed()] == [3, 2]
    # Redoing an epoch after a resume replaces its generation.
    store.commit(3, lambda d: _write(d, "three again"))
    assert open(os.path.join(store.latest().directory, "data.txt")).read() == "three again"
    # One that does not load is set aside whole: no longer read, never deleted.
    kept = store.set_aside(store.latest())
    assert os.path.basename(kept) == "unloadable-gen-00000003"
    assert open(os.path.join(kept, "data.txt")).read() == "three again"
    assert [g.generation for g in store.committed()] == [2]
    assert RunDir(tmp_path).holds_run()


# --- the lock ------------------------------------------------------------------------------


def test_a_second_process_is_refused_naming_the_holder(tmp_path, capsys):
    run_dir = tmp_path / "run"
    with RunLock(run_dir):
        with pytest.raises(RunLockedError, match=f"in use by process {os.getpid()}"):
            RunLock(run_dir).acquire()
        assert main(["--run-dir", str(run_dir), "--dataset", "digits", "--epochs", "1"]) == 2
        assert f"process {os.getpid()}" in capsys.readouterr().err
    RunLock(run_dir).acquire().release()  # released: free again


def test_the_lock_of_a_killed_process_does_not_block(tmp_path):
    run_dir = tmp_path / "run"
    code = ("import os, signal, sys; from tfdnc.training.lock import RunLock; "
            f"RunLock({str(run_dir)!r}).acquire(); os.kill(os.getpid(), signal.SIGKILL)")
    died = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT})
    assert died.returncode == -signal.SIGKILL
    assert json.load(open(run_dir / ".lock"))["pid"] != os.getpid()  # the dead holder's pid is still written
    lock = RunLock(run_dir).acquire()
    assert json.load(open(run_dir / ".lock"))["pid"] == os.getpid()
    lock.release()


# --- atomic model files ----------------------------------------------------------------------


def test_a_model_file_is_replaced_whole_or_not_at_all(tmp_path):
    path = str(tmp_path / "model.keras")
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    save_model_atomic(model, path)
    before = open(path, "rb").read()

    class Dies(keras.Sequential):
        def save(self, filepath, **kwargs):
            with open(filepath, "wb") as f:
                f.write(b"PK half a zip")
            raise OSError("disk full")

    broken = Dies([keras.Input((3,)), keras.layers.Dense(2)])
    with pytest.raises(OSError, match="disk full"):
        save_model_atomic(broken, path)
    assert open(path, "rb").read() == before  # the old file, whole
    assert os.listdir(tmp_path) == ["model.keras"]  # no temporary left behind
    np.testing.assert_allclose(keras.saving.load_model(path).predict(np.ones((1, 3)), verbose=0),
                               model.predict(np.ones((1, 3)), verbose=0))


# --- non-finite settings and the way out of a non-finite loss ------------------------------------


@pytest.mark.parametrize("setting, value", [("learning_rate", float("nan")), ("mask_learning_rate", float("inf")),
                                            ("weight_decay", float("nan")), ("crop_ratio", (0.75, float("inf"))),
                                            ("batchnorm_momentum", float("nan"))])
def test_non_finite_settings_are_refused_by_name(setting, value):
    with pytest.raises(ValueError, match=f"--{setting.replace('_', '-')} must be a finite number"):
        TrainConfig(**{setting: value})


def test_resume_may_lower_the_learning_rate_and_it_is_recorded(tmp_path, capsys):
    run_dir = str(tmp_path / "run")
    prepare_run_dir(TrainConfig(run_dir=run_dir, learning_rate=1e-3), resume=False, chief=True)
    config = config_from_args(build_parser().parse_args(
        ["--resume", "--run-dir", run_dir, "--learning-rate", "1e-5", "--embedding-dim", "8"]))
    assert config.learning_rate == 1e-5 and config.embedding_dim == TrainConfig.embedding_dim
    assert "ignoring --embedding-dim" in capsys.readouterr().out
    prepare_run_dir(config, resume=True, chief=True)
    # Nothing is written until the resume's generation loaded (a refused resume changes nothing).
    assert TrainConfig.load(RunDir(run_dir).config).learning_rate == 1e-3 and RunDir(run_dir).resumes() == []
    record_resume(RunDir(run_dir), config, from_epoch=2)
    assert TrainConfig.load(RunDir(run_dir).config).learning_rate == 1e-5
    assert RunDir(run_dir).resumes()[-1]["changed"] == {"learning_rate": [1e-3, 1e-5]}
    assert RunDir(run_dir).resumes()[-1]["from_epoch"] == 2


def test_the_non_finite_loss_advice_names_only_what_exists(tmp_path):
    run_dir = RunDir(tmp_path / "run")
    advice = nonfinite_advice(run_dir, TrainConfig(run_dir=run_dir.path, learning_rate=1e-3))
    guard = NonFiniteLossGuard(checkpoint_hint=advice)
    with pytest.raises(NonFiniteLossError) as error:
        guard.on_train_batch_end(4, {"loss": float("nan")})
    assert "No epoch was completed" in str(error.value) and "--resume" not in str(error.value)
    GenerationStore(run_dir.backup).commit(2, lambda d: _write(d, "weights"))
    text = advice()
    assert "gen-00000002" in text and os.path.isdir(text.split("The last good backup is ")[1].split(" ")[0])
    assert f"--run-dir {run_dir.path} --resume --learning-rate 0.0001" in text


# --- every split checked before training -------------------------------------------------------


def test_bad_images_in_the_test_split_are_skipped_and_named_not_crashed(tmp_path):
    sys.path.insert(0, os.path.dirname(__file__))
    from badimages import write_folder_dataset

    bad = write_folder_dataset(tmp_path / "data")
    run_dir = tmp_path / "run"
    config = config_from_args(build_parser().parse_args([
        "--dataset", "folder", "--data-dir", str(tmp_path / "data"), "--image-size", "16", "--embedding-dim", "8",
        "--classes-per-batch", "2", "--images-per-class", "2", "--epochs", "1", "--k-final", "1",
        "--steps-per-epoch", "2", "--kmeans-iters", "5", "--run-dir", str(run_dir)]))
    metrics = run(config, export=False, verbose=0)
    assert "after" in metrics and metrics["after"]["results"]
    skipped = (run_dir / "skipped.txt").read_text()
    for path in bad["test"]:
        assert f"test: skipped {path}" in skipped
    assert os.path.isfile(RunDir(run_dir).image_check)  # the cache a resumed run reads


# --- random state ------------------------------------------------------------------------------


def test_the_random_state_of_a_backup_repeats_the_next_draws(tmp_path):
    import random

    from keras.src.backend.common import global_state

    from tfdnc.training.random_state import restore_random_state, save_random_state

    keras.utils.set_random_seed(1)
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dropout(0.5, name="a"),
                              keras.layers.Dropout(0.5, name="b")])
    x = np.ones((4, 6), np.float32)
    model(x, training=True)
    keras.random.uniform((2,))  # unseeded: Keras's global generator
    path = str(tmp_path / "random.npz")
    save_random_state(path, model)

    def draws():
        return (keras.ops.convert_to_numpy(model(x, training=True)),
                keras.ops.convert_to_numpy(keras.random.uniform((3,))), np.random.rand(3), random.random())

    expected = draws()
    # A new process: another seed, no global generator yet.
    keras.utils.set_random_seed(2)
    global_state.set_global_attribute("global_seed_generator", None)
    restore_random_state(path, model)
    for ours, theirs in zip(draws(), expected):
        np.testing.assert_array_equal(ours, theirs)


# --- TensorBoard -------------------------------------------------------------------------------


def _summary_tags(folder):
    import tensorflow as tf

    tags = set()
    for root, _, files in os.walk(folder):
        for name in files:
            if name.startswith("events.out"):
                for event in tf.compat.v1.train.summary_iterator(os.path.join(root, name)):
                    tags.update(value.tag for value in event.summary.value)
    return tags


@pytest.mark.parametrize("update_freq, batch_tags", [("epoch", False), ("batch", True)])
def test_tensorboard_has_each_epoch_on_disk_and_batch_summaries_only_when_asked(tmp_path, update_freq, batch_tags):
    from tfdnc.training.backup import FlushingTensorBoard

    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    x, y = np.random.default_rng(0).normal(size=(16, 3)), np.zeros((16, 1))
    seen = []

    class AfterEpoch(keras.callbacks.Callback):  # what a kill right after the epoch would leave
        def on_epoch_end(self, epoch, logs=None):
            seen.append(_summary_tags(tmp_path / "tb"))

    model.fit(x, y, batch_size=4, epochs=2, verbose=0,
              callbacks=[FlushingTensorBoard(str(tmp_path / "tb"), update_freq=update_freq), AfterEpoch()])
    assert "epoch_loss" in seen[0]
    assert any(tag.startswith("batch_") for tag in seen[-1]) == batch_tags
