"""A report Table as a LaTeX booktabs tabular: one file per table, ready to ``\\input`` inside a
paper's own table float (which gives it its caption). Needs ``\\usepackage{booktabs}``.

It renders the same Table block as report.md, so the numbers cannot differ between the two. The
few non-ASCII signs the tables use become math, so the file also compiles with pdflatex without
a Unicode setup.
"""
from __future__ import annotations

from .document import Table, column_align

_ESCAPES = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
    "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
    "±": r"$\pm$", "−": r"$-$", "–": "--", "—": "---", "×": r"$\times$", "Δ": r"$\Delta$", "…": r"\ldots{}",
    "†": r"$^\dagger$",
}


def escape(text: str) -> str:
    return "".join(_ESCAPES.get(c, c) for c in text)


def _cell(text: str) -> str:
    """Escaped text; `code` spans (odd parts between backticks) become \\texttt."""
    parts = text.split("`")
    return "".join(rf"\texttt{{{escape(p)}}}" if i % 2 else escape(p) for i, p in enumerate(parts))


def latex_table(table: Table, comment: str) -> str:
    """``comment``: what the table is and where it comes from, as leading % lines."""
    def row(cells):
        return " & ".join(_cell(c) for c in cells) + r" \\"
    return "\n".join([
        *(f"% {line}" for line in comment.splitlines()),
        r"% Needs \usepackage{booktabs}.",
        rf"\begin{{tabular}}{{{column_align(table)}}}",
        r"\toprule",
        row(table.header),
        r"\midrule",
        *(row(r) for r in table.rows),
        r"\bottomrule",
        r"\end{tabular}",
    ]) + "\n"
