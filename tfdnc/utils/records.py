"""Rows of results (one dict each) written as JSON or CSV, by the file's extension."""

from __future__ import annotations

import csv
import json
import os
from typing import Sequence


def write_records(path: str, records: Sequence[dict], fieldnames: Sequence[str]) -> None:
    """Writes `records` to `path`: a JSON list for `.json`, else CSV with `fieldnames` as header.

    Examples:
        >>> write_records("hits.csv", [{"query": "q.jpg", "rank": 1}], ["query", "rank"])
    """
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if path.lower().endswith(".json"):
        with open(path, "w") as f:
            json.dump(list(records), f, indent=1)
        return
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(fieldnames))
        writer.writeheader()
        writer.writerows(records)
