"""bench/suite.py: resumable runs keyed by their settings, last-3-epoch summaries, the table."""

from __future__ import annotations

import json
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench"))
import bench_peer  # noqa: E402
import suite  # noqa: E402


def _fake_result(job):
    """What a worker returns, with metrics that depend on the seed (the training itself is not under test)."""
    seed = job["settings"]["seed"]
    epochs = [{"epoch": e, "recall@1": 0.5 + 0.01 * e, "map@r": 0.2 + 0.01 * e + 0.001 * seed} for e in range(1, 5)]
    return {"after": {"results": {"test": {"recall@1": 0.54, "map@r": epochs[-1]["map@r"]}}},
            "epoch_results": epochs, "epoch_loop_seconds": [2.0] * 4, "epoch_steps": [10] * 4, "steps": 40}


def test_rerun_skips_done_runs_and_new_settings_run(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(bench_peer, "run_job", lambda job, log_dir: calls.append(job["key"]) or _fake_result(job))
    results = str(tmp_path / "r.jsonl")
    argv = ["run", "--datasets", "shapes", "--settings", "k1", "dnc-learnable", "--seeds", "0", "1",
            "--results", results, "--run-root", str(tmp_path), "--threads", "1"]
    assert suite.main(argv) == 0
    assert len(calls) == 4 and len(suite.read_results(results)) == 4
    assert suite.main(argv) == 0  # the same command again: nothing left to do
    assert len(calls) == 4
    assert suite.main(argv + ["--set", "weight_decay=0"]) == 0  # other settings: runs of their own
    assert len(calls) == 8
    with open(results, "a") as f:
        f.write('{"torn": ')  # a writer killed mid-line loses only that line
    assert len(suite.read_results(results)) == 8


def test_runs_another_process_finished_meanwhile_are_skipped(tmp_path, monkeypatch):
    results = str(tmp_path / "r.jsonl")
    argv = ["run", "--datasets", "shapes", "--settings", "k1", "--seeds", "0", "1", "--results", results,
            "--run-root", str(tmp_path), "--threads", "1"]
    calls = []

    def run_job(job, log_dir):
        calls.append(job["key"])
        if len(calls) == 1:  # while the first run trains, another process records the second one
            other = suite.plan(suite.build_parser().parse_args(argv), {})[1]
            with open(results, "a") as f:
                f.write(json.dumps({**suite.record_of(other, {"summary": {}}), "id": other["id"]}) + "\n")
        return _fake_result(job)

    monkeypatch.setattr(bench_peer, "run_job", run_job)
    assert suite.main(argv) == 0
    assert len(calls) == 1 and len(suite.read_results(results)) == 2


def test_bad_set_field_is_one_clear_error(tmp_path):
    with pytest.raises(SystemExit, match="not_a_field"):
        suite.main(["run", "--set", "not_a_field=1", "--results", str(tmp_path / "r.jsonl")])


def test_epoch_summary_last3_and_best():
    records = [{"epoch": e, "recall@1": r, "map@r": m}
               for e, r, m in [(1, 0.1, 0.1), (2, 0.5, 0.4), (3, 0.3, 0.2), (4, 0.4, 0.3)]]
    out = bench_peer.epoch_summary(records, {"map@r": 0.3})
    assert out["last3_map@r"] == pytest.approx(0.3)
    assert out["last3_recall@1"] == pytest.approx(0.4)
    assert out["best_epoch"] == 2 and out["final_minus_best_map@r"] == pytest.approx(-0.1)
    assert "swing_map@r" not in out  # fewer than five evaluated epochs
    five = records + [{"epoch": 5, "recall@1": 0.4, "map@r": 0.4}]
    # |0.4-0.1| + |0.2-0.4| + |0.3-0.2| + |0.4-0.3| over 4 changes
    assert bench_peer.epoch_summary(five, {"map@r": 0.4})["swing_map@r"] == pytest.approx(0.7 / 4)
    # the last epochs not all evaluated: no last-3 figure rather than a wrong one
    assert "last3_map@r" not in bench_peer.epoch_summary(records[:2] + [{"epoch": 3}, records[3]], {"map@r": 0.3})


def test_mask_statistics():
    stats = bench_peer.mask_statistics([[1.0, 0.0, 0.0, 1.0], [0.0, 1.0, 0.0, 1.0]])
    assert stats["mask_cosine"] == pytest.approx(0.5)
    assert stats["mask_off_share"] == pytest.approx(4 / 8)  # two zeros in each mask
    assert stats["mask_zero_share"] == pytest.approx(4 / 8)
    # off: below a tenth of the mask's largest entry, whether or not the relu made it exactly 0
    near = bench_peer.mask_statistics([[1.0, 0.05, 0.5, 1.0], [0.05, 1.0, 0.5, 1.0]])
    assert near["mask_off_share"] == pytest.approx(2 / 8) and near["mask_zero_share"] == 0.0
    assert "mask_cosine" not in bench_peer.mask_statistics([[1.0, 2.0]])


def test_table_mean_sd_and_missing_rows(tmp_path, monkeypatch):
    monkeypatch.setattr(bench_peer, "run_job", lambda job, log_dir: _fake_result(job))
    results = str(tmp_path / "r.jsonl")
    suite.main(["run", "--datasets", "shapes", "--settings", "k1", "--seeds", "0", "2", "--results", results,
                "--run-root", str(tmp_path), "--threads", "1"])
    text = suite.markdown(suite.read_results(results))
    row = next(line for line in text.splitlines() if line.startswith("| shapes | K = 1 |"))
    # MAP@R final: 0.24 + 0.001 * seed over seeds 0 and 2 -> 24.10 ± 0.14
    assert "| 2 | 54.00 ± 0.00 | 24.10 ± 0.14 |" in row
    assert "shapes: pml 0/3, k1 2/3, k1-symm 0/3" in text and "glyphs: pml 0/3" in text
    assert json.loads(open(results).readline())["config"] == "k1"


def test_table_keeps_the_hand_written_findings_and_reports_the_suite_average_spread(tmp_path, monkeypatch):
    monkeypatch.setattr(bench_peer, "run_job", lambda job, log_dir: _fake_result(job))
    results, out = str(tmp_path / "r.jsonl"), tmp_path / "suite.md"
    assert suite.main(["run", "--settings", "k1", "--seeds", "0", "1", "--results", results, "--run-root", str(tmp_path), "--threads", "1"]) == 0
    out.write_text(f"old head\n{suite.FINDINGS_START}\nD&C wins nowhere.\n{suite.FINDINGS_END}\nold tables\n")
    assert suite.main(["table", "--results", results, "--out", str(out)]) == 0
    text = out.read_text()
    assert "D&C wins nowhere." in text and "old tables" not in text and "old head" not in text
    assert text.index("D&C wins nowhere.") < text.index("| shapes | K = 1 |")  # findings before the tables
    # the fake final MAP@R is 0.24 + 0.001 x seed on every data set: suite means 24.0 and 24.1 over the two seeds
    average = [line for line in text.splitlines() if line.startswith("| K = 1 | 4 |")]
    assert len(average) == 1 and average[0].endswith("| 24.05 ± 0.07 | - |"), average
    assert suite.main(["table", "--results", results, "--out", str(out)]) == 0
    assert out.read_text() == text  # regenerating changes nothing
