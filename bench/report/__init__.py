"""The report: tables, figures, report.md and report.html from a results directory.

``write_report(out_dir, config, environment)`` is called by the runner at the end of every run
and by ``run_all.py --report-only``; ``update_readme`` (CLI: ``python -m bench.report``) copies
a run's summary and main figures into README.md. See docs/report.md for the outputs.
"""
from .build import write_report
from .readme import update_readme

__all__ = ["update_readme", "write_report"]
