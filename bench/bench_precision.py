"""Training steps in bf16-mixed against 32-true on a recipe's real batches, and what `precision: auto` picks here.

    .venv/bin/python bench/bench_precision.py [--config recipes/demo/pretrain.yaml] [--rows 2000] [--batches 30]

Side by side in one run: two runs of the same recipe (its model, data and optimizer), one in each precision, both
eager, step over the same batches, alternating batch by batch so that both see the same machine load. The runs read
the first `--rows` rows of the recipe's first source (so that each precision's own encoder cache, which the compute
precision keys, fills in seconds, in a temporary folder). `auto` is right on this machine when it picks the faster
one (it measures one linear layer, not a whole step). Needs the recipe's inputs: for the demo recipes, `make
demo-model` up to its corpus and trimmed model (runs/demo/).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from itertools import islice
from pathlib import Path

import torch

from qwen2audio.machine import Stopwatch
from qwen2audio.train import load_config
from qwen2audio.train.loop import batches, setup, train_step
from qwen2audio.train.model import auto_precision

PRECISIONS = ("bf16-mixed", "32-true")
WARMUP_BATCHES = 3


def subset(config_path: str, rows: int, tmp: Path) -> str:
    """The first `rows` rows of the recipe's first source as a manifest in `tmp`, its audio read from the original."""
    source = Path(load_config(config_path, []).data.train[0].path)
    out = tmp / "rows.jsonl"
    with source.open() as f:
        out.write_text("".join(islice(f, rows)))
    return json.dumps([{"path": str(out), "audio_dir": str(source.parent.resolve())}])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="recipes/demo/pretrain.yaml")
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--batches", type=int, default=30)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        train = subset(args.config, args.rows, Path(tmp))
        runs = {p: setup(load_config(args.config, [
            f"out_dir={Path(tmp) / p}", f"model.precision={p}", "train.compile=false", "logging.progress=false",
            "checkpoint.every=0", f"data.train={train}", f"data.encoder_cache={Path(tmp) / 'cache'}"]))
            for p in PRECISIONS}
        # each run its own stream: the same rows in the same order (one plan), with its own precision's cached
        # encoder outputs
        streams = {p: list(islice(batches(run), WARMUP_BATCHES + args.batches)) for p, run in runs.items()}
        measured = streams[PRECISIONS[0]]
        assert all(a.input_ids.equal(b.input_ids) for a, b in zip(*streams.values())), "the runs' batches differ"
        times: dict[str, list[float]] = {p: [] for p in PRECISIONS}
        for i in range(len(measured)):
            for p, run in runs.items():
                watch = Stopwatch()
                train_step(run, [streams[p][i]])
                if i >= WARMUP_BATCHES:
                    times[p].append(watch.seconds())
        dim = runs[PRECISIONS[0]].model.config.text.dim
    chosen = auto_precision(dim, torch.device("cpu"))
    lengths = [b.input_ids.shape[-1] for b in measured[WARMUP_BATCHES:]]
    tokens = sum(int(b.input_ids.numel()) for b in measured[WARMUP_BATCHES:])
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {args.config}: {len(lengths)} batches of "
          f"{measured[0].input_ids.shape[0]} rows, {min(lengths)}-{max(lengths)} tokens, eager")
    for p, ts in times.items():
        print(f"{p:<10} median {statistics.median(ts) * 1e3:7.1f} ms a step, total {sum(ts):6.1f} s, "
              f"{tokens / sum(ts):7.0f} tokens/s")
    faster = min(PRECISIONS, key=lambda p: sum(times[p]))
    print(f"bf16-mixed / 32-true speed: {sum(times['32-true']) / sum(times['bf16-mixed']):.2f}x (total time); "
          f"precision: auto picks {chosen} here (d {dim}): {'the faster one' if chosen == faster else 'NOT the faster one'}")


if __name__ == "__main__":
    main()
