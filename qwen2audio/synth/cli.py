"""`qwen2audio synth`: parse the arguments, make the corpus, print a summary."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from .corpus import default_workers, generate, pending_items, resolve
from .speech import VOICE_SETS, EngineError
from .tasks import LANGUAGES, TASKS


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="corpus folder (a rerun with the same settings resumes)")
    size = p.add_mutually_exclusive_group(required=True)
    size.add_argument("--clips", type=int, help="number of clips over all splits")
    size.add_argument("--hours", type=float, help="about this many hours of audio")
    p.add_argument("--tasks", nargs="+", metavar="TASK[:W]",
                   help=f"task families, each with an optional weight (asr:6,lid,sound:2; default: all, weight 1): "
                        f"{', '.join(TASKS)}")
    p.add_argument("--languages", nargs="+", metavar="LANG",
                   help=f"languages of the speech tasks (default: all): {', '.join(LANGUAGES)}")
    p.add_argument("--seed", type=int, required=True, help="the same seed gives the same bytes")
    p.add_argument("--test-fraction", type=float, default=0.1, help="share of the clips in the test split")
    p.add_argument("--voices", choices=VOICE_SETS, default="core",
                   help="espeak-ng variants of the training split: core (f1-f4, m1-m7) or extended (+ the named "
                        "variants of a stated sex); the test split always speaks with the held-out f5 and m8")
    p.add_argument("--workers", type=int, default=default_workers(), help="processes (default: all cores)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args) -> None:
    try:
        config = resolve(args.tasks, args.languages, args.clips, args.hours, args.seed, args.test_fraction, args.voices)
    except EngineError as e:
        raise ValueError(str(e)) from None
    todo = len(pending_items(config, Path(args.out)))
    start = time.perf_counter()
    info = generate(config, Path(args.out), workers=args.workers, progress=not args.no_progress)
    seconds = time.perf_counter() - start
    for split, s in info["splits"].items():
        print(f"{split:<6} {s['clips']:>8} clips {s['hours']:>8.3f} h  {len(s['voices'])} voices  "
              f"tasks: " + ", ".join(f"{t} {v['clips']}" for t, v in s["tasks"].items()))
    done = f", {config.clips - todo} were there already" if todo < config.clips else ""
    print(f"wrote {args.out} in {seconds:.1f} s: made {todo} clips ({todo / max(seconds, 1e-9):.1f} clips/s){done}")
