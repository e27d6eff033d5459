"""RunDir: the one place the run directory's file names live."""

import json
import os

from tfdnc import rundir
from tfdnc.rundir import RunDir


def test_paths_follow_the_documented_layout(tmp_path):
    run = RunDir(tmp_path / "run")
    assert run.config == str(tmp_path / "run" / "config.json")
    assert run.model == str(tmp_path / "run" / "model.keras")
    assert run.clusters == str(tmp_path / "run" / "clusters.npz")
    assert run.clusters_previous == str(tmp_path / "run" / "clusters.prev.npz")
    assert run.last_checkpoint == str(tmp_path / "run" / "checkpoints" / "last.keras")
    assert run.export_base == str(tmp_path / "run" / "export") and rundir.EXPORT_NAME == "dnc"
    assert not run.holds_run() and not run.has_model()


def test_metrics_and_history_round_trip_and_start_empty(tmp_path):
    run = RunDir(tmp_path / "run").create()
    assert os.path.isdir(run.checkpoints)
    assert run.metrics() == {} and run.history() == []
    run.write_metrics({"K": 4, "after": {"results": {"test": {"recall@1": 0.5}}}})
    run.write_history([{"epoch": 0, "loss": 1.0}])
    assert json.load(open(run.metrics_file))["K"] == 4
    assert run.metrics()["after"]["results"]["test"]["recall@1"] == 0.5
    assert run.history() == [{"epoch": 0, "loss": 1.0}]
    run.write_skipped(["a.jpg: unreadable", "class 7: one image"])
    assert open(run.skipped).read().splitlines() == ["a.jpg: unreadable", "class 7: one image"]
    os.makedirs(os.path.join(run.backup, "gen-00000001"))
    assert not run.holds_run()  # a generation without its COMMIT is not a run
    open(os.path.join(run.backup, "gen-00000001", "COMMIT"), "w").close()
    assert run.holds_run()
