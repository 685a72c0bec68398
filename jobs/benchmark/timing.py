"""The one timer every benchmark uses: a warm-up call, then images per second."""
from __future__ import annotations

import time


def images_per_second(run, images: int, warm_up=None) -> float:
    """Images/s of `run()` producing `images` images, after `warm_up()` (default: run once)."""
    (warm_up or run)()
    started = time.perf_counter()
    run()
    return images / (time.perf_counter() - started)


def sustained_rate(step, batch_size: int, seconds: float) -> float:
    """Images/s of `step()` (one batch), after a warm-up call, over at least `seconds` and 3 calls."""
    step()
    started, batches = time.perf_counter(), 0
    while True:
        step()
        batches += 1
        elapsed = time.perf_counter() - started
        if elapsed >= seconds and batches >= 3:
            return batches * batch_size / elapsed


def seconds_of(run) -> tuple[float, object]:
    """(wall seconds, result) of one call."""
    started = time.perf_counter()
    result = run()
    return time.perf_counter() - started, result
