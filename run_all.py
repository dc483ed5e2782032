#!/usr/bin/env python
"""NaViT Bench runner (placeholder until the runner lands): --list prints the variants."""
import sys

import bench

if __name__ == "__main__":
    if "--list" in sys.argv[1:]:
        print("\n".join(bench.list_variants()))
