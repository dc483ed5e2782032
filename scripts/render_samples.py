#!/usr/bin/env python
"""Sample grids of the synthetic tasks for the README, and the data room's measurements.

    python scripts/render_samples.py            # writes docs/images/samples_<task>.png
    python scripts/render_samples.py --measure  # rendering throughput and padding of default batches
    python scripts/render_samples.py --measure --config experiments/default.yaml   # ... and of its batches

Each grid shows the same test scenes (columns) rendered natively at three sides and two aspect
ratios (rows), upscaled with nearest-neighbour so every rendered pixel stays visible.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.config import TASKS, DataConfig, DropConfig, ResolutionConfig  # noqa: E402
from bench.data import SyntheticSource, TrainBatches, aspect_size, build_source  # noqa: E402

OUT = Path(__file__).resolve().parents[1] / "docs" / "images"
SIDES = (32, 64, 128)
ASPECTS = (2.0, 0.5)   # W / H: wide, then tall
SCENES = 5
PATCH = 8


def sample_grid(task: str, path: Path) -> None:
    source = SyntheticSource(task, "test", SCENES)
    rows = [(side, aspect) for aspect in ASPECTS for side in SIDES]
    heights = [1.0 if aspect > 1 else 2.0 for _, aspect in rows]
    fig, axes = plt.subplots(len(rows), SCENES, figsize=(2.0 * SCENES, sum(heights) + 0.6),
                             gridspec_kw={"height_ratios": heights}, squeeze=False)
    for r, (side, aspect) in enumerate(rows):
        height, width = aspect_size(side, aspect, PATCH)
        images, labels = source.load_many(range(SCENES), (height, width))
        for c, (image, label) in enumerate(zip(images, labels)):
            ax = axes[r][c]
            ax.imshow(image.permute(1, 2, 0).numpy(), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(source.class_names[label], fontsize=9)
            if c == 0:
                ax.set_ylabel(f"{height}x{width}", fontsize=9)
    fig.suptitle(f"{task}: test scenes 0-{SCENES - 1} at sqrt(HW) = {', '.join(map(str, SIDES))} px, "
                 f"W/H = 2 and 1/2", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def throughput(task: str, size: tuple[int, int], batch: int = 64, repeats: int = 5) -> float:
    """Images per second of load_many (scene sampling + rendering), best of `repeats`.

    64 scenes a call is about what evaluation renders at once; much larger calls at 256x128 are
    slower per image, bound by first-touching the fresh output memory.
    """
    source = SyntheticSource(task, "train", batch * (repeats + 1))
    source.load_many(range(batch), size)   # warm-up
    best = min(_timed(lambda k=k: source.load_many(range(k * batch, (k + 1) * batch), size))
               for k in range(1, repeats + 1))
    return batch / best


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def measure(configs: list[str]) -> None:
    print(f"torch {torch.__version__}")
    # One thread is what a DataLoader worker gets; tiny ops also stall less on a busy machine.
    for threads in dict.fromkeys([torch.get_num_threads(), 1]):
        torch.set_num_threads(threads)
        for size in [(64, 64), (256, 128)]:
            rates = {task: throughput(task, size) for task in TASKS}
            print(f"{threads} thread(s), rendering {size[0]}x{size[1]}, 64 scenes a call: "
                  + ", ".join(f"{t} {r:,.0f} img/s" for t, r in rates.items()))

    padding_report("data defaults", DataConfig(), ResolutionConfig(), DropConfig(),
                   dict(patch_size=PATCH, tokens_per_batch=4096, max_seq_len=256))
    for path in configs:
        raw = yaml.safe_load(Path(path).read_text())
        train = raw.get("train", {})
        padding_report(path, DataConfig(**raw.get("data", {})), ResolutionConfig(**train.get("resolution", {})),
                       DropConfig(**train.get("token_drop", {})),
                       dict(patch_size=raw.get("model", {}).get("patch_size", PATCH),
                            tokens_per_batch=train["tokens_per_batch"], max_seq_len=train["max_seq_len"]))


def padding_report(name: str, data: DataConfig, resolution: ResolutionConfig, drop: DropConfig,
                   settings: dict) -> None:
    print(f"training batches of {name}: {data.name} {data.task}, {resolution}, {drop}, {settings}")
    batches = TrainBatches(build_source(data, "train"), resolution, drop, seed=0, **settings)
    padding, tokens, images, seconds = [], [], [], []
    for step in range(100):
        start = time.perf_counter()
        batch, _ = batches[step]
        seconds.append(time.perf_counter() - start)
        padding.append(batch.padding_fraction)
        tokens.append(batch.num_tokens)
        images.append(batch.num_images)
    print(f"  over 100 steps: padding {statistics.mean(padding):.2%} (max {max(padding):.2%}), "
          f"{statistics.mean(tokens):.0f} tokens and {statistics.mean(images):.1f} images per batch, "
          f"{statistics.median(seconds) * 1000:.2f} ms per batch (median)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--measure", action="store_true", help="print throughput and padding instead")
    parser.add_argument("--config", action="append", default=[],
                        help="with --measure: also the padding of this experiment YAML's training batches")
    args = parser.parse_args()
    if args.measure:
        measure(args.config)
        return
    OUT.mkdir(parents=True, exist_ok=True)
    for task in TASKS:
        path = OUT / f"samples_{task}.png"
        sample_grid(task, path)
        print(f"wrote {path.relative_to(OUT.parents[1])}")


if __name__ == "__main__":
    main()
