"""Every flag of every `tfdnc` command has a help line that says more than its own name."""

from __future__ import annotations

import argparse
import importlib
import re

import pytest

from tfdnc import cli

# Words that add nothing to a flag's name ("the number of epochs" says no more than --epochs).
FILLER = {"the", "a", "an", "of", "to", "use", "number", "whether", "enable", "set", "default", "none",
          "true", "false", "flag", "option", "value", "for", "in", "on", "is"}


def _parsers():
    """(command, parser) of every `tfdnc` command and `tfdnc index` subcommand."""
    found = []
    for name, (module, _, _) in cli.COMMANDS.items():
        found.append((name, importlib.import_module(module).build_parser()))

    def walk(prefix, parser):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub_name, sub in action.choices.items():
                    if prefix or sub_name not in cli.COMMANDS:  # those are parsed by their own parser, above
                        found.append((f"{prefix} {sub_name}".strip(), sub))
                        walk(f"{prefix} {sub_name}".strip(), sub)

    walk("", cli.build_parser())
    return found


def _name_only(action: argparse.Action, help_text: str) -> bool:
    text = re.sub(r"\(default:[^)]*\)", " ", help_text.lower())
    words = set(re.findall(r"[a-z0-9]+", text)) - FILLER
    name = set()
    for option in action.option_strings:
        name |= set(re.findall(r"[a-z0-9]+", option.lower()))
    return words <= name | {"no"}


def _flags():
    for command, parser in _parsers():
        for action in parser._actions:
            if action.option_strings and action.help != argparse.SUPPRESS and "-h" not in action.option_strings:
                yield command, action


def test_every_flag_has_a_help_line_that_says_more_than_its_name():
    bare = [f"tfdnc {command} {'/'.join(action.option_strings)}: {action.help!r}"
            for command, action in _flags() if not action.help or _name_only(action, str(action.help))]
    assert not bare, "flags whose help only repeats their name:\n" + "\n".join(bare)


def test_the_commands_are_all_checked():
    commands = {command for command, _ in _parsers()}
    assert {"train", "export", "evaluate", "report", "pretrain", "embed", "search", "index build", "index add",
            "index remove", "index search", "index info", "index calibrate", "index evaluate"} <= commands
    assert sum(1 for _ in _flags()) > 100


def _help_of(command: str, flag: str) -> str:
    for name, action in _flags():
        if name == command and flag in action.option_strings:
            return action.help % {"default": action.default, "choices": action.choices} if "%(" in action.help \
                else action.help
    raise AssertionError(f"tfdnc {command} has no {flag}")


def test_learning_rate_flags_say_what_they_are_for():
    assert "learnable" in _help_of("train", "--mask-learning-rate")
    for flag in ("--mask-weight-decay", "--loss-learning-rate"):
        text = _help_of("train", flag)
        assert "default: None" not in text and "network's" in text, (flag, text)


def _allowed(flag):
    from tfdnc.config import MIXED_PRECISION
    from tfdnc.distributed.strategy import STRATEGIES
    from tfdnc.layers.normalization import PIXEL_MODES
    from tfdnc.training.recluster import CLUSTER_FEATURES

    return {"--pixel-mode": PIXEL_MODES, "--cluster-features": CLUSTER_FEATURES, "--strategy": STRATEGIES,
            "--mixed-precision": [m for m in MIXED_PRECISION if m]}[flag]


@pytest.mark.parametrize("command,flag", [("train", "--pixel-mode"), ("train", "--cluster-features"),
                                          ("train", "--strategy"), ("train", "--mixed-precision"),
                                          ("pretrain", "--pixel-mode")])
def test_flags_with_a_fixed_set_of_values_list_them(command, flag):
    text = _help_of(command, flag).split("(default:")[0]
    missing = [value for value in _allowed(flag) if not re.search(rf"\b{re.escape(value)}\b", text)]
    assert not missing, (flag, text, missing)
