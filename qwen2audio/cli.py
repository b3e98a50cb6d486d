"""Command line: `qwen2audio COMMAND ...`. One table maps each command to a function of the library; the functions
here only parse arguments and print."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from .api import load, parse_size
from .audio import AudioError
from .checkpoint import (DEFAULT_SHARD_SIZE, DTYPE_NAMES, LAYOUTS, CheckpointError, checkpoint_dtype,
                         checkpoint_files, read_config)
from .model import Qwen2Audio, Qwen2AudioConfig
from .model.config import PRESETS


def _describe(config: Qwen2AudioConfig) -> list[tuple[str, str]]:
    """(label, value) lines: parameter counts from a meta-device build, weight and KV-cache memory."""
    with torch.device("meta"):
        model = Qwen2Audio(config)
    counts = {part: sum(p.numel() for p in getattr(model, part).parameters())
              for part in ("audio_encoder", "projector", "decoder")}
    total = sum(counts.values())
    t = config.text
    kv_bytes_per_token = 2 * t.n_layers * t.n_kv_heads * t.head_dim * 2  # keys and values in bf16
    weights = ", ".join(f"{name} {total * dtype.itemsize / 2**30:.2f}" for name, dtype in DTYPE_NAMES.items())
    return [("parameters", f"{total:,} (" + ", ".join(f"{k} {v:,}" for k, v in counts.items()) + ")"),
            ("weights GiB", f"{weights}, int8 {total / 2**30:.2f}"),
            ("KV cache", f"{kv_bytes_per_token * 1000 / 2**20:.1f} MiB per 1000 tokens in bf16")]


def cmd_info(args) -> None:
    """Print the config, parameter counts and memory estimates of a checkpoint directory or a preset name."""
    source = Path(args.model)
    if source.is_dir():
        config, raw = read_config(source)
        files = checkpoint_files(source)
        size = sum(f.stat().st_size for f in files)
        print(f"{'checkpoint':<13}{source}")
        print(f"weights      {len(files)} safetensors file(s), {size / 2**30:.2f} GiB, dtype "
              f"{next((n for n, d in DTYPE_NAMES.items() if d == checkpoint_dtype(raw)), 'as stored')}")
    elif args.model in PRESETS:
        config = Qwen2AudioConfig.from_name(args.model)
        print(f"preset       {args.model}")
    else:
        raise CheckpointError(f"{args.model} is neither a checkpoint directory nor a preset "
                              f"({', '.join(sorted(PRESETS))})")
    a, t = config.audio, config.text
    print(f"audio        {a.n_mels} mels, d {a.dim}, {a.n_layers} layers, {a.n_heads} heads, ffn {a.ffn_dim}, "
          f"{a.n_positions} positions ({a.max_mel_frames // 100} s)")
    print(f"text         vocab {t.vocab_size}, d {t.dim}, {t.n_layers} layers, {t.n_heads} heads / {t.n_kv_heads} kv, "
          f"ffn {t.ffn_dim}, rope {t.rope_theta:g}, eps {t.norm_eps:g}, {'tied' if t.tie_embeddings else 'untied'}")
    for label, value in _describe(config):
        print(f"{label:<13}{value}")


def cmd_convert(args) -> None:
    """Load (checking every key, shape and file), then write in the chosen layout and dtype."""
    model = load(args.model, dtype=args.dtype)
    n = model.num_parameters()
    if args.check:
        print(f"ok: {args.model} loads: {n:,} parameters, dtype {model.dtype}")
        return
    if args.out is None:
        raise SystemExit("convert: give --out DIR (or --check to validate only)")
    if Path(args.out).resolve() == Path(args.model).resolve():
        raise SystemExit("convert: --out must differ from the source (the source's files are memory-mapped)")
    model.save_pretrained(args.out, dtype=args.dtype, max_shard_size=parse_size(args.max_shard_size),
                          layout=args.layout)
    print(f"wrote {args.out}: {n:,} parameters, dtype {args.dtype or model.dtype}, {args.layout} layout")


def _info_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="checkpoint directory or preset name")


def _convert_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="source checkpoint directory (hub or transformers>=5.10 layout)")
    p.add_argument("--out", help="destination directory")
    p.add_argument("--dtype", choices=sorted(DTYPE_NAMES), help="convert the weights (default: keep)")
    p.add_argument("--layout", choices=sorted(LAYOUTS), default="hub",
                   help="hub: the names of the published checkpoints, read by transformers, vLLM and llama.cpp")
    p.add_argument("--max-shard-size", default=str(DEFAULT_SHARD_SIZE), help="e.g. 5GB, 500MB")
    p.add_argument("--check", action="store_true", help="only check that the checkpoint loads")


# command -> (function, argument setup, one-line help)
COMMANDS = {
    "info": (cmd_info, _info_args, "config, parameter count and memory estimate of a checkpoint or preset"),
    "convert": (cmd_convert, _convert_args, "check a checkpoint and rewrite it in another layout or dtype"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="qwen2audio", description="Qwen2-Audio in pure PyTorch")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (func, setup, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        setup(p)
        p.set_defaults(func=func)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (CheckpointError, AudioError, ValueError, FileNotFoundError) as e:
        print(f"qwen2audio {args.command}: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
