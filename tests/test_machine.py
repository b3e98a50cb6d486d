"""The timing helpers and machine rates that bench/ and scripts/ share, on small sizes: real numbers, not mocks."""

from __future__ import annotations

import math
import statistics
import time

import torch

from qwen2audio.machine import Stopwatch, best_time, matmul_gflops, median_times, read_bandwidth, run_times

NAP = 0.002  # seconds a timed call sleeps: time.sleep never returns early


def nap() -> None:
    time.sleep(NAP)


def test_stopwatch_counts_wall_time_from_its_start():
    watch = Stopwatch()
    first = watch.seconds()
    nap()
    second = watch.seconds()
    assert 0 <= first < second and second >= NAP and math.isfinite(second)


def test_run_times_best_and_median_are_real_wall_times():
    times = run_times(nap, 5)
    assert len(times) == 5 and all(NAP <= t < 1.0 for t in times)
    assert min(times) <= statistics.median(times)
    assert NAP <= best_time(nap, 3) < 1.0


def test_best_time_is_the_fastest_call():
    naps = iter([0.03, NAP, 0.03])
    assert NAP <= best_time(lambda: time.sleep(next(naps)), 3) < 0.03


def test_median_times_alternate_and_skip_the_warm_up_round():
    calls = []
    short = lambda: calls.append("short")  # noqa: E731
    long = lambda: (calls.append("long"), time.sleep(10 * NAP))  # noqa: E731
    t_short, t_long = median_times([short, long], 3)
    assert calls == ["short", "long"] * 4  # one warm-up round, then 3, each calling both in turn
    assert 0 < t_short < t_long and t_long >= 10 * NAP


def test_matmul_gflops_is_a_positive_finite_rate():
    for dtype in (torch.float32, torch.bfloat16):
        rate = matmul_gflops(dtype, n=128, repeats=2)
        assert math.isfinite(rate) and rate > 0


def test_read_bandwidth_reads_three_ways():
    rates = read_bandwidth(repeats=2, numel=2**20)
    assert set(rates) == {"sum", "compiled_rows", "blas_fp32_gemv"}
    assert all(math.isfinite(r) and 1e6 < r < 1e14 for r in rates.values())  # bytes/s: above 1 MB/s, below 100 TB/s
