"""Counter-based random numbers: every number is a hash of (seed, index, stream, draw).

A sequential generator would make image 500 depend on how many numbers images 0..499 used, so
a different batch size or generating a subset would change the pixels. Hashing a key instead
(the idea behind Philox and JAX's PRNG) gives each image its own numbers, computed for a whole
batch at once: the same image comes out of any batch, in any order, on any machine.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)

# A renderer's source of numbers: (purpose, count) -> (N, count) keyed uniform numbers, one row per image.
Draws = Callable[[int, int], np.ndarray]


def _mix(z: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser: scrambles 64-bit integers so that nearby inputs look unrelated."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def keyed_uniform(seed: int, indices: np.ndarray, stream: int, count: int) -> np.ndarray:
    """Uniform numbers in [0, 1), shape ``(len(indices), count)``, a pure function of the key.

    Row ``i`` holds draws ``0 .. count-1`` of ``(seed, indices[i], stream)``; asking for more
    draws later gives the same first ``count`` numbers.
    """
    indices = np.asarray(indices, dtype=np.int64).reshape(-1).astype(np.uint64)
    with np.errstate(over="ignore"):  # wrap-around multiplication is the point of a hash
        key = _mix(np.full(indices.shape, np.uint64(seed % 2**64)) + _GOLDEN)
        key = _mix(key ^ indices)
        key = _mix(key ^ np.uint64(stream % 2**64))
        draws = (np.arange(1, count + 1, dtype=np.uint64) * _GOLDEN)[None, :]
        bits = _mix(key[:, None] + draws)
    return (bits >> np.uint64(11)).astype(np.float64) * (1.0 / 2**53)
