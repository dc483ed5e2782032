"""python -m bench.report --out DIR --readme README.md: refresh README's results section."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import BenchError
from .readme import DEFAULT_IMAGES, update_readme


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.report", description=__doc__)
    parser.add_argument("--out", type=Path, required=True, help="results directory of a run")
    parser.add_argument("--readme", type=Path, required=True,
                        help="README with <!-- results:start --> / <!-- results:end --> markers")
    parser.add_argument("--images", type=Path, default=DEFAULT_IMAGES,
                        help=f"where the figures are copied (default {DEFAULT_IMAGES})")
    args = parser.parse_args(argv)
    try:
        update_readme(args.out, args.readme, args.images)
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
