"""Parameter count of every variant (dim 64, depth 2) and its worst packed-vs-alone logit gap.

    python scripts/packing_parity.py
"""
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import bench  # noqa: E402

SIZES = [(8, 8), (16, 24), (8, 56), (24, 136), (128, 40), (40, 64)]


def main() -> None:
    torch.manual_seed(0)
    images = [torch.randn(3, h, w) for h, w in SIZES]
    print("| variant | parameters | max abs(packed - alone) |\n|---|---:|---:|")
    for variant in bench.list_variants():
        model = bench.build_model(variant, num_classes=10, patch_size=8, dim=64, depth=2, heads=4).eval()
        with torch.no_grad():
            alone = torch.cat([model([image]) for image in images])
            gap = max((model(images, max_seq_len=row) - alone).abs().max().item() for row in (32, 64, 256))
        print(f"| {variant} | {sum(p.numel() for p in model.parameters()):,} | {gap:.1e} |")


if __name__ == "__main__":
    main()
