"""Throughput of `qwen2audio synth`: clips/s and audio-hours per hour, per task family and for the whole mix.

    .venv/bin/python bench/bench_synth.py [--clips 400] [--workers N] [--tasks asr:8,noisy_asr:2,...]
                                         [--families names cmn_asr ...]

Each family is generated alone with one worker (its cost per clip), then the mix (`--tasks`, weighted as for
`qwen2audio synth`; default: all families alike) with `--workers` processes (default: all cores) into a fresh
temporary folder; the time includes the FLAC writes, the engines' start-up and the manifests.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from qwen2audio.machine import Stopwatch
from qwen2audio.synth import TASKS, generate, resolve
from qwen2audio.synth.corpus import default_workers


def timed(tasks, clips: int, workers: int) -> tuple[float, float]:
    """(clips per second, hours of audio made per hour of wall time)."""
    with tempfile.TemporaryDirectory() as tmp:
        watch = Stopwatch()
        info = generate(resolve(tasks, None, clips=clips, seed=0), Path(tmp), workers=workers)
        seconds = watch.seconds()
    hours = sum(s["hours"] for s in info["splits"].values())
    return clips / seconds, hours * 3600 / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=400, help="clips of the full mix (a tenth per family)")
    parser.add_argument("--workers", type=int, default=default_workers())
    parser.add_argument("--tasks", nargs="+", help="the mix, NAME[:WEIGHT] items (default: every family once)")
    parser.add_argument("--mix-only", action="store_true", help="skip the per-family lines")
    parser.add_argument("--families", nargs="+", choices=list(TASKS), help="the per-family lines (default: all)")
    args = parser.parse_args()
    print(f"{'family':<10}{'clips/s':>10}{'audio h/h':>11}   (1 worker, {max(args.clips // 10, 10)} clips)")
    for name in [] if args.mix_only else args.families or TASKS:
        rate, speed = timed([name], max(args.clips // 10, 10), 1)
        print(f"{name:<10}{rate:>10.1f}{speed:>11.0f}")
    rate, speed = timed(args.tasks, args.clips, args.workers)
    print(f"{'mix' if args.tasks else 'all':<10}{rate:>10.1f}{speed:>11.0f}   ({args.workers} workers, {args.clips} "
          f"clips): 10 h of audio in {10 / speed * 60:.1f} min, 40 h in {40 / speed * 60:.1f} min")


if __name__ == "__main__":
    main()
