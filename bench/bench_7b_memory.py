"""The full Qwen2-Audio-7B config in bf16 on this machine: write a random sharded checkpoint (16.8 GB), load it,
run a 10 s clip + prompt through prefill and a few decode steps, and report peak memory against the weights.

    .venv/bin/python bench/bench_7b_memory.py --dir /tmp/q2a-7b-random [--new-tokens 4]

The checkpoint is written tensor by tensor (never the whole model in memory) and kept for reruns. Loading runs in a
fresh process so that its peak resident memory (VmHWM) is its own.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import torch
from safetensors.torch import save_file

from qwen2audio.checkpoint import INDEX_FILE, hub_state_dict
from qwen2audio.files import atomic_write_json
from qwen2audio.machine import Stopwatch
from qwen2audio.model import Qwen2Audio, Qwen2AudioConfig
from qwen2audio.processor import Processor

SHARD_BYTES = 4 * 2**30


def write_random_checkpoint(directory: Path) -> None:
    if (directory / INDEX_FILE).exists():
        print(f"reusing {directory}")
        return
    directory.mkdir(parents=True, exist_ok=True)
    config = Qwen2AudioConfig.from_name("qwen2-audio-7b")
    with torch.device("meta"):
        model = Qwen2Audio(config)
    shapes = {k: t.shape for k, t in hub_state_dict(model).items()}
    generator = torch.Generator().manual_seed(0)
    shard, size, index, n = {}, 0, {}, 0

    def flush():
        nonlocal shard, size, n
        n += 1
        name = f"model-{n:05d}.safetensors"
        save_file(shard, directory / name, metadata={"format": "pt"})
        index.update(dict.fromkeys(shard, name))
        print(f"  wrote {name} ({size / 2**30:.1f} GiB)", flush=True)
        shard, size = {}, 0

    for key, shape in shapes.items():
        std = 0.02 if len(shape) > 1 else 0.0
        t = torch.randn(shape, generator=generator, dtype=torch.float32).mul_(std).to(torch.bfloat16) if std \
            else torch.ones(shape, dtype=torch.bfloat16)
        shard[key] = t
        size += t.numel() * 2
        if size >= SHARD_BYTES:
            flush()
    if shard:
        flush()
    atomic_write_json(directory / INDEX_FILE, {"metadata": {}, "weight_map": index})
    atomic_write_json(directory / "config.json", {**config.to_hf_dict(), "dtype": "bfloat16"})
    Processor().save_pretrained(directory)


RUN = textwrap.dedent("""
    import json, sys, numpy as np, torch
    import qwen2audio
    from qwen2audio.audio import SAMPLE_RATE
    from qwen2audio.generate import GenerationConfig
    from qwen2audio.machine import Stopwatch

    def status_mb(field):
        return int(next(l for l in open('/proc/self/status') if l.startswith(field + ':')).split()[1]) / 1024

    base = status_mb('VmRSS')
    watch = Stopwatch()
    model = qwen2audio.load(sys.argv[1], dtype='bfloat16')
    load_s = watch.seconds()
    after_load = status_mb('VmRSS')
    clip = (0.1 * np.random.default_rng(0).standard_normal(10 * SAMPLE_RATE)).astype(np.float32)
    conversation = [{'role': 'user', 'content': [{'type': 'audio', 'audio': clip},
                                                 {'type': 'text', 'text': 'What does the speaker say?'}]}]
    inputs = model.processor(text=model.processor.apply_chat_template(conversation, add_generation_prompt=True),
                             audio=[clip], sampling_rate=SAMPLE_RATE).to(dtype=torch.bfloat16)
    model.generator.compile = False
    out = model.generator.generate(inputs, GenerationConfig(max_new_tokens=int(sys.argv[2])))
    stats = model.generator.stats
    weights = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
    print(json.dumps({'weights_MiB': weights, 'base_MiB': base, 'after_load_MiB': after_load,
                      'peak_MiB': status_mb('VmHWM'), 'load_s': load_s, 'prefill_s': stats.prefill_s,
                      'decode_s_per_token': stats.decode_s / max(1, stats.new_tokens - 1),
                      'prompt_tokens': stats.prompt_tokens, 'new_tokens': stats.new_tokens}))
""")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dir", type=Path, default=Path("/tmp/q2a-7b-random"))
    parser.add_argument("--new-tokens", type=int, default=4)
    args = parser.parse_args()
    watch = Stopwatch()
    write_random_checkpoint(args.dir)
    print(f"checkpoint ready in {watch.seconds():.0f} s")
    out = subprocess.run([sys.executable, "-c", RUN, str(args.dir), str(args.new_tokens)], capture_output=True,
                         text=True)
    if out.returncode:
        sys.exit(out.stderr)
    r = json.loads(out.stdout.strip().splitlines()[-1])
    total = int(open("/proc/meminfo").readline().split()[1]) / 1024
    print(json.dumps(r, indent=1))
    print(f"weights {r['weights_MiB'] / 1024:.1f} GiB; peak resident {r['peak_MiB'] / 1024:.1f} GiB of "
          f"{total / 1024:.1f} GiB ({r['peak_MiB'] / r['weights_MiB']:.2f}x the weights, interpreter included); "
          f"load {r['load_s']:.1f} s, prefill {r['prefill_s']:.1f} s ({r['prompt_tokens']} tokens), "
          f"decode {r['decode_s_per_token']:.2f} s/token")


if __name__ == "__main__":
    main()
