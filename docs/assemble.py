"""Builds README.md and BENCHMARKS.md from the parts in docs/.

    python docs/assemble.py           # rewrite both
    python docs/assemble.py --check   # exit 1 if either is out of date
"""

from __future__ import annotations

import argparse
import os
import sys

DOCS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(DOCS)

README_SECTIONS = [
    "keras", "coming_from", "backbones", "losses", "symm", "evaluation", "datasets", "serving", "index", "scale",
    "reliability", "pretrain", "architecture",
]
BENCH_SECTIONS = [
    "train", "suite", "symm", "clustering", "recall", "peer", "losses", "serving", "index", "scale", "pretrain",
    "backbones", "method",
]


def _read(path: str) -> str:
    with open(path) as f:
        return f.read().strip() + "\n"


def _parts(folder: str, names: list[str]) -> list[str]:
    parts = []
    for name in names:
        path = os.path.join(DOCS, folder, f"{name}.md")
        if os.path.exists(path):
            parts.append(_read(path))
    return parts


def readme() -> str:
    head = _read(os.path.join(DOCS, "readme_head.md"))
    table = os.path.join(DOCS, "default_run.md")
    head = head.replace("DEFAULT_RUN_TABLE", _read(table).strip() if os.path.exists(table) else "(not measured yet)")
    return "\n".join([head, *_parts("sections", README_SECTIONS)])


def benchmarks() -> str:
    head = _read(os.path.join(DOCS, "bench_head.md"))
    return "\n".join([head, *_parts("bench", BENCH_SECTIONS)])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args()
    stale = []
    for name, text in (("README.md", readme()), ("BENCHMARKS.md", benchmarks())):
        path = os.path.join(ROOT, name)
        current = open(path).read() if os.path.exists(path) else ""
        if current != text:
            stale.append(name)
            if not args.check:
                with open(path, "w") as f:
                    f.write(text)
    if args.check and stale:
        print(f"out of date: {', '.join(stale)}; run python docs/assemble.py")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
