"""The "Extend tfdnc" page's examples (docs/examples/*.py, included by docs/extend.md), run as printed.

own_loss.py and own_signature.py are run by their own tests (tests/test_example_own_loss.py,
tests/test_example_own_signature.py, beside the loss and signature APIs they use); the
miner and data set examples are run here.
"""

import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(ROOT, "docs", "examples")

# What each example must print: its behaviour, as a user running it sees it.
EXPECTED = {
    "own_miner.py": [r"^triplets in the band: [1-9]\d*$", r"^triplet loss \d+\.\d{3}, active"],
    "own_dataset.py": [
        r"^6 train images of classes \[0, 1\] \| 6 test images$",
        r"^refused: catalogue/images\.jsonl:13: expected",
    ],
}


def test_every_example_is_on_the_page():
    with open(os.path.join(ROOT, "docs", "extend.md")) as f:
        included = set(re.findall(r'--8<-- "docs/examples/(\w+\.py)"', f.read()))
    examples = {n for n in os.listdir(EXAMPLES) if n.endswith(".py")}
    assert included == examples and set(EXPECTED) <= examples


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_extend_example_runs_as_printed(name, tmp_path):
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run([sys.executable, os.path.join(EXAMPLES, name)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    for pattern in EXPECTED[name]:
        assert re.search(pattern, proc.stdout, re.M), f"{name}: no line matches {pattern!r} in\n{proc.stdout}"
