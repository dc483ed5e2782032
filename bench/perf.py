"""What packing saves: ``python -m bench.perf [--device cpu|cuda] [--dtype fp32|bf16] [--json PATH]``.

One standard mixed batch (64 images, H and W drawn independently from {64, 96, ..., 256} with a
seeded generator, a ViT-Ti/16) runs in six setups:

  padded     one image per row, padded to the batch's longest image; SDPA with the padding mask
  padded_hw  one image per row, every image padded to the batch's largest H and largest W, as a
             collate function pads pixels: the common baseline, which wastes more
  packed256  rows of 256 tokens filled greedily; SDPA with the block-diagonal mask
  packed512  the same with rows of 512 tokens
  grouped    images grouped by token count, each group a dense batch with no mask at all: the
             zero-waste bound (one optimizer step after accumulating the groups' gradients)
  flex256    packed256 with FlexAttention's document mask (CUDA only: no backward on CPU)

A train step is forward, backward and the optimizer step over the whole batch; an eval step is a
no-grad forward. The setups run interleaved, one step of each per round, so a slow spell of a
shared machine hits all of them alike: times are medians over the rounds after warm-up, and each
speedup is the median of its per-round ratios to padded. Packing (pack() from the image list) and
mask building are timed on their own and given as shares of the train step.

``--variants a,b,...`` times those positional embeddings instead, each against the first (list
rope_axial first), interleaved in the same way, on two batches: the standard one packed in rows of
256 at the model flags' size, and the --experiment's first training batch at its model size.

``--floor`` gives, instead, the least time the --experiment's cells could take on this machine:
their FLOPs (training and evaluation, split into matmuls and attention) at the matmul and attention
rates it measures, with everything else free. A run's wall time over its floor says how much of
it is not the arithmetic.

FLOPs are counted analytically: the matmuls (2 per multiply-add) and attention's two matmuls, a
train step being 3x the forward. "GFLOP/step" is what the kernels compute, padding and masked-out
attention included (SDPA computes every row's full L x L scores; flex skips 128 x 128 tiles that
share no image). "TFLOP/s" and MFU count only the useful work: real tokens and each image's own
n x n attention, so waste lowers them. MFU is against the device's dense bf16 peak.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import json
import shlex
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .errors import BenchError
from .model import NaViT, build_model
from .packing import PAD, PackedBatch, pack, pad_to_buckets
from .posembed import list_variants
from .runtime import REPO, device_name

SIDES = tuple(range(64, 257, 32))
NUM_CLASSES = 100
FLEX_BLOCK = 128
DEFAULT_EXPERIMENT = REPO / "experiments" / "default.yaml"
DATA_ROUNDS = 50   # timed rounds of the experiment-step measurement, at least

# Dense (no sparsity) bf16 tensor-core peaks from the vendors' data sheets, in TFLOP/s.
# First substring match on the device name wins, so specific names come first.
BF16_PEAK_TFLOPS = (
    ("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.0), ("H200", 989.0), ("B200", 2250.0),
    ("A100", 312.0), ("L40S", 362.0), ("L4", 121.0),
)

Batches = list[tuple[PackedBatch, Tensor]]


class OtherLoad:
    """Share of the machine's CPU time that other processes used while we ran (Linux only).

    Timings on a shared machine are only as good as this number is small."""

    def __enter__(self):
        self.start = self._busy_total(), time.process_time()
        return self

    def __exit__(self, *exc):
        (busy0, total0), mine0 = self.start
        (busy1, total1), mine1 = self._busy_total(), time.process_time()
        ticks = 100.0  # USER_HZ: /proc/stat counts in 1/100 s on Linux
        others = max(0.0, (busy1 - busy0) / ticks - (mine1 - mine0))
        self.share = others / ((total1 - total0) / ticks) if total1 > total0 else None

    @staticmethod
    def _busy_total() -> tuple[float, float]:
        try:
            fields = [float(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        except (OSError, ValueError):
            return 0.0, 0.0
        idle = fields[3] + fields[4]   # idle + iowait
        return sum(fields[:8]) - idle, sum(fields[:8])


def peak_tflops(device_name: str) -> float | None:
    return next((peak for key, peak in BF16_PEAK_TFLOPS if key in device_name), None)


def standard_batch(num_images: int, patch_size: int, seed: int, channels: int = 3) -> tuple[list[Tensor], Tensor]:
    """The benchmark's images (random pixels: content does not change the cost) and labels."""
    if any(side % patch_size for side in SIDES):
        raise BenchError(f"--patch {patch_size} must divide every side in {SIDES}")
    g = torch.Generator().manual_seed(seed)
    sides = torch.tensor(SIDES)[torch.randint(len(SIDES), (num_images, 2), generator=g)]
    images = [torch.rand(channels, h, w, generator=g) for h, w in sides.tolist()]
    return images, torch.randint(NUM_CLASSES, (num_images,), generator=g)


