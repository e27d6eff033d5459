"""The one base class of the errors a user's input causes, and how a command reports them.

A setting out of range, a file that is not what it should be, a data set
that cannot train: the user fixes these, so a command prints one line
naming the flag, file or value and exits with status 2 (argparse's status
for bad arguments). Any other exception is a bug in tfdnc and keeps its
traceback; `--debug` shows the traceback of a user error too.

Examples:
    >>> def train():
    ...     raise UserInputError("--data-dir '/data/cub' does not exist")
    >>> run_reporting_errors("tfdnc train", train)   # the line goes to stderr
    2
"""

from __future__ import annotations

import sys
from typing import Callable


class UserInputError(ValueError):
    """Bad input from the user (a setting, a path, a file's content), named in the message.

    A `ValueError`, so code that caught `ValueError` before it existed
    still does. The data set, image check and settings errors derive from it.
    """


class UserPathError(UserInputError, FileNotFoundError):
    """A path the user named that does not exist or is not what it should be (a run, an export, a data set).

    Also a `FileNotFoundError`, as these errors were before they were named.
    """


def one_line(error: BaseException) -> str:
    """The error's message on one line (a message listing files over several lines is joined)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    text = ""
    for line in lines:
        # "...:" introduces a list; the items that follow are separated by "; ".
        text += line if not text else (" " if text.endswith(":") else "; ") + line
    return text or type(error).__name__


def run_reporting_errors(prog: str, function: Callable[[], int | None], debug: bool = False) -> int:
    """Runs a command's `function`; a `UserInputError` becomes `PROG: error: ...` on stderr and status 2.

    With `debug`, the error propagates with its traceback. Other exceptions
    (bugs) always propagate.
    """
    try:
        result = function()
    except UserInputError as err:
        if debug:
            raise
        print(f"{prog}: error: {one_line(err)}", file=sys.stderr)
        return 2
    return result if isinstance(result, int) else 0
