"""One report, two renderings: a list of blocks becomes report.md and a self-contained report.html.

Text uses one inline construct, `code`; everything else is structure (headings, tables, images),
so both renderings come from the same blocks and cannot drift apart.
"""
from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Union


@dataclass(frozen=True)
class Heading:
    level: int
    text: str


@dataclass(frozen=True)
class Paragraph:
    text: str


@dataclass(frozen=True)
class Bullets:
    items: list[str]


@dataclass(frozen=True)
class Table:
    header: list[str]
    rows: list[list[str]]
    align: str = ""  # one of l/r per column; default left


@dataclass(frozen=True)
class Image:
    path: str  # relative to the report's folder
    alt: str
    caption: str


@dataclass(frozen=True)
class Code:
    text: str
    lang: str = ""


Block = Union[Heading, Paragraph, Bullets, Table, Image, Code]


# ---- markdown ------------------------------------------------------------------------------

def markdown(blocks: list[Block]) -> str:
    return "\n\n".join(_md(b) for b in blocks) + "\n"


def _md(block: Block) -> str:
    if isinstance(block, Heading):
        return "#" * block.level + " " + block.text
    if isinstance(block, Paragraph):
        return block.text
    if isinstance(block, Bullets):
        return "\n".join(f"- {item}" for item in block.items)
    if isinstance(block, Table):
        return markdown_table(block)
    if isinstance(block, Image):
        return f"![{block.alt}]({block.path})\n\n*{block.caption}*"
    return f"```{block.lang}\n{block.text.rstrip()}\n```"


def markdown_table(table: Table) -> str:
    def line(cells):
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"
    rule = ["---:" if a == "r" else "---" for a in _align(table)]
    return "\n".join([line(table.header), line(rule)] + [line(r) for r in table.rows])


def _align(table: Table) -> str:
    return table.align.ljust(len(table.header), "l")


# ---- html ----------------------------------------------------------------------------------

_CSS = """
body { font-family: system-ui, sans-serif; max-width: 70rem; margin: 2rem auto; padding: 0 1rem;
       line-height: 1.45; color: #222; }
table { border-collapse: collapse; margin: 1rem 0; font-size: 0.9rem; }
th, td { border: 1px solid #ccc; padding: 0.25rem 0.5rem; }
th { background: #f2f2f2; }
td.r, th.r { text-align: right; white-space: nowrap; }
figure { margin: 1.5rem 0; }
figure img { max-width: 100%; }
figcaption { font-style: italic; font-size: 0.9rem; }
pre { background: #f6f6f6; padding: 0.75rem; overflow-x: auto; }
"""


def html_page(blocks: list[Block], title: str, base: Path) -> str:
    """A single HTML file: images are read from ``base`` and embedded as data: URIs."""
    body = "\n".join(_html(b, base) for b in blocks)
    return (f"<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<title>{html.escape(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
            f"{body}\n</body>\n</html>\n")


def _inline(text: str) -> str:
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text, quote=False))


def _html(block: Block, base: Path) -> str:
    if isinstance(block, Heading):
        return f"<h{block.level}>{_inline(block.text)}</h{block.level}>"
    if isinstance(block, Paragraph):
        return f"<p>{_inline(block.text)}</p>"
    if isinstance(block, Bullets):
        return "<ul>\n" + "\n".join(f"<li>{_inline(i)}</li>" for i in block.items) + "\n</ul>"
    if isinstance(block, Table):
        align = _align(block)

        def row(cells, tag):
            return "<tr>" + "".join(f'<{tag} class="{a}">{_inline(c)}</{tag}>'
                                    for c, a in zip(cells, align)) + "</tr>"
        return ("<table>\n<thead>" + row(block.header, "th") + "</thead>\n<tbody>\n"
                + "\n".join(row(r, "td") for r in block.rows) + "\n</tbody>\n</table>")
    if isinstance(block, Image):
        data = base64.b64encode((base / block.path).read_bytes()).decode("ascii")
        caption = _inline(block.caption)
        return (f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(block.alt)}">'
                f"<figcaption>{caption}</figcaption></figure>")
    return f"<pre><code>{html.escape(block.text.rstrip())}</code></pre>"
