"""Messages and help name the commands an installed user has (`tfdnc export`), not a checkout's."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys

import pytest

from tfdnc.cli import COMMANDS

# Commands that exist only in a source checkout, or only under another name.
CHECKOUT_ONLY = ("python -m export", "train.py")


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_help_names_installed_commands(name):
    parser = importlib.import_module(COMMANDS[name][0]).build_parser()
    parser.prog = f"tfdnc {name}"  # as `tfdnc NAME --help` shows it
    text = parser.format_help()
    for stale in CHECKOUT_ONLY:
        assert stale not in text, f"tfdnc {name} --help names {stale!r}"


def test_export_error_names_tfdnc_export(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "tfdnc.cli", "export", str(tmp_path / "absent"), "--base", str(tmp_path / "b"),
         "--name", "m"], capture_output=True, text=True, env={k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"})
    assert result.returncode == 2
    # one line, with none of TensorFlow's start-up notices (cuda drivers, cuInit, oneDNN) before it
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("tfdnc export: error:"), result.stderr
    assert "python -m export" not in result.stderr and "Traceback" not in result.stderr


def test_startup_notices_are_dropped_and_real_errors_kept(tmp_path):
    """A command's stderr loses TensorFlow's start-up notices, not a real message written during import."""
    script = (
        "import os, sys\n"
        "from tfdnc.utils.startup import import_tensorflow_quietly\n"
        "import builtins\n"
        "real = builtins.__import__\n"
        "said = []\n"
        "def noisy(name, *a, **k):\n"
        "    if name in ('keras', 'tensorflow') and not said:\n"
        "        said.append(name)\n"
        "        os.write(2, b'I0000 00:00:1 cudart_stub.cc:31] Could not find cuda drivers\\n')\n"
        "        os.write(2, b'E0000 00:00:2 cuda_platform.cc:52] failed call to cuInit: INTERNAL\\n')\n"
        "        os.write(2, b'a real problem\\n')\n"
        "    return real(name, *a, **k)\n"
        "builtins.__import__ = noisy\n"
        "import_tensorflow_quietly()\n"
        "import tensorflow\n"
        "print('imported', file=sys.stderr)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines == ["a real problem", "imported"]
