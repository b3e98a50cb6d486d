"""Load on `qwen2audio serve` over loopback: C concurrent clients for S seconds against the same requests served one
at a time; errors, aggregate tokens/s and their ratio, latencies, and the server's memory sampled every second.

Config: a small random model that makes batching meaningful on 2 CPU cores: a Qwen2-shaped LM 256 wide, 4 layers,
4/2 heads, FFN 704, the real vocabulary (151936, tied) and a tiny audio encoder (64 wide, 2 layers, 128 mels). Its
decode step is dominated by reading the weights (the 151936 x 256 output head), as a large model's is, so a step of 32
rows costs a few times a step of one. Each request: a 1-3 s clip (base64 wav) and a question, greedy, max_tokens 64;
a quarter of them streamed. The server runs in its own process (`python -m qwen2audio serve`).

    .venv/bin/python bench/bench_serve.py                      # 32 clients x 60 s, baseline 20 s
    .venv/bin/python bench/bench_serve.py --seconds 15 --baseline-seconds 8   # a quick run
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import soundfile
import torch

from qwen2audio import Qwen2AudioForConditionalGeneration
from qwen2audio.audio import SAMPLE_RATE
from qwen2audio.machine import Stopwatch
from qwen2audio.model import Qwen2AudioConfig
from qwen2audio.model.config import AudioEncoderConfig, TextConfig

BENCH_CONFIG = Qwen2AudioConfig(
    audio=AudioEncoderConfig(n_mels=128, dim=64, n_layers=2, n_heads=4, ffn_dim=128),
    text=TextConfig(vocab_size=151936, dim=256, n_layers=4, n_heads=4, n_kv_heads=2, ffn_dim=704, norm_eps=1e-6,
                    rope_theta=1000000.0, max_positions=4096, tie_embeddings=True))
QUESTIONS = ["What is this sound?", "Describe the audio.", "How many tones do you hear?", "Is it music or speech?"]


def build_model(directory: Path) -> None:
    torch.manual_seed(0)
    model = Qwen2AudioForConditionalGeneration(BENCH_CONFIG)
    with torch.no_grad():
        for name, p in model.named_parameters():
            is_norm_scale = "norm" in name and name.endswith("weight")
            p.normal_(1.0 if is_norm_scale else 0.0, 0.2 if p.ndim > 1 else 0.1)
    model.save_pretrained(directory)


def request_bodies(n: int, max_tokens: int, stream_every: int) -> list[dict]:
    rng = np.random.default_rng(0)
    bodies = []
    for i in range(n):
        seconds, freq = 1.0 + 2.0 * rng.random(), 200 + 600 * rng.random()
        t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
        wave = (0.3 * np.sin(2 * np.pi * freq * t) + 0.01 * rng.standard_normal(t.size)).astype(np.float32)
        buffer = io.BytesIO()
        soundfile.write(buffer, wave, SAMPLE_RATE, format="WAV", subtype="PCM_16")
        audio = base64.b64encode(buffer.getvalue()).decode()
        body = {"model": "qwen2-audio", "max_tokens": max_tokens, "temperature": 0,
                "messages": [{"role": "user", "content": [
                    {"type": "input_audio", "input_audio": {"data": audio, "format": "wav"}},
                    {"type": "text", "text": QUESTIONS[i % len(QUESTIONS)]}]}]}
        if stream_every and i % stream_every == 0:
            body |= {"stream": True, "stream_options": {"include_usage": True}}
        bodies.append(body)
    return bodies


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


async def one_request(client: httpx.AsyncClient, url: str, body: dict) -> tuple[int, float, float | None]:
    """(completion tokens, seconds, seconds to first text or None) of one request; raises on any error."""
    watch = Stopwatch()
    if not body.get("stream"):
        response = await client.post(url, json=body)
        response.raise_for_status()
        return response.json()["usage"]["completion_tokens"], watch.seconds(), None
    first, tokens = None, None
    async with client.stream("POST", url, json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            if "error" in event:
                raise RuntimeError(event["error"]["message"])
            if first is None and event["choices"] and event["choices"][0]["delta"].get("content"):
                first = watch.seconds()
            if event.get("usage"):
                tokens = event["usage"]["completion_tokens"]
    if tokens is None:
        raise RuntimeError("the stream ended without usage")
    return tokens, watch.seconds(), first


async def load_phase(url: str, bodies: list[dict], clients: int, seconds: float, pid: int) -> dict:
    """`clients` loops, each sending the bodies in turn (from its own offset) until `seconds` have passed."""
    results, errors, rss = [], [], []
    watch = Stopwatch()
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)

    async def client_loop(k: int, client: httpx.AsyncClient) -> None:
        i = k
        while watch.seconds() < seconds:
            try:
                results.append(await one_request(client, url, bodies[i % len(bodies)]))
            except Exception as e:  # every failure counts
                errors.append(f"{type(e).__name__}: {e}")
            i += clients

    async def sample_memory() -> None:
        while watch.seconds() < seconds:
            rss.append((watch.seconds(), rss_mib(pid)))
            await asyncio.sleep(1.0)

    async with httpx.AsyncClient(timeout=600, limits=limits) as client:
        await asyncio.gather(sample_memory(), *(client_loop(k, client) for k in range(clients)))
    elapsed = watch.seconds()
    tokens = sum(r[0] for r in results)
    latencies = sorted(r[1] for r in results)
    firsts = sorted(r[2] for r in results if r[2] is not None)
    pick = lambda xs, q: xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")  # noqa: E731
    return {"requests": len(results), "errors": len(errors), "error_samples": errors[:5], "tokens": tokens,
            "seconds": elapsed, "tokens_per_s": tokens / elapsed, "latency_p50": pick(latencies, 0.5),
            "latency_p95": pick(latencies, 0.95), "ttft_p50": pick(firsts, 0.5), "ttft_p95": pick(firsts, 0.95),
            "rss": rss}


def metric(text: str, name: str) -> float:
    return next(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + " "))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", help="checkpoint directory (default: the random bench config, built in a temp dir)")
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--seconds", type=float, default=60.0, help="length of the concurrent run")
    p.add_argument("--baseline-seconds", type=float, default=20.0, help="length of the one-at-a-time run")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--stream-every", type=int, default=4, help="every k-th request streams (0: none)")
    p.add_argument("--json", help="also write the figures here")
    args = p.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(args.model) if args.model else Path(tmp) / "bench-serve-model"
        if not args.model:
            build_model(model_dir)
        port = free_port()
        cmd = [sys.executable, "-m", "qwen2audio", "serve", "--model", str(model_dir), "--port", str(port),
               "--max-batch", str(args.clients), "--max-queue", str(2 * args.clients), "--max-model-len", "1024",
               "--log-level", "warning"]
        server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        base = f"http://127.0.0.1:{port}"
        url = f"{base}/v1/chat/completions"
        try:
            give_up = time.monotonic() + 120
            while True:
                try:
                    if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if server.poll() is not None or time.monotonic() > give_up:
                    raise SystemExit("the server did not start")
                time.sleep(0.2)
            bodies = request_bodies(2 * args.clients, args.max_tokens, args.stream_every)
            asyncio.run(load_phase(url, bodies[:4], 4, 3.0, server.pid))  # warm-up
            alone = asyncio.run(load_phase(url, bodies, 1, args.baseline_seconds, server.pid))
            before = httpx.get(f"{base}/metrics").text
            loaded = asyncio.run(load_phase(url, bodies, args.clients, args.seconds, server.pid))
            after = httpx.get(f"{base}/metrics").text
        finally:
            server.terminate()
            server.wait(30)

    rss = [m for _, m in loaded["rss"]]
    settle = max(1, len(rss) // 10)  # the first tenth: caches and pools filling
    ratio = loaded["tokens_per_s"] / alone["tokens_per_s"]
    during = lambda name: metric(after, name) - metric(before, name)  # noqa: E731  (the concurrent run only)
    mean_batch = during("qwen2audio_decode_rows_total") / during("qwen2audio_decode_steps_total")
    print(f"model: {args.model or 'random bench config (LM 256 wide x 4 layers, vocab 151936)'}; "
          f"{os.cpu_count()} CPUs, torch {torch.__version__}, load average before: {os.getloadavg()[0]:.2f}")
    print(f"one at a time : {alone['requests']} requests in {alone['seconds']:.1f} s, "
          f"{alone['tokens_per_s']:.1f} tok/s, latency p50 {alone['latency_p50']:.3f} s, errors {alone['errors']}")
    print(f"{args.clients} clients    : {loaded['requests']} requests in {loaded['seconds']:.1f} s, "
          f"{loaded['tokens_per_s']:.1f} tok/s, latency p50 {loaded['latency_p50']:.2f} s p95 "
          f"{loaded['latency_p95']:.2f} s, time to first token p50 {loaded['ttft_p50']:.2f} s, "
          f"errors {loaded['errors']}")
    busy = {k: during(f"qwen2audio_engine_{k}_seconds_total") for k in ("prefill", "decode")}
    print(f"ratio         : {ratio:.2f}x aggregate tokens/s (concurrent run: mean decode batch {mean_batch:.1f} rows, "
          f"engine busy prefilling {busy['prefill']:.1f} s and decoding {busy['decode']:.1f} s)")
    print(f"server RSS MiB: start {rss[0]:.0f}, after {settle} s {rss[settle]:.0f}, max {max(rss):.0f}, "
          f"end {rss[-1]:.0f} (growth after settling {rss[-1] - rss[settle]:+.0f} MiB over {len(rss) - settle} "
          "samples)")
    print("server RSS MiB every 5 s:", " ".join(f"{m:.0f}" for t, m in loaded["rss"][::5]))
    if loaded["errors"] or alone["errors"]:
        print("errors:", loaded["error_samples"] or alone["error_samples"])
    if args.json:
        Path(args.json).write_text(json.dumps({"alone": alone, "loaded": loaded, "ratio": ratio,
                                               "mean_batch": mean_batch, "engine_s": busy}, indent=2))
    return 1 if loaded["errors"] or alone["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
