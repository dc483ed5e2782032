"""python -m bench.report: redraw a run's report, refresh the README, or compare two runs.

  python -m bench.report --out DIR                     every table, figure, report.md/html of DIR
  python -m bench.report --out DIR --readme README.md  the same, then README's results section
  python -m bench.report --compare A B [--out-compare DIR]   B minus A, cell by cell

Exit status: 0 done; 2 bad input (a missing or malformed results folder, a README without its
markers), reported as one line on stderr with nothing written.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import BenchError
from .build import write_report
from .compare import compare_runs, default_folder
from .readme import DEFAULT_IMAGES, read_readme, update_readme


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line and exit status 2, like every other bad input
        raise BenchError(f"{message} (see --help)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m bench.report", description=__doc__,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    task = parser.add_mutually_exclusive_group(required=True)
    task.add_argument("--out", type=Path, metavar="DIR", help="results folder of a run: redraw its report")
    task.add_argument("--compare", type=Path, nargs=2, metavar=("A", "B"),
                      help="two results folders: tables and a figure of B minus A")
    parser.add_argument("--readme", type=Path,
                        help="with --out: also refresh this README between its "
                             "<!-- results:start --> / <!-- results:end --> markers")
    parser.add_argument("--images", type=Path, default=DEFAULT_IMAGES,
                        help=f"with --readme: where the figures are copied (default {DEFAULT_IMAGES})")
    parser.add_argument("--out-compare", type=Path, metavar="DIR",
                        help="with --compare: where to write (default B/compare_vs_<name of A>)")
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        if args.compare:
            if args.readme:
                raise BenchError("--readme goes with --out, not --compare")
            a, b = args.compare
            result = compare_runs(a, b, args.out_compare)
            print(result.markdown, end="")
            print(f"written to {args.out_compare or default_folder(a, b)}", file=sys.stderr)
            return 0
        if args.out_compare:
            raise BenchError("--out-compare goes with --compare, not --out")
        if args.readme:
            read_readme(args.readme)  # a README it cannot update fails before anything is written
        write_report(args.out)
        if args.readme:
            update_readme(args.out, args.readme, args.images)
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
