"""Learning-rate schedules (--lr-schedule, --warmup-epochs), --mask-lr-mult and --ema, as a user meets them."""

import json
import os
import signal
import subprocess
import sys

import pytest

from tfdnc.config import TrainConfig, build_parser
from tfdnc.training.faults import ENV
from tfdnc.training.lr import WarmupDecay

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 4
TINY = ["--dataset", "digits", "--image-size", "16", "--embedding-dim", "16", "--classes-per-batch", "4",
        "--images-per-class", "4", "--kmeans-iters", "5", "--eval-every", "100", "--verbose", "2",
        "--epochs", "4", "--recluster-every", "1", "--steps-per-epoch", str(STEPS), "--k-final", "2",
        "--no-symmetrical", "--no-export"]


def test_warmup_then_cosine_reaches_zero_and_step_drops_at_its_milestones():
    cosine = WarmupDecay(1e-3, total_steps=100, warmup_steps=10, decay="cosine")
    rates = [float(cosine(n)) for n in range(101)]
    assert rates[0] == pytest.approx(1e-4, rel=1e-5)  # 1/10 of the peak on the first step
    assert rates[9] == pytest.approx(1e-3, rel=1e-5)  # the peak at the end of the warm-up
    assert all(a <= b + 1e-12 for a, b in zip(rates[:10], rates[1:10]))  # rising
    assert all(a >= b - 1e-12 for a, b in zip(rates[10:], rates[11:]))  # then falling
    assert rates[55] == pytest.approx(0.5e-3, rel=1e-4)  # half way through the decay
    assert rates[100] == pytest.approx(0.0, abs=1e-9)
    step = WarmupDecay(1.0, total_steps=100, decay="step", milestones=(0.5, 0.75), gamma=0.1)
    assert [float(step(n)) for n in (0, 49, 50, 74, 75, 99)] == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])
    assert WarmupDecay.from_config(step.get_config()).get_config() == step.get_config()


@pytest.mark.parametrize("argv, message", [
    (["--lr-schedule", "linear"], "--lr-schedule must be one of"),
    (["--warmup-epochs", "20", "--epochs", "10"], "--warmup-epochs must be in [0, --epochs (10)]"),
    (["--lr-milestones", "0.5", "1.5"], "--lr-milestones must be fractions"),
    (["--mask-lr-mult", "0"], "--mask-lr-mult must be a finite number > 0"),
    (["--ema-momentum", "1"], "--ema-momentum must be in (0, 1)"),
])
def test_bad_schedule_settings_name_the_flag(argv, message, capsys):
    from tfdnc.cli import main

    assert main(["train", *argv]) == 2  # one line, exit status 2 (tfdnc.utils.errors.run_reporting_errors)
    assert message in capsys.readouterr().err


def test_mask_lr_mult_is_relative_to_the_learning_rate_and_the_absolute_rate_still_works():
    parse = build_parser().parse_args
    relative = TrainConfig(learning_rate=1e-5, mask_lr_mult=100.0, mask_learning_rate=0.5)
    assert relative.mask_rate == pytest.approx(1e-3)
    assert TrainConfig(learning_rate=1e-5, mask_learning_rate=0.5).mask_rate == 0.5
    assert parse(["--mask-lr-mult", "100"]).mask_lr_mult == 100.0


def _train(run_dir, *extra, kill_at=None):
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": ROOT}
    env.pop(ENV, None)
    if kill_at:
        env[ENV] = kill_at
    argv = [sys.executable, os.path.join(ROOT, "train.py"), *TINY, "--run-dir", str(run_dir), *extra]
    return subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def test_learning_rates_follow_the_schedule_across_a_kill_and_resume(tmp_path):
    """Killed in epoch 3 and resumed, the run's rates at each epoch's end are the schedule's at that step.

    Network and masks (100x) follow one curve, read from the network
    optimizer's step count that the backup restores; K grows after epoch 1,
    which restarts the mask optimizer's own step count but not the curve.
    With --ema the resumed run also scores what the uninterrupted one scores
    (the backup holds the trained weights and their average).
    """
    run_dir = tmp_path / "run"
    flags = ["--lr-schedule", "step", "--lr-milestones", "0.4", "0.9", "--lr-gamma", "0.5", "--warmup-epochs", "1",
             "--learning-rate", "1e-4", "--mask-lr-mult", "100", "--ema", "--ema-momentum", "0.8",
             "--eval-every", "1"]
    reference = _train(tmp_path / "reference", *flags)
    assert reference.returncode == 0, reference.stdout[-2000:] + reference.stderr[-2000:]
    killed = _train(run_dir, *flags, kill_at="mid_epoch@3")
    assert killed.returncode == -signal.SIGKILL, killed.stdout[-2000:] + killed.stderr[-2000:]
    resumed = _train(run_dir, *flags, "--resume")
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
    assert "Epoch 3/4" in resumed.stdout and "Epoch 2/4" not in resumed.stdout
    history = json.load(open(run_dir / "history.json"))
    assert [h["epoch"] for h in history] == [0, 1, 2, 3]
    schedule = WarmupDecay(1e-4, total_steps=4 * STEPS, warmup_steps=STEPS, decay="step", milestones=(0.4, 0.9),
                           gamma=0.5)
    expected = [float(schedule((epoch + 1) * STEPS)) for epoch in range(4)]
    assert expected[0] > expected[2] > expected[3]  # the schedule decays within this run
    assert [h["learning_rate"] for h in history] == pytest.approx(expected, rel=1e-5)
    assert [h["mask_learning_rate"] for h in history] == pytest.approx([100 * r for r in expected], rel=1e-5)
    uninterrupted = json.load(open(tmp_path / "reference" / "history.json"))
    assert [h["val_map@r"] for h in history] == pytest.approx([h["val_map@r"] for h in uninterrupted], abs=1e-6)


def test_ema_run_saves_the_weights_its_last_evaluation_scored(tmp_path):
    """With --ema, model.keras scores what the last epoch's evaluation reported (the average, both times).

    Evaluating the raw weights but saving the average, or the reverse, breaks the equality.
    """
    from tfdnc.datasets import load_dataset
    from tfdnc.evaluation.protocols import run_protocol
    from tfdnc.model import load_model
    from tfdnc.train import embed_function

    run_dir = tmp_path / "ema"
    result = _train(run_dir, "--ema", "--ema-momentum", "0.8", "--eval-every", "1", "--epochs", "2")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    history = json.load(open(run_dir / "history.json"))
    config = TrainConfig.load(str(run_dir / "config.json"))
    model = load_model(str(run_dir / "model.keras"))
    scores = run_protocol(load_dataset("digits"), embed_function(model, config), progress=False).to_dict()
    assert scores["results"]["test"]["map@r"] == pytest.approx(history[-1]["val_map@r"], abs=1e-4)
    assert scores["results"]["test"]["recall@1"] == pytest.approx(history[-1]["val_recall@1"], abs=1e-4)
