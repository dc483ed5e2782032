"""Named random streams: every random draw of the data room comes from a key of ints.

Two kinds, both pure functions of their key:
- ``stream(purpose, *key)``: a numpy Generator, for sequential draws (one per training batch).
  numpy's SeedSequence hashes the whole key, so distinct keys give independent streams. We avoid
  torch.Generator.manual_seed: it keeps only the low 32 bits, so packed keys would collide.
- ``keyed_uniforms(purpose, *key, index=..., count=...)``: ``count`` uniforms for each of many
  indices (scenes, images) in one vectorised call. A Generator per index costs ~20 us, as much
  as rendering the image; a counter-based hash costs nanoseconds per number.
"""
from __future__ import annotations

import functools
from typing import Sequence

import numpy as np
from numba import njit

# One purpose per first key element. Keys of a purpose always have the same length, because
# SeedSequence treats [a, b] and [a, b, 0] as the same key.
SCENE, ASPECT, BATCH = 1, 2, 3
SPLITS = {"train": 0, "test": 1}

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)   # splitmix64's increment: 2^64 / golden ratio


def stream(purpose: int, *key: int) -> np.random.Generator:
    return np.random.default_rng([purpose, *key])


@njit(cache=True)
def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: a bijection of uint64 whose every output bit depends on every input bit.
    Compiled, for uint64 arrays and scalars alike; uint64 arithmetic wraps by design."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


@functools.lru_cache(maxsize=256)
def _key_state(*key: int) -> int:
    """The splitmix64 state after absorbing the key parts one by one (a few keys recur all the time)."""
    for part in key:
        if not 0 <= part < 2 ** 63:
            raise ValueError(f"stream key parts must be in [0, 2^63), got {part}")
    state = np.zeros(1, np.uint64)
    for part in key:
        state = _mix(state + _GOLDEN + np.uint64(part))
    return int(state[0])


def keyed_uniforms(purpose: int, *key: int, index: Sequence[int] | np.ndarray, count: int) -> np.ndarray:
    """[len(index), count] float64 in [0, 1): row i depends only on (purpose, *key, index[i]).

    Each row is a splitmix64 sequence whose state is seeded by hashing the key and the index, so
    rows of different keys or indices are unrelated, and a row never depends on its batch-mates.
    """
    state = np.uint64(_key_state(purpose, *key))
    return _sequences(_mix(state ^ _mix(np.asarray(index, np.uint64) + _GOLDEN)), count)


@njit(cache=True)
def _sequences(rows: np.ndarray, count: int) -> np.ndarray:
    """Row i: the splitmix64 outputs of state rows[i], mapped to [0, 1) by their top 53 bits."""
    out = np.empty((rows.shape[0], count))
    for i in range(rows.shape[0]):
        for k in range(count):
            out[i, k] = (_mix(rows[i] + np.uint64(k + 1) * _GOLDEN) >> np.uint64(11)) * 2.0 ** -53
    return out
