"""The one error type every data set loader raises for bad input."""

from __future__ import annotations

from tfdnc.utils.errors import UserInputError


class DatasetError(UserInputError):
    """Bad or missing data set files, located down to the file and line.

    The message starts with `path:line:` (or `path (item):` for records that
    have no line, such as entries of a `.mat` file), the way compilers report
    errors, so editors and terminals can jump to the spot.

    Examples:
        >>> raise DatasetError("expected 2 fields, got 3", path="images.txt", line=7)
        Traceback (most recent call last):
        ...
        tfdnc.datasets.errors.DatasetError: images.txt:7: expected 2 fields, got 3

    Attributes:
        path: the file (or folder) at fault, or None.
        line: the 1-based line number in `path`, or None.
        item: a record inside `path` that has no line number, or None.
    """

    def __init__(
        self,
        message: str,
        path: str | None = None,
        line: int | None = None,
        item: str | None = None,
    ):
        self.path = path
        self.line = line
        self.item = item
        if path is None:
            location = ""
        elif line is not None:
            location = f"{path}:{line}: "
        elif item is not None:
            location = f"{path} ({item}): "
        else:
            location = f"{path}: "
        super().__init__(location + message)
