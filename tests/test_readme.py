"""The README stays true: short, its commands exist, every flag it names is in their --help."""

import os
import re
import shlex
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")


def _readme() -> str:
    with open(README) as f:
        return f.read()


def _command_lines() -> list[str]:
    """The README's shell lines that run tfdnc: `python train.py ...`, `tfdnc ...`, `python -m tfdnc...`."""
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", _readme(), re.S):
        for line in block.splitlines():
            line = line.split(" #", 1)[0].strip()
            for part in line.split("&&"):
                part = part.strip()
                if re.match(r"(python3? train\.py|tfdnc |python3? -m tfdnc)", part):
                    lines.append(part)
    return lines


def _command(line: str) -> tuple[str, ...]:
    """The argv prefix whose --help documents the line's flags: ("train.py",) or ("tfdnc", "index", "build")."""
    words = shlex.split(line)
    if words[1:2] == ["train.py"]:
        return ("train.py",)
    if words[0] == "tfdnc":
        words = words[1:]
    else:  # python -m tfdnc.cli / tfdnc.index ...
        words = words[3:]
    head = ["tfdnc"]
    for word in words:
        if word.startswith("-") or "/" in word or "." in word:
            break
        head.append(word)
    return tuple(head[:3])


def _help(command: tuple[str, ...]) -> str:
    if command == ("train.py",):
        argv = [sys.executable, os.path.join(ROOT, "train.py"), "--help"]
    else:
        argv = [sys.executable, "-m", "tfdnc.cli", *command[1:], "--help"]
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{' '.join(command)} --help failed:\n{proc.stderr[-2000:]}"
    return proc.stdout


def _flags(text: str) -> set[str]:
    return set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", text))


COMMANDS = sorted({_command(line) for line in _command_lines()})


def test_the_readme_is_short_and_names_its_commands():
    assert len(_readme().splitlines()) <= 160
    assert ("train.py",) in COMMANDS and ("tfdnc", "index", "build") in COMMANDS


@pytest.mark.parametrize("command", COMMANDS, ids=[" ".join(c) for c in COMMANDS])
def test_every_flag_of_a_readme_command_is_in_its_help(command):
    documented = _flags(_help(command))
    named = set()
    for line in _command_lines():
        if _command(line) == command:
            named |= _flags(line)
    assert named - {"--help"} <= documented, f"{' '.join(command)}: not in --help: {sorted(named - documented)}"


def test_every_flag_the_readme_names_in_its_text_exists():
    """Flags in the prose (`--resume`, `--gallery DIR`) belong to one of the README's commands."""
    documented = set().union(*(_flags(_help(command)) for command in COMMANDS))
    prose = re.sub(r"```.*?```", "", _readme(), flags=re.S)
    # `mkdocs build --strict` is mkdocs's flag, not tfdnc's.
    named = _flags(prose) - {"--strict"}
    assert named <= documented, f"README names flags no command has: {sorted(named - documented)}"


def test_the_readme_links_resolve():
    for target in re.findall(r"\]\(([^)#]+)\)", _readme()):
        if not re.match(r"https?://", target):
            assert os.path.exists(os.path.join(ROOT, target)), f"README links to a missing file: {target}"