def grouped(images: list[Tensor], labels: Tensor, patch_size: int) -> Batches:
    """One dense batch per token count: each row is one whole image, so no mask is needed."""
    groups: dict[int, list[int]] = {}
    for i, image in enumerate(images):
        groups.setdefault((image.shape[1] // patch_size) * (image.shape[2] // patch_size), []).append(i)
    return [(pack([images[i] for i in idx], patch_size, one_per_row=True), labels[idx]) for idx in groups.values()]


@dataclass
class Setup:
    name: str
    make: Callable[[], Batches]     # packs the image list on the CPU: the timed packing cost
    attention: str = "sdpa"
    batches: Batches = field(default_factory=list)
    encode: Callable | None = None  # the compiled encoder it runs with, under --compile
    times: dict[str, list[float]] = field(default_factory=lambda: {k: [] for k in ("train", "eval", "pack", "mask")})


def setups_for(images, labels, patch_size: int, device: torch.device) -> list[Setup]:
    # Pixel padding to (max H, max W) makes every row that many tokens; where the padding sits in
    # the grid changes no cost, so padding each row's tail to that length times the same thing.
    hw_tokens = max(i.shape[1] for i in images) // patch_size * (max(i.shape[2] for i in images) // patch_size)
    setups = [
        Setup("padded", lambda: [(pack(images, patch_size, one_per_row=True), labels)]),
        Setup("padded_hw", lambda: [(pad_to_buckets(pack(images, patch_size, one_per_row=True), (len(images),),
                                                    (hw_tokens,)), labels)]),
        Setup("packed256", lambda: [(pack(images, patch_size, 256), labels)]),
        Setup("packed512", lambda: [(pack(images, patch_size, 512), labels)]),
        Setup("grouped", lambda: grouped(images, labels, patch_size)),
    ]
    if device.type == "cuda":
        setups.append(Setup("flex256", lambda: [(pack(images, patch_size, 256), labels)], attention="flex"))
    return setups


# ---- FLOPs ------------------------------------------------------------------------------------

def attention_pairs(batch: PackedBatch, kind: str) -> int:
    """(query, key) pairs scored per head and layer: 'useful' (each image with itself), 'dense'
    (every row's L x L) or 'blocks' (flex: whole 128 x 128 tiles holding a pair of one image)."""
    ids = batch.image_ids
    if kind == "useful":
        return int((torch.bincount(ids[ids != PAD]).long() ** 2).sum())
    if kind == "dense":
        return batch.num_rows * batch.row_len ** 2
    tiles = -(-batch.row_len // FLEX_BLOCK)
    # Codes: 0 past the row's end (in no pair), 1 padding (attends to padding), 2+ the images.
    codes = F.pad(ids + 2, (0, tiles * FLEX_BLOCK - batch.row_len), value=0)
    onehot = F.one_hot(codes, batch.num_images + 2)[..., 1:]
    present = onehot.reshape(batch.num_rows, tiles, FLEX_BLOCK, -1).amax(2).float()  # [R, tiles, codes]
    return int((present @ present.transpose(1, 2) > 0).sum()) * FLEX_BLOCK ** 2


def flop_parts(model: NaViT, batch: PackedBatch, kind: str) -> tuple[float, float]:
    """Forward FLOPs of one batch, (in the linear layers, patch embedding and head; in attention's
    two matmuls); kind as in attention_pairs ('useful' also skips padding)."""
    per_token = model.patch_embed.weight.numel() + sum(
        m.weight.numel() for m in model.blocks.modules() if isinstance(m, nn.Linear))
    dim, depth = model.head.in_features, len(model.blocks)
    tokens = batch.num_tokens if kind == "useful" else batch.num_rows * batch.row_len
    linear = 2 * per_token * tokens + 2 * model.head.weight.numel() * batch.num_images
    return linear, depth * 4 * dim * attention_pairs(batch, kind)


def forward_flops(model: NaViT, batches: Batches, kind: str) -> float:
    """Forward FLOPs of a list of batches (see flop_parts)."""
    return sum(sum(flop_parts(model, batch, kind)) for batch, _ in batches)


# ---- timing -----------------------------------------------------------------------------------

class Timer:
    def __init__(self, device: torch.device):
        self.device = device

    def __call__(self, fn: Callable[[], object]) -> float:
        self.sync()
        start = time.perf_counter()
        fn()
        self.sync()
        return time.perf_counter() - start

    def sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def train_step(model: NaViT, optimizer, batches: Batches, num_images: int, amp) -> None:
    model.train()
    optimizer.zero_grad(set_to_none=True)
    for batch, labels in batches:
        with amp():
            logits = model(batch)
        (F.cross_entropy(logits.float(), labels, reduction="sum") / num_images).backward()
    optimizer.step()


def eval_step(model: NaViT, batches: Batches, amp) -> None:
    model.eval()
    with torch.no_grad(), amp():
        for batch, _ in batches:
            model(batch)


def graph_count() -> int:
    from torch._dynamo.utils import counters
    return int(counters["stats"]["unique_graphs"])


def median_ratio(numerators: list[float], denominators: list[float]) -> float:
    return statistics.median(n / d for n, d in zip(numerators, denominators))


def environment(args) -> tuple[torch.device, str, Callable, str]:
    """The device, dtype, autocast context and device name that the flags ask for."""
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise BenchError("--device cuda: no CUDA device is visible to torch")
    dtype = args.dtype or ("bf16" if device.type == "cuda" else "fp32")
    if dtype == "bf16":
        amp = lambda: torch.autocast(device.type, dtype=torch.bfloat16)  # noqa: E731
    else:
        amp = contextlib.nullcontext
    return device, dtype, amp, device_name(device)


def run(args, command: str) -> dict:
    device, dtype, amp, name = environment(args)
    peak = args.peak_tflops or (peak_tflops(name) if device.type == "cuda" else None)

    images, labels = standard_batch(args.images, args.patch, args.seed)
    torch.manual_seed(args.seed)
    model = build_model(args.variant, NUM_CLASSES, args.patch, args.dim, args.depth, args.heads).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    timer = Timer(device)
    setups = setups_for(images, labels, args.patch, device)
    if args.compile:
        # Bucketed setups see a few static shapes. Grouped has one shape per token count (and
        # bucket padding would add the mask it exists to avoid), so it gets a dynamic-shape graph.
        torch._dynamo.config.recompile_limit = 64
        static, dynamic = (torch.compile(model.encode, dynamic=d) for d in (False, True))
        for s in setups:
            s.encode = dynamic if s.name == "grouped" else static
            if s.name != "grouped":
                s.make = lambda make=s.make: [(pad_to_buckets(b), y) for b, y in make()]
    for s in setups:
        s.batches = [(b.to(device), y.to(device)) for b, y in s.make()]

    def use(s: Setup) -> None:
        model.attention, model.compiled_encode = s.attention, s.encode

    compile_info = None
    if args.compile:
        started = time.perf_counter()
        for s in setups:
            use(s)
            timer(lambda: train_step(model, optimizer, s.batches, len(images), amp))
            timer(lambda: eval_step(model, s.batches, amp))
        compile_info = {"first_steps_s": time.perf_counter() - started, "graphs": graph_count()}

    with OtherLoad() as load:
        for round_ in range(args.warmup + args.steps):
            for s in setups:
                use(s)
                sample = {
                    "train": timer(lambda: train_step(model, optimizer, s.batches, len(images), amp)),
                    "eval": timer(lambda: eval_step(model, s.batches, amp)),
                    "pack": timer(s.make),
                    "mask": timer(lambda: [model.build_mask(b.image_ids) for b, _ in s.batches]),
                }
                if round_ >= args.warmup:
                    for key, value in sample.items():
                        s.times[key].append(value)
    if compile_info is not None:
        steady = sum(statistics.median(s.times["train"]) + statistics.median(s.times["eval"]) for s in setups)
        compile_info["compile_s"] = compile_info["first_steps_s"] - steady
        compile_info["recompiles_after_warmup"] = graph_count() - compile_info["graphs"]

    rows = [describe(s, setups[0], model, len(images), peak) for s in setups]
    result = {
        "command": command,
        "device": name, "device_type": device.type, "dtype": dtype,
        "threads": torch.get_num_threads(), "torch": torch.__version__,
        "settings": {k: v for k, v in vars(args).items() if k != "json"},
        "batch": {"images": len(images), "real_tokens": rows[0]["real_tokens"],
                  "longest_image_tokens": max((i.shape[1] // args.patch) * (i.shape[2] // args.patch) for i in images)},
        "peak_bf16_tflops": peak, "compile": compile_info, "other_load": load.share, "setups": rows,
    }
    # A small model's step takes milliseconds, not seconds: many rounds cost little and steady it.
    result["experiment_step"] = None if args.skip_data else experiment_step(
        Path(args.experiment), device, amp, max(args.steps, DATA_ROUNDS), max(args.warmup, 5))
    result["ratios"] = ratios(result)
    return result


def describe(s: Setup, padded: Setup, model: NaViT, num_images: int, peak: float | None) -> dict:
    med = {k: statistics.median(v) for k, v in s.times.items()}
    real = sum(b.num_tokens for b, _ in s.batches)
    slots = sum(b.image_ids.numel() for b, _ in s.batches)
    useful = 3 * forward_flops(model, s.batches, "useful")
    computed = 3 * forward_flops(model, s.batches, "blocks" if s.attention == "flex" else "dense")
    achieved = useful / med["train"]
    return {
        "setup": s.name,
        "shape": " + ".join(f"{b.num_rows}x{b.row_len}" for b, _ in s.batches) if len(s.batches) < 3
        else f"{len(s.batches)} groups",
        "real_tokens": real, "padding_fraction": 1 - real / slots,
        "train_s": med["train"], "eval_s": med["eval"], "pack_s": med["pack"], "mask_s": med["mask"],
        "pack_share": med["pack"] / med["train"], "mask_share": med["mask"] / med["train"],
        "real_tokens_per_s": real / med["train"], "images_per_s": num_images / med["train"],
        "train_speedup": median_ratio(padded.times["train"], s.times["train"]),
        "eval_speedup": median_ratio(padded.times["eval"], s.times["eval"]),
        "train_gflop_computed": computed / 1e9, "useful_tflops": achieved / 1e12,
        "mfu": achieved / (peak * 1e12) if peak else None,
        "samples": s.times,
    }


def median_time(device: torch.device, fn: Callable[[], object], seconds: float = 0.5) -> float:
    """Median seconds of ``fn`` over repeated timings, about ``seconds`` of them after warm-up."""
    timer = Timer(device)
    for _ in range(3):
        timer(fn)
    once = max(timer(fn), 1e-6)
    return statistics.median(timer(fn) for _ in range(max(5, min(200, int(seconds / once)))))


def matmul_rate(device: torch.device, m: int, k: int, n: int, seconds: float = 0.5) -> float:
    """FLOP/s of an fp32 [m, k] @ [k, n] product on this device and thread count. What the model's
    own matmuls could reach at best."""
    a, b = torch.randn(m, k, device=device), torch.randn(k, n, device=device)
    return 2 * m * k * n / median_time(device, lambda: a @ b, seconds)


@torch.no_grad()
def attention_rate(device: torch.device, images: int, heads: int, length: int, head_dim: int,
                   seconds: float = 0.5) -> float:
    """FLOP/s of fp32 SDPA without a mask on [images, heads, length, head_dim] (its two matmuls),
    on this device and thread count: whole images, the kernel's best case."""
    q, k, v = (torch.randn(images, heads, length, head_dim, device=device) for _ in range(3))
    flops = 4 * images * heads * length ** 2 * head_dim
    return flops / median_time(device, lambda: F.scaled_dot_product_attention(q, k, v), seconds)


def experiment_step(path: Path, device: torch.device, amp, steps: int, warmup: int) -> dict | None:
    """The experiment's own train step (its first variant, its model, its training batches), in
    useful GFLOP/s and as a share of this machine's measured matmul rate, and rendering + packing
    a training batch against that step."""
    if not path.exists():
        return None
    from .config import load_experiment
    from .data import TrainBatches, build_source
    from .plan import make_plan
    from .train import build_cell_model, make_optimizer

    experiment = load_experiment(path)
    variant = make_plan(experiment).variants[0]
    spec, m = variant.spec, experiment.model
    source = build_source(experiment.data, "train")
    train = experiment.train
    batches = TrainBatches(source, variant.resolution, train.token_drop, m.patch_size,
                           train.tokens_per_batch, train.max_seq_len, seed=0)
    model = build_cell_model(m, spec, source.num_classes, source.channels, seed=0).to(device)
    optimizer = make_optimizer(train, model)
    timer = Timer(device)
    data, step, flops = [], [], []
    for i in range(warmup + steps):
        start = time.perf_counter()
        batch, labels = batches[i]  # rendered and packed on the CPU, as a DataLoader worker would
        data_s = time.perf_counter() - start
        batch, labels = batch.to(device), labels.to(device)
        step_s = timer(lambda: train_step(model, optimizer, [(batch, labels)], labels.numel(), amp))
        if i >= warmup:
            data.append(data_s)
            step.append(step_s)
            flops.append(3 * forward_flops(model, [(batch, labels)], "useful"))
    tokens = train.tokens_per_batch
    hidden = int(m.dim * m.mlp_ratio)
    useful = statistics.median(flops) / statistics.median(step)
    at_shape, large = matmul_rate(device, tokens, m.dim, hidden), matmul_rate(device, 1024, 1024, 1024)
    return {"experiment": experiment.name, "variant": spec.label, "data_s": statistics.median(data),
            "train_s": statistics.median(step), "share": median_ratio(data, step),
            "useful_gflop": statistics.median(flops) / 1e9, "useful_gflops": useful / 1e9,
            "matmul_shape": [tokens, m.dim, hidden], "matmul_gflops_at_shape": at_shape / 1e9,
            "matmul_gflops_1024": large / 1e9, "share_of_matmul_rate": useful / large}


FLOOR_SAMPLE = 20   # training batches per (task, training resolution, seed) whose FLOPs stand for every step
FLOOR_RATE_ROUNDS = 3   # measurements of each kernel rate, the best kept


def experiment_floor(path: Path, device: torch.device) -> dict:
    """The least time the experiment's cells could take here: their FLOPs as the kernels compute
    them (padding and masked-out attention included; a train step 3x its forward), every matmul at
    the fp32 matmul rate measured here (the better of the model's shape and 1024^3), all attention
    at SDPA's rate on the experiment's largest eval image, and everything else free: GELU, norms,
    the optimizer, embeddings, start-up and the report."""
    from .config import load_experiment
    from .data import TrainBatches, build_source
    from .evaluate import EvalSet
    from .plan import make_plan
    from .train import build_cell_model

    experiment = load_experiment(path)   # a missing or bad file: BenchError naming it
    plan, m, data = make_plan(experiment), experiment.model, experiment.data
    cells = plan.cells()
    task_of = dict(zip(plan.tasks, data.tasks))
    source = functools.cache(lambda task, split: build_source(data, split, task_of[task]))
    first = source(plan.tasks[0], "train")
    model = build_cell_model(m, plan.variants[0].spec, first.num_classes, first.channels, seed=0)
    train_step, evaluation = {}, {}
    totals = {"train": [0.0, 0.0], "eval": [0.0, 0.0]}   # (linear, attention) FLOPs
    for cell in cells:
        t = cell.train
        key = (cell.task, repr(cell.variant.resolution), cell.seed)
        if key not in train_step:
            batches = TrainBatches(source(cell.task, "train"), cell.variant.resolution,
                                   t.token_drop, m.patch_size, t.tokens_per_batch, t.max_seq_len, seed=cell.seed)
            sample = [flop_parts(model, batches[i][0], "dense") for i in range(min(FLOOR_SAMPLE, t.steps))]
            train_step[key] = [sum(part) / len(sample) for part in zip(*sample)]
        sizes = tuple(point.size for point in cell.eval_points)
        if (cell.task, sizes) not in evaluation:
            eval_set = EvalSet(source(cell.task, "test"), m.patch_size, experiment.eval, keep=False)
            parts = [flop_parts(model, batch, "dense") for size in sizes for batch, _ in eval_set.batches(size)]
            evaluation[(cell.task, sizes)] = [sum(part) for part in zip(*parts)]
        for j in range(2):
            totals["train"][j] += 3 * t.steps * train_step[key][j]
            totals["eval"][j] += evaluation[(cell.task, sizes)][j]
    longest = max((h // m.patch_size) * (w // m.patch_size) for h, w in plan.sizes)
    images = max(1, experiment.eval.tokens_per_batch // longest)
    hidden = int(m.dim * m.mlp_ratio)
    # The best of a few measurements: a floor wants the machine's rate, not a busy spell's.
    matmul = max(rate for _ in range(FLOOR_RATE_ROUNDS) for rate in (
        matmul_rate(device, experiment.train.tokens_per_batch, m.dim, hidden), matmul_rate(device, 1024, 1024, 1024)))
    attention = max(attention_rate(device, images, m.heads, longest, m.dim // m.heads) for _ in range(FLOOR_RATE_ROUNDS))
    linear, attended = (sum(totals[stage][j] for stage in totals) for j in range(2))
    return {"experiment": experiment.name, "cells": len(cells), "threads": torch.get_num_threads(),
            "train_tflop": [x / 1e12 for x in totals["train"]], "eval_tflop": [x / 1e12 for x in totals["eval"]],
            "matmul_gflops": matmul / 1e9, "attention_gflops": attention / 1e9,
            "attention_shape": [images, m.heads, longest, m.dim // m.heads],
            "floor_s": linear / matmul + attended / attention}


def floor_summary(f: dict) -> str:
    """experiment_floor's result in one paragraph."""
    (train_linear, train_attention), (eval_linear, eval_attention) = f["train_tflop"], f["eval_tflop"]
    total = train_linear + train_attention + eval_linear + eval_attention
    return (f"{f['experiment']}: {f['cells']} cells compute {total:.2f} TFLOP (training {train_linear:.2f} in "
            f"matmuls + {train_attention:.2f} in attention; evaluation {eval_linear:.2f} + {eval_attention:.2f}). "
            f"At this machine's measured rates with {f['threads']} threads (fp32 matmul {f['matmul_gflops']:.0f} "
            f"GFLOP/s; SDPA {f['attention_gflops']:.0f} GFLOP/s on {' x '.join(map(str, f['attention_shape']))}, "
            f"its largest eval images), that is at least {f['floor_s']:.0f} s, with everything else free.")


@dataclass
class VariantBench:
    """A batch every variant of --variants runs on, at one model size."""
    name: str
    batches: Batches
    model: dict   # build_model's keyword arguments, the variant aside
    models: dict[str, tuple[NaViT, torch.optim.Optimizer]] = field(default_factory=dict)
    times: dict[str, dict[str, list[float]]] = field(default_factory=dict)


def variant_benches(args) -> list[VariantBench]:
    images, labels = standard_batch(args.images, args.patch, args.seed)
    size = dict(num_classes=NUM_CLASSES, patch_size=args.patch, dim=args.dim, depth=args.depth, heads=args.heads)
    benches = [VariantBench("standard batch", [(pack(images, args.patch, 256), labels)], size)]
    path = Path(args.experiment)
    if not args.skip_data and path.exists():
        from .config import load_experiment
        from .data import TrainBatches, build_source
        experiment = load_experiment(path)
        source, train, m = build_source(experiment.data, "train"), experiment.train, experiment.model
        batches = TrainBatches(source, train.resolution, train.token_drop, m.patch_size, train.tokens_per_batch,
                               train.max_seq_len, seed=0)
        size = dict(num_classes=source.num_classes, channels=source.channels, patch_size=m.patch_size, dim=m.dim,
                    depth=m.depth, heads=m.heads, mlp_ratio=m.mlp_ratio, pool=m.pool)
        benches.append(VariantBench(f"{experiment.name}'s training batch", [batches[0]], size))
    return benches


def run_variants(args, command: str) -> dict:
    """Each variant's train and eval step on each bench, all interleaved: one step of each per round."""
    device, dtype, amp, dev_name = environment(args)
    unknown = [name for name in args.variants if name not in list_variants()]
    if unknown or not args.variants:
        raise BenchError(f"--variants: unknown {', '.join(unknown) or 'empty list'}; "
                         f"valid: {', '.join(list_variants())}")
    timer = Timer(device)
    benches = variant_benches(args)
    for bench in benches:
        bench.batches = [(b.to(device), y.to(device)) for b, y in bench.batches]
        for name in args.variants:
            torch.manual_seed(args.seed)
            model = build_model(name, **bench.model).to(device)
            bench.models[name] = model, torch.optim.AdamW(model.parameters(), lr=1e-4)
            bench.times[name] = {"train": [], "eval": []}
    with OtherLoad() as load:
        for round_ in range(args.warmup + args.steps):
            for bench in benches:
                images = sum(len(y) for _, y in bench.batches)
                for name, (model, optimizer) in bench.models.items():
                    sample = {"train": timer(lambda: train_step(model, optimizer, bench.batches, images, amp)),
                              "eval": timer(lambda: eval_step(model, bench.batches, amp))}
                    if round_ >= args.warmup:
                        for key, value in sample.items():
                            bench.times[name][key].append(value)
    reference = args.variants[0]
    return {
        "command": command, "device": dev_name, "device_type": device.type, "dtype": dtype,
        "threads": torch.get_num_threads(), "torch": torch.__version__,
        "settings": {k: v for k, v in vars(args).items() if k != "json"}, "other_load": load.share,
        "reference": reference,
        "benches": [{"bench": bench.name, "model": {k: v for k, v in bench.model.items() if k != "num_classes"},
                     "shape": " + ".join(f"{b.num_rows}x{b.row_len}" for b, _ in bench.batches),
                     "variants": [{"variant": name, "train_s": statistics.median(t["train"]),
                                   "eval_s": statistics.median(t["eval"]),
                                   "train_ratio": median_ratio(t["train"], bench.times[reference]["train"]),
                                   "eval_ratio": median_ratio(t["eval"], bench.times[reference]["eval"]),
                                   "train_mask_bytes": bias_mask_bytes(bench.models[name][0], bench.batches),
                                   "samples": t}
                                  for name, t in bench.times.items()]}
                    for bench in benches],
    }


def bias_mask_bytes(model: NaViT, batches: Batches) -> int | None:
    """The largest float mask ([rows, heads, L', L'], fp32) a relative bias builds in a train step:
    whole, since autograd keeps it for the backward. None for the other kinds."""
    if model.pos.kind != "bias":
        return None
    with torch.no_grad():
        shapes = [model.embed(b)[1].shape for b, _ in batches]
    return max(4 * model.pos.heads * rows * length ** 2 for rows, length in shapes)


def ratios(result: dict) -> dict:
    by_name = {row["setup"]: row for row in result["setups"]}
    packed, grouped_row = by_name["packed256"], by_name["grouped"]
    pipeline = result["experiment_step"]
    return {
        "packed256_train_speedup": packed["train_speedup"],
        "packed256_train_speedup_over_padded_hw": median_ratio(by_name["padded_hw"]["samples"]["train"],
                                                               packed["samples"]["train"]),
        # What the speedup would be if time followed the computed FLOPs.
        "packed256_flop_bound": by_name["padded"]["train_gflop_computed"] / packed["train_gflop_computed"],
        "packed256_over_grouped_train_time": median_ratio(packed["samples"]["train"], grouped_row["samples"]["train"]),
        "packed256_mask_and_pack_share": packed["pack_share"] + packed["mask_share"],
        "data_pipeline_share": pipeline["share"] if pipeline else None,
    }


# ---- output -----------------------------------------------------------------------------------

def table(result: dict) -> str:
    on_gpu = result["device_type"] == "cuda"
    head = ["setup", "rows x len", "padding", "train ms", "eval ms", "real tok/s", "images/s", "pack",
            "mask", "train speedup", "eval speedup", "GFLOP/step", "useful TFLOP/s"] + (["MFU"] if on_gpu else [])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in result["setups"]:
        cells = [r["setup"], r["shape"], f"{r['padding_fraction']:.1%}", f"{r['train_s'] * 1e3:.0f}",
                 f"{r['eval_s'] * 1e3:.0f}", f"{r['real_tokens_per_s']:,.0f}", f"{r['images_per_s']:.1f}",
                 f"{r['pack_share']:.2%}", f"{r['mask_share']:.2%}", f"{r['train_speedup']:.2f}x",
                 f"{r['eval_speedup']:.2f}x", f"{r['train_gflop_computed']:.1f}", f"{r['useful_tflops']:.3f}"]
        if on_gpu:
            cells.append("-" if r["mfu"] is None else f"{r['mfu']:.1%}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def summary(result: dict) -> str:
    s, t, b = result["settings"], result["ratios"], result["batch"]
    lines = [
        f"{result['command']}",
        f"device: {result['device']} ({result['device_type']}, threads: {result['threads']}), torch {result['torch']}, "
        f"{result['dtype']}; model: {s['variant']} dim {s['dim']} depth {s['depth']} heads {s['heads']} "
        f"patch {s['patch']}; batch: {b['images']} images, {b['real_tokens']} real tokens, longest "
        f"{b['longest_image_tokens']} (seed {s['seed']}); median of {s['steps']} interleaved rounds "
        f"after {s['warmup']} warm-up; other processes used "
        f"{'?' if result['other_load'] is None else format(result['other_load'], '.0%')} of the CPU meanwhile",
        "",
        table(result),
        "",
        f"packed256 train speedup over padded: {t['packed256_train_speedup']:.2f}x "
        f"({t['packed256_flop_bound']:.2f}x if time followed the computed FLOPs); over padded_hw: "
        f"{t['packed256_train_speedup_over_padded_hw']:.2f}x",
        f"packed256 train time / grouped: {t['packed256_over_grouped_train_time']:.3f}",
        f"mask + packing: {t['packed256_mask_and_pack_share']:.2%} of the packed256 train step",
    ]
    p = result["experiment_step"]
    if p:
        lines += [
            f"{p['experiment']}'s train step ({p['variant']}): {p['train_s'] * 1e3:.1f} ms for "
            f"{p['useful_gflop']:.2f} useful GFLOP, {p['useful_gflops']:.0f} GFLOP/s, "
            f"{p['share_of_matmul_rate']:.0%} of this machine's measured fp32 matmul rate "
            f"({p['matmul_gflops_1024']:.0f} GFLOP/s at 1024^3; {p['matmul_gflops_at_shape']:.0f} at the model's "
            f"{' x '.join(map(str, p['matmul_shape']))})",
            f"data pipeline: rendering + packing one of its training batches takes {p['data_s'] * 1e3:.2f} ms, "
            f"{p['share']:.1%} of that step"]
    else:
        lines.append(f"experiment step: not measured (--skip-data, or no {s['experiment']})")
    c = result["compile"]
    if c:
        lines.append(f"torch.compile: {c['compile_s']:.1f} s compiling (first steps minus steady ones), "
                     f"{c['graphs']} graphs, {c['recompiles_after_warmup']} recompiles after warm-up")
    return "\n".join(lines)


def variants_summary(result: dict) -> str:
    s, reference = result["settings"], result["reference"]
    lines = [result["command"],
             f"device: {result['device']} ({result['device_type']}, threads: {result['threads']}), torch "
             f"{result['torch']}, {result['dtype']}; median of {s['steps']} interleaved rounds after {s['warmup']} "
             f"warm-up, ratios the median of per-round ratios to {reference}; other processes used "
             f"{'?' if result['other_load'] is None else format(result['other_load'], '.0%')} of the CPU meanwhile"]
    for bench in result["benches"]:
        m = bench["model"]
        lines += ["", f"{bench['bench']} ({bench['shape']} tokens), patch {m['patch_size']} dim {m['dim']} depth "
                      f"{m['depth']} heads {m['heads']}:",
                  f"| variant | train ms | eval ms | train / {reference} | eval / {reference} "
                  "| float mask MiB (train) |",
                  "|---|---|---|---|---|---|"]
        for r in bench["variants"]:
            mask = "-" if r["train_mask_bytes"] is None else f"{r['train_mask_bytes'] / 2 ** 20:.2f}"
            lines.append(f"| {r['variant']} | {r['train_s'] * 1e3:.1f} | {r['eval_s'] * 1e3:.1f} | "
                         f"{r['train_ratio']:.2f} | {r['eval_ratio']:.2f} | {mask} |")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.perf", description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--dtype", choices=("fp32", "bf16"), help="bf16 autocast (default: bf16 on cuda, fp32 on cpu)")
    parser.add_argument("--json", help="also write every number and raw sample here")
    parser.add_argument("--compile", action="store_true", help="torch.compile the transformer blocks, rows and "
                                                               "lengths padded to buckets; reports compile time")
    parser.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice, one per core)")
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--variant", default="factorized_abs_learned")
    parser.add_argument("--variants", type=lambda text: [v for v in text.split(",") if v],
                        help="comma-separated variants to time against the first, instead of the setups")
    parser.add_argument("--patch", type=int, default=16)
    parser.add_argument("--dim", type=int, default=192)
    parser.add_argument("--depth", type=int, default=6)
    parser.add_argument("--heads", type=int, default=3)
    parser.add_argument("--steps", type=int, default=7, help="timed rounds (default: %(default)s)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed rounds first (default: %(default)s)")
    parser.add_argument("--peak-tflops", type=float, help="bf16 peak for MFU when the device is not in the table")
    parser.add_argument("--experiment", default=str(DEFAULT_EXPERIMENT),
                        help="experiment whose training batch and step the data pipeline (and --variants) is "
                             "timed on (default: %(default)s)")
    parser.add_argument("--floor", action="store_true", help="instead of the setups, the least time the "
                        "--experiment's cells could take on this machine, from their FLOPs and measured kernel rates")
    parser.add_argument("--skip-data", action="store_true", help="skip the data-pipeline measurement (and "
                                                                 "--variants' experiment batch)")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    try:
        if args.images < 1 or args.steps < 1 or args.warmup < 0 or (args.threads is not None and args.threads < 1):
            raise BenchError("--images, --steps and --threads must be >= 1, --warmup >= 0")
        if args.floor and args.variants is not None:
            raise BenchError("--floor and --variants are two modes: give one")
        command = "python -m bench.perf " + shlex.join(argv)
        if args.floor:
            device = environment(args)[0]
            result = {"command": command, **experiment_floor(Path(args.experiment), device)}
            text = floor_summary(result)
        elif args.variants is not None:
            result = run_variants(args, command)
            text = variants_summary(result)
        else:
            result = run(args, command)
            text = summary(result)
    except BenchError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(text)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
