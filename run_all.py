#!/usr/bin/env python
"""NaViT Bench runner. `python run_all.py --help`; docs/runner.md describes configs and results."""
import sys

from bench.cli import main

if __name__ == "__main__":
    sys.exit(main())
