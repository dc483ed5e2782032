"""The report: tables, figures, report.md and report.html from a results directory.

``write_report(out_dir)`` is called by the runner at the end of every run (with its config and
environment) and rebuilds the report from a results folder alone, reading the folder's config
(the part every cell stores, the rest from config.json); ``update_readme`` copies a run's summary and main figures into README.md;
``compare_runs(a, b)`` compares two runs cell by cell. CLI: ``python -m bench.report``. See
docs/report.md for the outputs.
"""
from .build import write_report
from .compare import compare_runs
from .readme import update_readme

__all__ = ["compare_runs", "update_readme", "write_report"]
