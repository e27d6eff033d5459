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
         "--name", "m"], capture_output=True, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and errors[0].startswith("tfdnc export: error:"), result.stderr
    assert "python -m export" not in result.stderr and "Traceback" not in result.stderr
