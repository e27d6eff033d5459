"""Imports flow one way: tfdnc.exporting never imports tfdnc.serving.

Serving reads the export contract (`tfdnc.exporting.contract`, the version
layout); the exporter must stay usable without the clients, and no module of
either package reaches into the other's private names. Checked on the source
(every import statement, also those inside functions) and in a fresh process.
"""

from __future__ import annotations

import ast
import pathlib
import subprocess
import sys

import tfdnc

PACKAGE = pathlib.Path(tfdnc.__file__).parent


def imports_of(path: pathlib.Path) -> list[tuple[str, list[str]]]:
    """(module, imported names) for every import in a source file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.append((node.module, [alias.name for alias in node.names]))
        elif isinstance(node, ast.Import):
            found.extend((alias.name, []) for alias in node.names)
    return found


def test_exporting_does_not_import_serving():
    for path in sorted((PACKAGE / "exporting").glob("*.py")):
        for module, _ in imports_of(path):
            assert not module.startswith("tfdnc.serving"), f"{path.name} imports {module}"


def test_no_private_names_across_modules():
    for folder in ("exporting", "serving"):
        for path in sorted((PACKAGE / folder).glob("*.py")):
            for module, names in imports_of(path):
                if module.startswith("tfdnc"):
                    private = [n for n in names if n.startswith("_") and n != "__version__"]
                    assert not private, f"{folder}/{path.name} imports {private} from {module}"


def test_importing_the_exporter_loads_no_serving_module():
    code = ("import sys, tfdnc.exporting.exporter, tfdnc.exporting.gallery; "
            "print(sorted(m for m in sys.modules if m.startswith('tfdnc.serving')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=PACKAGE.parent)
    assert out.stdout.strip() == "[]"
