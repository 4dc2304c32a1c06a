"""Self-contained HTML pages: PNG figures embedded as base64 data URIs, tables, preformatted text; no external files."""

from __future__ import annotations

import base64
import html
from pathlib import Path

STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1200px; margin: 2em auto; padding: 0 1em; color: #222; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: 0.2em; margin-top: 2em; }
div.wide { overflow-x: auto; } table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; }
th { background: #f2f2f2; } td.number { text-align: right; font-variant-numeric: tabular-nums; }
figure { margin: 1em 0; } figure img { max-width: 100%; } figcaption { font-size: 0.9em; color: #555; }
pre { background: #f7f7f7; padding: 0.8em; overflow-x: auto; font-size: 0.85em; }
p.note { background: #fff8e1; padding: 0.5em 0.8em; border-left: 3px solid #f0b400; }
"""


def png_data_uri(path: str | Path) -> str:
    """A PNG file as a data: URI."""
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def figure_html(path: str | Path, caption: str) -> str:
    """An embedded PNG with a caption."""
    return (f'<figure><img src="{png_data_uri(path)}" alt="{html.escape(caption)}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def cell_html(value) -> str:
    """One table cell: numbers right-aligned with 4 significant digits, everything else escaped text."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"<td>{html.escape('' if value is None else str(value))}</td>"
    text = f"{value:.4g}" if isinstance(value, float) else str(value)
    return f'<td class="number">{text}</td>'


def table_html(header: list[str], rows: list[list]) -> str:
    """A table with a header row, in a box that scrolls sideways when the table is wider than the page."""
    head = "".join(f"<th>{html.escape(str(name))}</th>" for name in header)
    body = "".join("<tr>" + "".join(cell_html(value) for value in row) + "</tr>" for row in rows)
    return f'<div class="wide"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def text_html(text: str, note: bool = False) -> str:
    """A paragraph of escaped text (highlighted when `note`)."""
    return f'<p{" class=note" if note else ""}>{html.escape(text)}</p>'


def pre_html(text: str) -> str:
    return f"<pre>{html.escape(text)}</pre>"


def page_html(title: str, sections: list[tuple[str, str]]) -> str:
    """A whole page: a title and (heading, body HTML) sections."""
    body = "".join(f"<h2>{html.escape(heading)}</h2>\n{content}\n" for heading, content in sections)
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head>\n<body><h1>{html.escape(title)}</h1>\n{body}</body></html>\n")
