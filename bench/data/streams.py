"""Named random streams: every random draw of the data room comes from a key of ints.

numpy's SeedSequence hashes the whole key, so distinct keys give independent streams. We avoid
torch.Generator.manual_seed for this: it keeps only the low 32 bits of the seed, so keys packed
into one large int (seed, split, index) would collide.
"""
from __future__ import annotations

import numpy as np

# One purpose per first key element. Keys of a purpose always have the same length, because
# SeedSequence treats [a, b] and [a, b, 0] as the same key.
SCENE, ASPECT, BATCH = 1, 2, 3
SPLITS = {"train": 0, "test": 1}


def stream(purpose: int, *key: int) -> np.random.Generator:
    return np.random.default_rng([purpose, *key])
