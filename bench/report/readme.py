"""Put a run's recommendation, findings, summary tables and main figures into README.md, between
two markers.

Only the text between the markers changes. results/ is git-ignored, so the figures are copied
into the repository (docs/images/results/ by default) and the README links to the copies.
"""
from __future__ import annotations

import os
from pathlib import Path

from ..errors import BenchError
from ..store import atomic_write
from .build import findings_blocks, smoke_blocks, summary_blocks
from .data import load_results
from .document import Heading, Image, Paragraph, markdown
from .figures import REGISTRY, task_stem
from .provenance import read_provenance, shown_path
from .recommend import recommendation_blocks
from .tables import summary

START, END = "<!-- results:start -->", "<!-- results:end -->"
DEFAULT_IMAGES = Path("docs/images/results")


def read_readme(readme: Path) -> tuple[str, int, int]:
    """The README's text and where its two markers are; BenchError when they are missing."""
    try:
        text = Path(readme).read_text(encoding="utf-8")
    except OSError as exc:
        raise BenchError(f"{readme}: cannot read ({exc.strerror})") from None
    start, end = text.find(START), text.find(END)
    if start < 0 or end < start:
        raise BenchError(f"{readme}: needs a line {START} followed later by a line {END}")
    return text, start, end


def update_readme(out_dir: Path, readme: Path, images: Path = DEFAULT_IMAGES) -> None:
    """Replace the README text between START and END with the run's results (atomically)."""
    out_dir, readme, images = Path(out_dir), Path(readme), Path(images)
    text, start, end = read_readme(readme)
    if not (out_dir / "report.md").is_file():
        raise BenchError(f"{out_dir / 'report.md'}: missing; run "
                         f"`python -m bench.report --out {out_dir}` first")
    results = load_results(out_dir)
    provenance = read_provenance(out_dir, results)
    folder = provenance.folder
    blocks = [*smoke_blocks(results),
              Paragraph(f"{provenance.sentence()} Refreshed by `python -m bench.report --out {folder} "
                        f"--readme {shown_path(readme)}`; the full report, with the method, is "
                        f"`{folder}/report.html`."),
              Heading(3, "Recommendation"), *recommendation_blocks(results, 4),
              Heading(3, "Findings"), *findings_blocks(results, 4),
              Heading(3, "Summary"), *summary_blocks(summary(results), results, 4), Heading(3, "Figures")]
    images.mkdir(parents=True, exist_ok=True)
    for task in results.tasks:
        for spec in (s for s in REGISTRY if s.readme):
            src = out_dir / "figures" / f"{task_stem(spec.stem, task)}.png"
            if src.is_file():  # a figure the data did not allow is left out, as in the report
                atomic_write(images / src.name, src.read_bytes())
                link = Path(os.path.relpath(images / src.name, readme.parent)).as_posix()
                blocks.append(Image(link, src.stem, f"{spec.title} ({task})."))
    section = markdown(blocks)
    atomic_write(readme, (text[:start + len(START)] + "\n" + section + text[end:]).encode("utf-8"))
