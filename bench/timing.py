"""What the side-by-side benchmarks share: timing alternated calls."""

from __future__ import annotations

import statistics
import time


def median_times(fns, repeats: int) -> list[float]:
    """Median wall time of each function; the runs alternate so that both see the same machine load."""
    times = [[] for _ in fns]
    for _ in range(repeats + 1):  # the first round warms up
        for fn, ts in zip(fns, times):
            t0 = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t0)
    return [statistics.median(ts[1:]) for ts in times]
