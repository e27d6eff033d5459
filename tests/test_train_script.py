"""train.py as users run it: flags, config files, a killed run resumed, bad input."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from tfdnc.config import TrainConfig
from tfdnc.train import build_parser, config_from_args, run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--dataset", "digits", "--image-size", "16", "--embedding-dim", "16", "--classes-per-batch", "4",
        "--images-per-class", "4", "--kmeans-iters", "10", "--eval-every", "100", "--verbose", "2"]


def _config(argv):
    return config_from_args(build_parser().parse_args(argv))


def test_flags_config_file_and_preset_layering(tmp_path):
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps({"embedding_dim": 32, "k_final": 4, "loss": "triplet"}))
    config = _config(["--config", str(path), "--k-final", "2", "--crop-scale", "0.3", "0.9", "--no-flip"])
    assert (config.embedding_dim, config.k_final, config.loss) == (32, 2, "triplet")
    assert config.crop_scale == (0.3, 0.9) and config.flip is False
    preset = _config(["--preset", "tpami-cub", "--epochs", "3"])
    assert preset.embedding_dim == 512 and preset.epochs == 3 and preset.preset == "tpami-cub"
    assert _config(["--full-embedding-epoch", "none"]).full_embedding_epoch is None


@pytest.mark.parametrize("argv, message", [
    (["--mask-mode", "fixed", "--embedding-dim", "30", "--k-final", "4"], "--embedding-dim"),
    (["--k-final", "3"], "--k-final"),
    (["--loss", "hinge"], "--loss"),
    (["--images-per-class", "1"], "--images-per-class"),
    (["--batchnorm-momentum", "1.5"], "--batchnorm-momentum"),
    (["--weight-decay-mode", "l2"], "--weight-decay-mode"),
    (["--learning-rate", "nan"], "--learning-rate"),
])
def test_bad_settings_name_the_flag(argv, message, capsys):
    from tfdnc import cli

    assert cli.main(["train", *argv]) == 2
    assert message in capsys.readouterr().err


def test_config_file_with_unknown_key_is_refused(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"embeding_dim": 32}))
    with pytest.raises(ValueError, match="unknown setting"):
        _config(["--config", str(path)])


def test_k_final_beyond_the_classes_fails_before_training(tmp_path):
    config = _config(TINY + ["--k-final", "4", "--run-dir", str(tmp_path / "run")])
    with pytest.raises(ValueError, match="--k-final 4 is larger than the classes allow"):
        run(config, export=False, verbose=0)
    assert not os.path.exists(tmp_path / "run" / "metrics.json")


def _write_csv_dataset(root, corrupt: bool, lone: bool):
    rng = np.random.default_rng(0)
    rows = []
    for label in range(6):
        for i in range(6):
            path = root / f"c{label}_{i}.png"
            base = np.full((12, 12, 3), 40 * label, np.uint8)
            Image.fromarray(np.clip(base + rng.integers(0, 30, base.shape), 0, 255).astype(np.uint8)).save(path)
            rows.append(f"{path},{label},{'train' if label < 4 else 'test'}")
    if corrupt:
        bad = root / "broken.png"
        bad.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
        rows.append(f"{bad},0,train")
    if lone:
        path = root / "lone.png"
        Image.fromarray(np.zeros((12, 12, 3), np.uint8)).save(path)
        rows.append(f"{path},9,train")
    csv = root / "data.csv"
    csv.write_text("path,label,split\n" + "\n".join(rows) + "\n")
    return csv


def test_corrupt_image_and_single_image_class_are_skipped_and_reported(tmp_path):
    csv = _write_csv_dataset(tmp_path, corrupt=True, lone=True)
    run_dir = tmp_path / "run"
    config = _config(["--dataset", "csv", "--data-dir", str(csv), "--image-size", "12", "--embedding-dim", "8",
                      "--classes-per-batch", "2", "--images-per-class", "2", "--epochs", "1", "--k-final", "1",
                      "--steps-per-epoch", "2", "--kmeans-iters", "5", "--run-dir", str(run_dir)])
    metrics = run(config, export=False, verbose=0)
    report = (run_dir / "skipped.txt").read_text()
    assert "broken.png" in report and "class 9 has fewer than 2 images" in report
    assert "after" in metrics


def test_strict_images_names_the_corrupt_file(tmp_path):
    from tfdnc.data.validation import InvalidImageError

    csv = _write_csv_dataset(tmp_path, corrupt=True, lone=False)
    config = _config(["--dataset", "csv", "--data-dir", str(csv), "--image-size", "12", "--k-final", "1",
                      "--run-dir", str(tmp_path / "run")])
    with pytest.raises(InvalidImageError, match="broken.png"):
        run(config, export=False, strict_images=True, verbose=0)


def _metadata_epoch(run_dir):
    from tfdnc.training.generations import GenerationStore

    latest = GenerationStore(os.path.join(run_dir, "backup")).latest()
    return -1 if latest is None else latest.epoch


def test_sigkill_mid_run_then_resume_continues_with_clusters_and_masks(tmp_path):
    run_dir = str(tmp_path / "run")
    argv = [sys.executable, os.path.join(ROOT, "train.py"), *TINY, "--epochs", "6", "--steps-per-epoch", "25",
            "--k-final", "2", "--recluster-every", "2", "--no-export", "--run-dir", run_dir]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
    first = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 600
    while _metadata_epoch(run_dir) < 3 and first.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert first.poll() is None, "the run ended before it could be killed:\n" + first.stdout.read().decode()
    first.send_signal(signal.SIGKILL)
    first.wait()
    killed_at = _metadata_epoch(run_dir)
    assert 3 <= killed_at < 6
    assert int(np.load(os.path.join(run_dir, "clusters.npz"))["k"]) == 2

    resumed = subprocess.run(argv + ["--resume"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    epochs_run = [line for line in resumed.stdout.splitlines() if line.startswith("Epoch ")]
    assert epochs_run[0] == f"Epoch {killed_at + 1}/6"
    history = json.load(open(os.path.join(run_dir, "history.json")))
    assert [h["epoch"] for h in history] == list(range(6))
    assert [h["K"] for h in history] == [1, 1, 2, 2, 2, 2]
    metrics = json.load(open(os.path.join(run_dir, "metrics.json")))
    assert metrics["K"] == 2 and "before" in metrics and "after" in metrics


def test_a_second_run_into_the_same_dir_is_refused_without_resume(tmp_path):
    run_dir = tmp_path / "run"
    (run_dir / "backup" / "gen-00000001").mkdir(parents=True)
    (run_dir / "backup" / "gen-00000001" / "COMMIT").write_text("{}")  # one complete generation
    config = TrainConfig(run_dir=str(run_dir))
    with pytest.raises(FileExistsError, match="--resume"):
        run(config, export=False, verbose=0)
