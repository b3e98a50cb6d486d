"""`qwen2audio info`, `convert`, `build` and `trim-vocab`: parse the arguments, call the library."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from ..api import load, parse_size
from ..checkpoint import (DEFAULT_SHARD_SIZE, DTYPE_NAMES, LAYOUTS, CheckpointError, checkpoint_dtype,
                          checkpoint_files, dtype_name, read_config)
from ..compressed_checkpoint import DEFAULT_GROUP_SIZE, SCHEMES, describe_checkpoint, quantize_checkpoint
from ..gguf_checkpoint import describe_gguf, is_gguf_directory
from ..model import Qwen2Audio, Qwen2AudioConfig
from ..model.config import PRESETS
from .build import build
from .lm import LLM_CONFIG_FIELDS, LLM_CONFIG_REQUIRED
from .vocab import PAD_MULTIPLE, trim_vocabulary
from .whisper import ENCODER_FORMATS


def describe(config: Qwen2AudioConfig) -> list[tuple[str, str]]:
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


def run_info(args: argparse.Namespace) -> None:
    """Print the config, parameter counts and memory estimates of a checkpoint directory or a preset name."""
    source = Path(args.model)
    if is_gguf_directory(source):
        config, lines = describe_gguf(source)
        for label, value in lines:
            print(f"{label:<13}{value}")
    elif source.is_dir():
        config, raw = read_config(source)
        files = checkpoint_files(source)
        size = sum(f.stat().st_size for f in files)
        print(f"{'checkpoint':<13}{source}")
        stored = checkpoint_dtype(raw)
        print(f"weights      {len(files)} safetensors file(s), {size / 2**30:.2f} GiB, dtype "
              f"{dtype_name(stored) if stored else 'as stored'}")
        for label, value in describe_checkpoint(source, raw):
            print(f"{label:<13}{value}")
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
    for label, value in describe(config):
        print(f"{label:<13}{value}")


def run_convert(args: argparse.Namespace) -> None:
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


def add_info_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", nargs="?", help="checkpoint directory or preset name (default: the shipped demo model)")


def add_convert_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="source checkpoint directory (hub or transformers>=5.10 layout)")
    p.add_argument("--out", help="destination directory")
    p.add_argument("--dtype", choices=sorted(DTYPE_NAMES), help="convert the weights (default: keep)")
    p.add_argument("--layout", choices=sorted(LAYOUTS), default="hub",
                   help="hub: the names of the published checkpoints, read by transformers, vLLM and llama.cpp")
    p.add_argument("--max-shard-size", default=str(DEFAULT_SHARD_SIZE), help="e.g. 5GB, 500MB")
    p.add_argument("--check", action="store_true", help="only check that the checkpoint loads")


def group_size_argument(value: str) -> int | None:
    """--group-size: a number of inputs, or 'channel' (one scale per output channel)."""
    if value == "channel":
        return None
    if not value.isdigit() or int(value) <= 0:
        raise argparse.ArgumentTypeError(f"{value!r}: give a positive number of inputs or 'channel'")
    return int(value)


def add_quantize_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="full-precision checkpoint directory (default: the shipped demo model)")
    p.add_argument("--scheme", choices=sorted(SCHEMES), default="w4a16",
                   help="weight-only int8 or int4 of the language model's block linears (default w4a16)")
    p.add_argument("--group-size", type=group_size_argument, default=DEFAULT_GROUP_SIZE,
                   help=f"inputs sharing one scale, or 'channel' (default {DEFAULT_GROUP_SIZE}, as llm-compressor)")
    p.add_argument("--dtype", choices=sorted(DTYPE_NAMES), help="dtype of the dense tensors and scales (default: keep)")
    p.add_argument("--out", required=True, help="destination directory")


def run_quantize(args: argparse.Namespace) -> None:
    """Quantise a checkpoint shard by shard into compressed-tensors (read by `load`, vLLM and transformers)."""
    if Path(args.out).resolve() == Path(args.model).resolve():
        raise SystemExit("quantize: --out must differ from --model (the source's files are memory-mapped)")
    out = quantize_checkpoint(args.model, args.out, args.scheme, args.group_size, args.dtype)
    group = "per channel" if args.group_size is None else f"group {args.group_size}"
    print(f"wrote {out}: {args.scheme}, {group}, compressed-tensors pack-quantized")


def add_build_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--encoder", required=True, help="Whisper: " + "; or ".join(f.looks_like for f in ENCODER_FORMATS))
    llm = p.add_mutually_exclusive_group(required=True)
    llm.add_argument("--llm", help="Qwen2 / Qwen2.5 Qwen2ForCausalLM directory (safetensors)")
    llm.add_argument("--llm-config", metavar="SPEC",
                     help="a new LM trained from scratch: a JSON file or inline JSON of Qwen2 config fields ("
                          + ", ".join(LLM_CONFIG_FIELDS) + "; required: " + ", ".join(LLM_CONFIG_REQUIRED) + ")")
    p.add_argument("--out", required=True, help="new directory for the Qwen2-Audio checkpoint")
    p.add_argument("--dtype", choices=sorted(DTYPE_NAMES), help="weights' dtype (default: the LLM's; float32 for "
                   "a new LM)")
    p.add_argument("--seed", type=int, default=0, help="seed of the new projector's (and a new LM's) initialisation")
    p.add_argument("--force", action="store_true", help="write into a non-empty --out")
    p.add_argument("--max-shard-size", default=str(DEFAULT_SHARD_SIZE), help="e.g. 5GB, 500MB")


def run_build(args: argparse.Namespace) -> None:
    build(args.encoder, args.llm, args.out, dtype=args.dtype, seed=args.seed, force=args.force,
          max_shard_size=args.max_shard_size, llm_config=args.llm_config)


def add_trim_vocab_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="checkpoint directory to trim (default: the shipped demo model)")
    p.add_argument("--corpus", required=True, nargs="+", metavar="FILE",
                   help="JSONL files of the corpus (pre-training task rows, SFT chats, DPO pairs)")
    p.add_argument("--out", required=True, help="new directory for the trimmed checkpoint")
    p.add_argument("--multiple", type=int, default=PAD_MULTIPLE,
                   help=f"pad the embedding rows to a multiple of this (default {PAD_MULTIPLE})")
    p.add_argument("--force", action="store_true", help="write into a non-empty --out")


def run_trim_vocab(args: argparse.Namespace) -> None:
    trim_vocabulary(args.model, args.corpus, args.out, multiple=args.multiple, force=args.force)
