"""`qwen2audio serve [--model DIR] [--host 127.0.0.1 --port 8000 --api-key KEY ...]`: the OpenAI-compatible server.
Only argparse here at import time: FastAPI and uvicorn load when the command runs."""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import logging
import os
import platform
import sys

from .config import LOOPBACK, MB, ServeConfig, is_loopback

API_KEY_ENV = "QWEN2AUDIO_API_KEY"
DEFAULTS = ServeConfig()


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="checkpoint directory (default: the shipped demo model)")
    p.add_argument("--host", default=LOOPBACK, help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key", default=os.environ.get(API_KEY_ENV),
                   help=f"require 'Authorization: Bearer KEY' on /v1 and /metrics (default: ${API_KEY_ENV}; none)")
    p.add_argument("--served-model-name", default=DEFAULTS.served_model_name, help="the `model` clients send")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 ... (default: cpu)")
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), help="weight dtype (default: as stored)")
    p.add_argument("--quantize", choices=("int8", "int4"), help="weight-only quantisation of the language model")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="torch.compile the decode step (default: where it pays: CUDA, a quantised CPU model)")
    g = p.add_argument_group("capacity")
    g.add_argument("--max-batch", type=int, default=DEFAULTS.max_batch,
                   help="requests decoded together (KV cache rows)")
    g.add_argument("--max-queue", type=int, default=DEFAULTS.max_queue,
                   help="requests waiting for a row; beyond it: 429 with Retry-After")
    g.add_argument("--max-model-len", type=int, help="tokens per row, prompt + reply (default: the model's, "
                                                     "at most 8192)")
    g.add_argument("--request-timeout", type=float, default=DEFAULTS.request_timeout_s,
                   help="seconds a request may take, queue included (then 504)")
    g = p.add_argument_group("limits of one request (each answered with a 4xx)")
    g.add_argument("--max-body-mb", type=float, default=DEFAULTS.max_body_bytes / MB)
    g.add_argument("--max-audio-seconds", type=float, default=DEFAULTS.max_audio_seconds,
                   help="audio of one chat request, all parts together")
    g.add_argument("--max-audios", type=int, default=DEFAULTS.max_audios, help="audio parts of one chat request")
    g.add_argument("--max-tokens", type=int, default=DEFAULTS.max_tokens, help="the largest max_tokens allowed")
    g.add_argument("--max-prompt-tokens", type=int, help="default: --max-model-len - 1")
    g.add_argument("--max-n", type=int, default=DEFAULTS.max_n, help="choices per chat request")
    g.add_argument("--max-transcription-seconds", type=float, default=DEFAULTS.max_transcription_seconds)
    g = p.add_argument_group("audio sources (base64 and data: URLs are always accepted)")
    g.add_argument("--allow-file-dir", action="append", default=[], metavar="DIR",
                   help="accept file: audio URLs for files below DIR (repeatable; default: none)")
    g.add_argument("--allow-http-audio", action="store_true", help="fetch http(s) audio URLs (default: refused)")
    g.add_argument("--http-audio-timeout", type=float, default=DEFAULTS.http_audio_timeout_s)
    g.add_argument("--http-audio-max-mb", type=float, default=DEFAULTS.http_audio_max_bytes / MB)
    p.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))


def serve_config(args) -> ServeConfig:
    return ServeConfig(
        max_batch=args.max_batch, max_queue=args.max_queue, max_model_len=args.max_model_len,
        request_timeout_s=args.request_timeout, max_body_bytes=int(args.max_body_mb * MB),
        max_audio_seconds=args.max_audio_seconds, max_audios=args.max_audios, max_tokens=args.max_tokens,
        max_prompt_tokens=args.max_prompt_tokens, max_n=args.max_n,
        max_transcription_seconds=args.max_transcription_seconds, api_key=args.api_key or None,
        allow_file_dirs=tuple(args.allow_file_dir), allow_http_audio=args.allow_http_audio,
        http_audio_timeout_s=args.http_audio_timeout, http_audio_max_bytes=int(args.http_audio_max_mb * MB),
        served_model_name=args.served_model_name)


def fix_mmap_threshold(nbytes: int = 1 << 20) -> bool:
    """Have glibc's malloc map every block of `nbytes` or more on its own and unmap it when freed.

    By default glibc raises that threshold each time a mapped block is freed, so the decode step's large
    short-lived buffers (logits of every row: 32 x 151936 floats = 19 MB) move into the heap, between small
    long-lived objects, and the server's RSS creeps up by megabytes a second under load (bench/bench_serve.py: +213
    MiB in 60 s; flat with this). A process-wide setting, made by the server command for its own process only.
    """
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    m_mmap_threshold = -3  # from malloc.h
    return bool(ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt(m_mmap_threshold, nbytes))


def run(args) -> None:
    config = serve_config(args)  # bad limits fail before the model loads
    fix_mmap_threshold()
    try:
        import uvicorn

        from .app import create_app, max_model_len
    except ImportError as e:
        raise ValueError(f"serving needs the serve extra ({e.name} is missing): pip install 'qwen2audio[serve]'")
    from ..api import default_model_path, load
    from ..quant import quantize

    model = load(args.model or default_model_path(), device=args.device, dtype=args.dtype)
    if args.quantize:
        quantize(model, args.quantize)
    if not is_loopback(args.host) and not config.api_key:
        print(f"qwen2audio serve: warning: listening on {args.host} without --api-key: anyone who can reach this "
              "address can use the model", file=sys.stderr)
    app = create_app(model, config, compile=args.compile)
    t = model.config.text
    rows, length = config.max_batch, max_model_len(model, config)
    kv_gib = 2 * t.n_layers * t.n_kv_heads * t.head_dim * model.dtype.itemsize * rows * length / 2**30
    logging.basicConfig(level=args.log_level.upper(), format="qwen2audio serve: %(message)s")
    print(f"qwen2audio serve: {args.model or 'the demo model'} as '{config.served_model_name}' on "
          f"http://{args.host}:{args.port} ({rows} rows of {length} tokens, KV cache {kv_gib:.2f} GiB; web page at /, "
          f"API at /v1, docs at /docs)", file=sys.stderr)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, timeout_graceful_shutdown=10)
