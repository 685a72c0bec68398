"""Counter-based random draws: every code is a pure function of (run seed, id).

A result therefore never depends on the number of workers, the batch size, the order of
batches or retries. Each id gets its own Philox stream, keyed by the run seed, starting at
counter block `id << 64` (far from any other id's blocks) in a domain of its own per
purpose: training samples are domain 0, test cases domain 1, so a test case never
repeats a training sample even under the same seed.
"""
from __future__ import annotations

import numpy as np


def check_seed(seed: int) -> int:
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0 or seed >= 2**63:
        raise ValueError(f"seed must be an integer in [0, 2**63), got {seed!r}")
    return int(seed)


SAMPLES, CASES = 0, 1  # code domains


def draw_codes(seed: int, ids, dim: int, domain: int = SAMPLES) -> np.ndarray:
    """Standard normal codes, float32 [len(ids), dim]; row i depends only on (seed, domain, ids[i])."""
    seed = check_seed(seed)
    ids = np.asarray(ids, dtype=np.int64)
    if ids.ndim != 1 or (ids < 0).any():
        raise ValueError("ids must be a 1-D array of non-negative integers")
    out = np.empty((len(ids), dim), dtype=np.float32)
    for row, i in enumerate(ids.tolist()):
        stream = np.random.Generator(np.random.Philox(key=seed, counter=[0, i, domain, 0]))
        out[row] = stream.standard_normal(dim, dtype=np.float32)
    return out
