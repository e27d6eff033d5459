"""The error raised when a saved index cannot be used."""

from __future__ import annotations


class IndexMismatchError(ValueError):
    """A saved index that is corrupted or does not belong to the model asking for it.

    Raised when an index file fails its checksum or cannot be parsed, when its
    dimension differs from the embeddings offered to it, or when it was built
    from another export than the one it is opened with. The message names the
    file or folder and what differs.

    Examples:
        >>> from tfdnc.exporting import export_run
        >>> from tfdnc.index import open_index
        >>> other = export_run("runs/default", "exports", "other")   # another export: exports/other/1
        >>> try:
        ...     open_index("exports/dnc/1.index", export=other)
        ... except IndexMismatchError as err:
        ...     print(err)
        index 'exports/dnc/1.index/1'...
    """
