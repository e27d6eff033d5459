"""The report's HTML: one page, no scripts, no external resources."""

from __future__ import annotations

import base64
import html
import os
from dataclasses import dataclass, field

_STYLE = """
body { font-family: system-ui, -apple-system, Segoe UI, Roboto, sans-serif; margin: 2em auto;
       max-width: 1150px; color: #222; line-height: 1.45; padding: 0 1em; }
h1 { font-size: 1.6em; margin-bottom: 0.1em; } h2 { margin-top: 1.8em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.92em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { background: #f3f3f3; }
figure { margin: 1em 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { font-size: 0.9em; color: #555; }
.note { color: #7a5a00; background: #fff8e1; padding: 0.4em 0.8em; border-left: 3px solid #f0b400; }
.muted { color: #666; font-size: 0.9em; }
code { background: #f5f5f5; padding: 0 0.2em; }
"""


@dataclass
class Section:
    """A titled block of the page: paragraphs, tables, figures and notes, in order."""

    title: str
    parts: list[str] = field(default_factory=list)

    def paragraph(self, text: str) -> None:
        self.parts.append(f"<p>{html.escape(text)}</p>")

    def note(self, text: str) -> None:
        self.parts.append(f'<p class="note">{html.escape(text)}</p>')

    def table(self, headers: list[str], rows: list[list[object]]) -> None:
        head = "".join(f"<th>{html.escape(str(h))}</th>" for h in headers)
        body = "".join(
            "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows
        )
        self.parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")

    def figure(self, src: str, caption: str, alt: str) -> None:
        self.parts.append(
            f'<figure><img src="{html.escape(src, quote=True)}" alt="{html.escape(alt, quote=True)}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>"
        )

    def links(self, items: list[tuple[str, str]]) -> None:
        links = " &middot; ".join(
            f'<a href="{html.escape(href, quote=True)}">{html.escape(text)}</a>' for text, href in items
        )
        self.parts.append(f"<p>{links}</p>")

    def render(self) -> str:
        return f"<section><h2>{html.escape(self.title)}</h2>\n" + "\n".join(self.parts) + "</section>"


def image_source(png_path: str, page_dir: str, inline: bool) -> str:
    """The `src` for a PNG: relative to the page, or a data URI when `inline`."""
    if inline:
        with open(png_path, "rb") as f:
            return "data:image/png;base64," + base64.b64encode(f.read()).decode("ascii")
    return os.path.relpath(png_path, page_dir).replace(os.sep, "/")


def render_page(title: str, subtitle: str, sections: list[Section]) -> str:
    body = "\n".join(s.render() for s in sections)
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head>\n<body>\n"
        f"<h1>{html.escape(title)}</h1><p class=\"muted\">{html.escape(subtitle)}</p>\n{body}\n</body></html>\n"
    )
