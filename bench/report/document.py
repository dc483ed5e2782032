"""One report, two renderings: a list of blocks becomes report.md and a self-contained report.html
(and a Table block becomes a LaTeX table too, see latex.py).

Text uses one inline construct, `code`; everything else is structure (headings, tables, images),
so every rendering comes from the same blocks and they cannot drift apart.
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
    fold: str = ""  # when set, report.html shows the block collapsed under this summary line


@dataclass(frozen=True)
class Note:
    """A boxed warning, e.g. that the report comes from a smoke run."""
    title: str
    text: str


Block = Union[Heading, Paragraph, Bullets, Table, Image, Code, Note]


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
    if isinstance(block, Note):
        return f"> **{block.title}** {block.text}"
    return f"```{block.lang}\n{block.text.rstrip()}\n```"


def markdown_table(table: Table) -> str:
    def line(cells):
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"
    rule = ["---:" if a == "r" else "---" for a in column_align(table)]
    return "\n".join([line(table.header), line(rule)] + [line(r) for r in table.rows])


def column_align(table: Table) -> str:
    return table.align.ljust(len(table.header), "l")


# ---- html ----------------------------------------------------------------------------------

_CSS = """
body { font-family: system-ui, sans-serif; max-width: 70rem; margin: 2rem auto; padding: 0 1rem;
       line-height: 1.45; color: #222; }
table { border-collapse: collapse; margin: 1rem 0; font-size: 0.9rem; }
th, td { border: 1px solid #ccc; padding: 0.25rem 0.5rem; }
th { background: #f2f2f2; }
td.r, th.r { text-align: right; white-space: nowrap; }
.wide { overflow-x: auto; max-width: 100%; }  /* a table wider than the page scrolls, never clips */
figure { margin: 1.5rem 0; }
figure img { max-width: 100%; }
figcaption { font-style: italic; font-size: 0.9rem; }
pre { background: #f6f6f6; padding: 0.75rem; overflow-x: auto; }
details > summary { cursor: pointer; font-weight: 600; }
.note { border: 2px solid #b00020; background: #fff3f3; padding: 0.6rem 0.9rem; margin: 1rem 0; }
nav.toc ol { margin: 0.3rem 0 1.5rem; }
"""


def html_page(blocks: list[Block], title: str, base: Path) -> str:
    """A single HTML file: images are read from ``base`` and embedded as data: URIs. A table of
    contents of the level-2 headings comes just before the first of them."""
    anchors = _anchors(blocks)
    parts = [_html(b, base, anchors.get(i)) for i, b in enumerate(blocks)]
    if anchors:
        items = "\n".join(f'<li><a href="#{anchor}">{_inline(blocks[i].text)}</a></li>'
                          for i, anchor in anchors.items())
        parts.insert(min(anchors), f'<nav class="toc"><strong>Contents</strong>\n<ol>\n{items}\n</ol>\n</nav>')
    body = "\n".join(parts)
    return (f"<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<title>{html.escape(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
            f"{body}\n</body>\n</html>\n")


def _anchors(blocks: list[Block]) -> dict[int, str]:
    """An id per level-2 heading (block index -> id), unique within the page."""
    anchors: dict[int, str] = {}
    for i, block in enumerate(blocks):
        if isinstance(block, Heading) and block.level == 2:
            slug = re.sub(r"[^a-z0-9]+", "-", block.text.lower()).strip("-") or "section"
            anchors[i] = slug if slug not in anchors.values() else f"{slug}-{i}"
    return anchors


def _inline(text: str) -> str:
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text, quote=False))


def _html(block: Block, base: Path, anchor: str | None = None) -> str:
    if isinstance(block, Heading):
        attr = f' id="{anchor}"' if anchor else ""
        return f"<h{block.level}{attr}>{_inline(block.text)}</h{block.level}>"
    if isinstance(block, Paragraph):
        return f"<p>{_inline(block.text)}</p>"
    if isinstance(block, Bullets):
        return "<ul>\n" + "\n".join(f"<li>{_inline(i)}</li>" for i in block.items) + "\n</ul>"
    if isinstance(block, Table):
        align = column_align(block)

        def row(cells, tag):
            return "<tr>" + "".join(f'<{tag} class="{a}">{_inline(c)}</{tag}>'
                                    for c, a in zip(cells, align)) + "</tr>"
        return ('<div class="wide"><table>\n<thead>' + row(block.header, "th") + "</thead>\n<tbody>\n"
                + "\n".join(row(r, "td") for r in block.rows) + "\n</tbody>\n</table></div>")
    if isinstance(block, Image):
        data = base64.b64encode((base / block.path).read_bytes()).decode("ascii")
        caption = _inline(block.caption)
        return (f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(block.alt)}">'
                f"<figcaption>{caption}</figcaption></figure>")
    if isinstance(block, Note):
        return f'<div class="note"><strong>{_inline(block.title)}</strong> {_inline(block.text)}</div>'
    code = f"<pre><code>{html.escape(block.text.rstrip())}</code></pre>"
    return f"<details><summary>{_inline(block.fold)}</summary>\n{code}\n</details>" if block.fold else code
