"""`qwen2audio eval --model DIR | --api URL --benchmark NAME --data PATH [--limit N]`, or `--suite a,b` with
`--data ROOT` holding one folder (or `NAME.jsonl` / `NAME.parquet`) per benchmark, or `--data NAME=PATH` per set.
`--benchmark synth --data CORPUS/eval` scores the synthetic corpus' test split; `--benchmark preference --data
CORPUS/test/dpo.jsonl` measures preference pairs (a local model only)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..api import load
from ..transcribe import STYLES
from .datasets import PRESETS
from .preference import evaluate_preference
from .runner import MAX_NEW_TOKENS, ApiPredictor, LocalPredictor, evaluate

DTYPES = ("float32", "bfloat16", "float16")


def add_arguments(p: argparse.ArgumentParser) -> None:
    who = p.add_mutually_exclusive_group()
    who.add_argument("--model", help="a Qwen2-Audio checkpoint directory (the base model for ASR/S2TT, as the report; "
                     "default: the shipped demo model)")
    who.add_argument("--api", metavar="URL", help="an OpenAI-compatible server, e.g. http://localhost:8000/v1")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--benchmark", choices=sorted(PRESETS))
    which.add_argument("--suite", help=f"comma-separated benchmarks ({','.join(PRESETS)})")
    p.add_argument("--data", action="append", required=True, metavar="PATH|NAME=PATH",
                   help="the download's folder, an official .jsonl manifest or parquet export(s); with --suite a "
                        "root holding NAME/ (or NAME.jsonl, NAME.parquet) per benchmark, or NAME=PATH (repeatable)")
    p.add_argument("--out", default="eval-results", help="predictions (resumable) and results go here")
    p.add_argument("--limit", type=int, help="the first N items of each benchmark (synth: of each source)")
    p.add_argument("--prompt-style", choices=STYLES, default="auto",
                   help="a local model's prompts: auto (items with a conversation, e.g. synth, in the model's own "
                        "style: chat for an Instruct checkpoint, by generation_config.json; the others as given), "
                        "base (the base-model prompt) or chat (the chat template); an API always gets chat messages")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=MAX_NEW_TOKENS)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=DTYPES)
    p.add_argument("--api-model", default="default", help="the `model` field of API requests")
    p.add_argument("--api-key", help="sent as a bearer token (default: none)")
    p.add_argument("--judge-api", metavar="URL", help="AIR-Bench chat: the judge's OpenAI-compatible endpoint")
    p.add_argument("--judge-model", default="gpt-4-0125-preview", help="the judge's `model` field")
    p.add_argument("--judge-key", help="the judge's bearer token (default: none)")
    p.add_argument("--no-progress", action="store_true")


def data_paths(names: list[str], data: list[str]) -> dict[str, Path]:
    """Where each benchmark's data is, from the --data arguments."""
    named = dict(d.split("=", 1) for d in data if "=" in d and d.split("=", 1)[0] in PRESETS)
    plain = [d for d in data if d not in {f"{k}={v}" for k, v in named.items()}]
    paths = {}
    for name in names:
        if name in named:
            paths[name] = Path(named[name])
        elif len(names) == 1 and plain:
            paths[name] = Path(plain[0])
        elif plain:
            root = Path(plain[0])
            paths[name] = next((c for c in (root / name, root / f"{name}.jsonl", root / f"{name}.parquet")
                                if c.exists()), root / name)
        else:
            raise ValueError(f"no --data for {name}: give --data {name}=PATH or a root holding {name}/")
    return paths


def run(args: argparse.Namespace) -> None:
    names = [args.benchmark] if args.benchmark else [n.strip() for n in args.suite.split(",") if n.strip()]
    unknown = [n for n in names if n not in PRESETS]
    if unknown:
        raise ValueError(f"unknown benchmark(s) {', '.join(unknown)}; available: {', '.join(PRESETS)}")
    paths = data_paths(names, args.data)
    if args.api and args.prompt_style != "auto":
        raise ValueError("--prompt-style is for a local model (--model): an API applies its own chat template")
    if args.api and any(PRESETS[n].metric == "preference" for n in names):
        raise ValueError("the preference benchmark scores log-probabilities: it needs a local model (--model DIR)")
    model = None
    if args.api:
        predictor = ApiPredictor(args.api, model=args.api_model, api_key=args.api_key,
                                 max_new_tokens=args.max_new_tokens)
    else:
        model = load(args.model, device=args.device, dtype=args.dtype)
        predictor = LocalPredictor(model, args.max_new_tokens, style=args.prompt_style)
    judge = (ApiPredictor(args.judge_api, model=args.judge_model, api_key=args.judge_key).complete
             if args.judge_api else None)
    for name in names:
        if PRESETS[name].metric == "preference":
            results = evaluate_preference(model, paths[name], args.out, limit=args.limit,
                                          batch_size=args.batch_size, max_new_tokens=args.max_new_tokens,
                                          progress=not args.no_progress)
        else:
            results = evaluate(name, paths[name], predictor, args.out, limit=args.limit,
                               batch_size=args.batch_size, progress=not args.no_progress, judge=judge)
        print(results.markdown)
    print(f"predictions and results in {args.out}/")
