"""How long work takes on this machine, and its two physical rates: matmul FLOP/s and memory read bandwidth.

    watch = Stopwatch(); ...; watch.seconds()       # wall time since the watch started
    best_time(fn, repeats)                          # the fastest of `repeats` calls
    median_times([ours, theirs], repeats)           # calls alternated, so both see the same machine load
    matmul_gflops(torch.bfloat16)                   # GFLOP/s of a 2048² matmul in that dtype
    max(read_bandwidth().values())                  # bytes/s this machine can stream from memory

The benchmarks (bench/) and scripts (scripts/) time with these, and print a run's figures beside these rates: a
decode step cannot beat the read bandwidth ÷ the bytes of weights it reads, nor a prefill its matmul FLOPs ÷ the
matmul rate. A shared machine's speed drifts from run to run, so a rate measured in the same run is what a time is
compared with. All times are wall time (`time.perf_counter`); everything runs on the CPU.

The bottom layer: imports nothing from the package.
"""

from __future__ import annotations

import statistics
import time
from typing import Callable

import torch

MATMUL_SIZE = 2048  # n of the n×n matmul whose rate is quoted: large enough for BLAS to reach its full rate
READ_NUMEL = 2**28  # fp32 values read per pass by `read_bandwidth`: 1 GiB, far beyond any CPU cache
# Rows as long as the hidden size of a Qwen2-0.5B-sized LM: a decode step's access pattern (power-of-two widths
# read slower on some CPUs)
READ_ROW_WIDTH = 896


class Stopwatch:
    """Wall time since it was made: `watch = Stopwatch()`, then `watch.seconds()` as often as needed."""

    def __init__(self) -> None:
        self.start = time.perf_counter()

    def seconds(self) -> float:
        return time.perf_counter() - self.start


def run_times(fn: Callable[[], object], repeats: int) -> list[float]:
    """Wall time of each of `repeats` calls of `fn`, in order (no warm-up call: the caller makes one if needed)."""
    times = []
    for _ in range(repeats):
        watch = Stopwatch()
        fn()
        times.append(watch.seconds())
    return times


def best_time(fn: Callable[[], object], repeats: int) -> float:
    """The fastest of `repeats` calls: other jobs on a shared machine only ever slow a call down."""
    return min(run_times(fn, repeats))


def median_times(fns: list[Callable[[], object]], repeats: int) -> list[float]:
    """Median wall time of each function over `repeats` rounds after one warm-up round; each round calls every
    function once, in turn, so that all of them see the same machine load."""
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats + 1):  # the first round warms up
        for fn, ts in zip(fns, times):
            ts += run_times(fn, 1)
    return [statistics.median(ts[1:]) for ts in times]


def matmul_gflops(dtype: torch.dtype, n: int = MATMUL_SIZE, repeats: int = 5) -> float:
    """GFLOP/s of an n×n @ n×n matmul in `dtype` (2n³ FLOPs), the best of `repeats` after one warm-up call."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    return 2 * n**3 / best_time(lambda: a @ b, repeats) / 1e9


def read_bandwidth(repeats: int = 7, numel: int = READ_NUMEL, row_width: int = READ_ROW_WIDTH) -> dict[str, float]:
    """Bytes/s of reading `numel` fp32 values three ways, each the best of `repeats` after one warm-up call:
        sum             torch's sum over all of them
        compiled_rows   an inductor-compiled row reduction, (matrix * v).sum(-1) with rows `row_width` long (a
                        decode step's matrix-vector product as `torch.compile` fuses it)
        blas_fp32_gemv  BLAS's fp32 matrix-vector product over the same matrix
    The best of them is what this machine can stream. Each rate counts all `numel` values (the matrix drops the
    last `numel % row_width`). The compiled way needs a C++ compiler (inductor's)."""
    x = torch.empty(numel).normal_()
    v = torch.randn(row_width)
    matrix = x[: numel // row_width * row_width].view(-1, row_width)
    rows = torch.compile(lambda m, v: (m * v).sum(-1))
    ways = {"sum": lambda: x.sum(), "compiled_rows": lambda: rows(matrix, v),
            "blas_fp32_gemv": lambda: torch.mv(matrix, v)}
    rates = {}
    for name, read in ways.items():
        read()
        rates[name] = numel * 4 / best_time(read, repeats)
    return rates
