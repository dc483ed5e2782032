"""Position matters: a tiny ViT with positions learns abs_position, the same ViT without cannot.

abs_position is purely positional (9 cells, chance 1/9): a model that sees only a bag of patches
must stay at chance, while one with positional information must clear it by far (rope_axial
reaches about 50% in these 300 steps). Fixed seeds make the run deterministic; the thresholds
leave a wide margin on both sides.
"""
import pytest
import torch

import bench
from bench.config import DataConfig, DropConfig, ResolutionConfig
from bench.data import TrainBatches, build_source, eval_batches, train_loader

STEPS = 300
CHANCE = 1 / 9


def train_and_score(variant: str) -> float:
    torch.manual_seed(0)
    train = build_source(DataConfig(task="abs_position"), "train")
    test = build_source(DataConfig(task="abs_position", test_size=300), "test")
    batches = TrainBatches(train, ResolutionConfig(min_side=32, max_side=64), DropConfig(), patch_size=8,
                           tokens_per_batch=1024, max_seq_len=256, seed=0)
    model = bench.build_model(variant, train.num_classes, patch_size=8, dim=64, depth=2, heads=4)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=3e-3, total_steps=STEPS, pct_start=0.1)
    for batch, labels in train_loader(batches, 0, STEPS):
        loss = torch.nn.functional.cross_entropy(model(batch), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()

    model.eval()
    correct = total = 0
    with torch.no_grad():
        for size in [(48, 48), (32, 64)]:   # a training size, square and 1:2
            for batch, labels in eval_batches(test, size, 8, tokens_per_batch=4096, max_seq_len=256):
                correct += int((model(batch).argmax(1) == labels).sum())
                total += len(labels)
    return correct / total


def test_a_model_with_positions_learns_abs_position():
    assert train_and_score("rope_axial") > 3 * CHANCE


def test_a_model_without_positions_stays_at_chance_on_abs_position():
    assert train_and_score("nope") == pytest.approx(CHANCE, abs=0.08)
