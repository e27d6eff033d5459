"""docs/examples/own_signature.py: a user's signature is exported, warmed up, described and served."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLE = os.path.join(ROOT, "docs", "examples", "own_signature.py")


@pytest.fixture(scope="module")
def ran(tmp_path_factory):
    out = tmp_path_factory.mktemp("own_signature")
    done = subprocess.run([sys.executable, EXAMPLE, "--out", str(out)], capture_output=True, text=True,
                          timeout=900, env={**os.environ, "PYTHONPATH": ROOT, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout[done.stdout.index("{"):]), out


def test_the_example_runs_as_printed_and_its_signature_answers_everywhere(ran):
    summary, _ = ran
    assert "class_votes" in summary["signatures"]
    assert {"serving_default", "search", "search_k"} <= set(summary["signatures"])  # the built-ins stay
    # The same answer in-process, in a process with TensorFlow alone, and from search_k + NumPy.
    assert summary["in_process"] == summary["tensorflow_only"] == summary["numpy_reference"]
    assert len(summary["in_process"]) == 4
    assert all(label in ("bright", "dark") and 2 <= votes <= 3 for label, votes in summary["in_process"])
    assert summary["tfdnc_loaded_in_clean_process"] is False
    assert summary["metadata_class_votes_k"] == 3


def test_the_user_signature_is_described_and_warmed_up(ran):
    from tfdnc.exporting import contract
    from tfdnc.exporting.warmup import read_warmup_requests

    summary, _ = ran
    extra = os.path.join(summary["export"], contract.ASSETS_EXTRA)
    metadata = json.load(open(os.path.join(extra, contract.METADATA_FILE)))
    assert metadata["signatures"]["class_votes"] == {
        "inputs": {"image_bytes": {"dtype": "string", "shape": [-1]}},
        "outputs": {"labels": {"dtype": "string", "shape": [-1]}, "votes": {"dtype": "int32", "shape": [-1]}},
    }
    warmed = [log.predict_log.request.model_spec.signature_name
              for log in read_warmup_requests(os.path.join(extra, contract.WARMUP_FILE))]
    assert warmed.count("class_votes") == len(metadata["warmup_batch_sizes"]) == 5


def test_registering_a_name_twice_or_a_bad_signature_is_refused():
    from tfdnc.exporting import Signature, TensorInfo, contract, register_signature, registered_signatures

    # The built-ins, in the order an export adds them (and its warm-up records run).
    assert [s.name for s in registered_signatures()][:5] == list(contract.SIGNATURES)

    class Twice(Signature):
        name = "serving_default"
        inputs = (TensorInfo("image_bytes", "string"),)
        outputs = (TensorInfo("embeddings", "float32", ("B", "d")),)

    with pytest.raises(ValueError, match="'serving_default' is already registered"):
        register_signature(Twice())

    class Nameless(Signature):
        inputs = Twice.inputs
        outputs = Twice.outputs

    with pytest.raises(ValueError, match="Nameless: `name` must be"):
        Nameless()
