"""Training steps with the LM decoder compiled (`train.compile: true`) against eager ones, on a recipe's real batches.

    .venv/bin/python bench/bench_train_step.py [--config recipes/demo/pretrain.yaml] [--batches 40] [--rounds 2]

Side by side in one run: two runs of the same recipe (its model, data, precision and optimizer), one of them with
the decoder compiled, step over the same batches, alternating batch by batch so that both see the same machine load.
The compiled run first steps over a few batches of other lengths to compile (its time is printed apart: a real run
pays it once, and the next runs find the kernels in inductor's on-disk cache). Needs the recipe's inputs: for the
demo recipes, `make demo-model` up to its corpus and trimmed model (runs/demo/).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import torch

from qwen2audio.machine import Stopwatch
from qwen2audio.train import load_config
from qwen2audio.train.loop import batches, setup, train_step

WARMUP_BATCHES = 6  # enough lengths to reach the compiled graph's one recompile, for batches over 4,096 tokens


def make_run(config_path: str, out_dir: Path, compiled: bool):
    overrides = [f"out_dir={out_dir}", f"train.compile={str(compiled).lower()}", "logging.progress=false",
                 "checkpoint.every=0"]
    return setup(load_config(config_path, overrides))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="recipes/demo/pretrain.yaml")
    parser.add_argument("--batches", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        eager, compiled = (make_run(args.config, Path(tmp) / name, name == "compiled")
                           for name in ("eager", "compiled"))
        stream = batches(eager)
        warmup = [next(stream) for _ in range(WARMUP_BATCHES)]
        measured = [next(stream) for _ in range(args.batches)]
        watch = Stopwatch()
        for batch in warmup:
            train_step(compiled, [batch])
        compile_s = watch.seconds()
        for batch in warmup[:2]:
            train_step(eager, [batch])
        times = {"eager": [], "compiled": []}
        for _ in range(args.rounds):
            for batch in measured:
                for name, run in (("eager", eager), ("compiled", compiled)):
                    watch = Stopwatch()
                    train_step(run, [batch])
                    times[name].append(watch.seconds())
    lengths = [b.input_ids.shape[-1] for b in measured]
    tokens = sum(int(b.input_ids.numel()) for b in measured) * args.rounds
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {args.config}: {len(measured)} batches of "
          f"{measured[0].input_ids.shape[0]} rows, {min(lengths)}-{max(lengths)} tokens, x{args.rounds} rounds; "
          f"the compiled run's first {WARMUP_BATCHES} steps (compiling) took {compile_s:.0f} s")
    for name, ts in times.items():
        print(f"{name:<9} median {statistics.median(ts) * 1e3:7.1f} ms a step, total {sum(ts):6.1f} s, "
              f"{tokens / sum(ts):7.0f} tokens/s")
    print(f"compiled / eager speed: {sum(times['eager']) / sum(times['compiled']):.2f}x (total time), "
          f"{statistics.median(times['eager']) / statistics.median(times['compiled']):.2f}x (medians)")


if __name__ == "__main__":
    main()
