"""Is a value (from JSON, a flag or Python) of a type hint? One answer for settings and options.

Settings come from config files, where `"embedding_dim": "64"` or
`"crop_scale": 5` parse as JSON but are not what the code expects; a check
by the field's own type hint names them before anything runs, and covers a
new setting without an edit here.

Examples:
    >>> type_problem("64", int)
    'must be an integer, got "64" (a string)'
    >>> type_problem(5, tuple[float, float])
    'must be a list of 2 numbers, got 5'
    >>> type_problem(None, int | None) is None
    True
"""

from __future__ import annotations

import json
import numbers
import types
import typing
from typing import Any

import numpy as np


def type_problem(value: Any, hint: Any) -> str | None:
    """Why `value` does not fit the type hint `hint` ("must be ..., got ..."), or None when it does.

    Understands bool, int, float (an int is a number too), str, dict,
    tuples (`tuple[float, float]`, `tuple[int, ...]`; a JSON list is
    accepted), `X | None` and unions. A hint it does not understand (a
    class of the library, `Any`, no hint) accepts any value.
    """
    if _fits(value, hint):
        return None
    return f"must be {describe_type(hint)}, got {_show(value)}"


def describe_type(hint: Any) -> str:
    """Words for a type hint: "an integer", "a list of 2 numbers", "a string or null", ..."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        words = [describe_type(a) for a in args if a is not type(None)]
        if type(None) in args:
            words.append("null (None)")
        return " or ".join(words)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {_plural(args[0])}"
        if args:
            kinds = {_plural(a) for a in args}
            return f"a list of {len(args)} {kinds.pop()}" if len(kinds) == 1 else f"a list of {len(args)} values"
        return "a list"
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string", dict: "a JSON object",
             list: "a list", type(None): "null (None)"}
    base = origin or hint
    return names.get(base, getattr(base, "__name__", str(hint)))


def _fits(value: Any, hint: Any) -> bool:
    if hint is Any:
        return True
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, a) for a in args)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, (bool, np.bool_))
    if isinstance(value, (bool, np.bool_)):
        return False  # JSON true is not the number 1 here
    if hint is int:
        return isinstance(value, numbers.Integral)
    if hint is float:
        return isinstance(value, numbers.Real)
    if hint is str:
        return isinstance(value, str)
    if origin is tuple or hint is tuple:
        if not isinstance(value, (tuple, list)):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_fits(v, args[0]) for v in value)
        return not args or len(value) == len(args) and all(_fits(v, a) for v, a in zip(value, args))
    if origin is dict or hint is dict:
        return isinstance(value, dict)
    if origin is list or hint is list:
        return isinstance(value, (list, tuple))
    return True  # a hint this check does not know: the code that takes the value checks it


def _plural(hint: Any) -> str:
    return {int: "integers", float: "numbers", str: "strings", bool: "true / false values"}.get(hint, "values")


def _show(value: Any) -> str:
    """The value as the user wrote it (JSON where it is JSON), and its kind when that is the problem."""
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    kind = {str: "a string", bool: "true / false", list: "a list", dict: "a JSON object"}.get(type(value))
    return f"{text} ({kind})" if kind and not isinstance(value, (list, dict)) else text
