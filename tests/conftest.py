"""Shared by the bad-input and fault tests: a tiny experiment and the real CLI that runs it."""
import sys
from pathlib import Path

import pytest

from bench.cli import main

REPO = Path(__file__).resolve().parents[1]
# 2 variants x 2 seeds; the 48 px eval images (up to 144 tokens) are longer than a 64-token row.
TINY = """\
name: tiny
data: {name: synthetic, task: abs_position, train_size: 256, test_size: 24}
model: {patch_size: 4, dim: 16, depth: 1, heads: 2}
variants: [nope, rope_axial]
seeds: [0, 1]
train: {steps: 30, tokens_per_batch: 128, max_seq_len: 64, lr: 0.003, warmup_steps: 2, checkpoint_every: 4,
        resolution: {mode: navit, min_side: 16, max_side: 24}}
eval: {grid: {sides: [8, 16, 24, 48], aspects: [0.5, 1.0, 2.0]}, tokens_per_batch: 1024, max_seq_len: 64}
"""


@pytest.fixture(scope="session")
def run_all() -> list[str]:
    """The command line that starts the real CLI in its own process."""
    return [sys.executable, str(REPO / "run_all.py")]


@pytest.fixture
def make_config(tmp_path):
    """make_config(**{old: new}) writes TINY with those replacements and returns its path."""
    def make(text: str = TINY, name: str = "tiny.yaml", **replace) -> Path:
        for old, new in replace.items():
            assert old in text, old
            text = text.replace(old, new)
        path = tmp_path / name
        path.write_text(text)
        return path
    return make


@pytest.fixture(scope="session")
def reference(tmp_path_factory) -> tuple[Path, Path]:
    """(config, results dir) of TINY run once, uninterrupted, in-process: what every interrupted
    or faulty run must end up equal to."""
    folder = tmp_path_factory.mktemp("reference")
    config = folder / "tiny.yaml"
    config.write_text(TINY)
    assert main(["--config", str(config), "--out", str(folder / "out")]) == 0
    return config, folder / "out"

