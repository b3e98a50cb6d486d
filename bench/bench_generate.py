"""Generation speed, side by side with transformers on the same weights, ratios and physical limits printed.

Config (issue 3): a Qwen2-0.5B-sized LM (896 wide, 24 layers, 14 heads / 2 KV, FFN 4864, vocab 151936, tied) with a
whisper-base-sized encoder (512 wide, 6 layers, 8 heads, FFN 2048, 128 mels); random weights; a 10 s clip + a short
prompt; 64 new tokens; greedy. Both sides are timed the same way: time to first token = a generate() of one token;
decode tokens/s = 63 / (time of 64 tokens - time of 1).

    .venv/bin/python bench/bench_generate.py                 # everything (about 10 minutes on 2 cores)
    .venv/bin/python bench/bench_generate.py --quick         # ours only, fewer repeats
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import qwen2audio
from qwen2audio.generate import GenerationConfig, Generator
from qwen2audio.model import Qwen2AudioConfig
from qwen2audio.quant import quantize, use_decode_kernels

NEW_TOKENS = 64
SENTENCES = [
    "The quick brown fox jumps over the lazy dog while the children watch from the window.",
    "Please remind me to buy milk, eggs and bread on the way home tomorrow evening.",
    "The weather today is cloudy with a chance of rain in the late afternoon.",
    "Artificial intelligence is changing how people work, learn and communicate.",
    "Turn left at the second traffic light and the museum will be on your right.",
    "She sells sea shells by the sea shore, and the shells she sells are surely sea shells.",
    "Our meeting has been moved to Thursday at three o'clock in the main conference room.",
    "Could you tell me how many kilometres it is from Paris to Berlin by train?",
]


def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def read_bandwidth(repeats: int = 7) -> float:
    """Bytes/s of reading a 1 GiB tensor: the best of torch's sum and an inductor-compiled row reduction (the
    access pattern of a decode step), so that the limit is what this machine can really stream."""
    x = torch.empty(2**28).normal_()
    width = 896  # the LM's hidden size: rows as long as a decode step's (power-of-two widths read slower here)
    v = torch.randn(width)
    n = x.numel() // width * width
    rows = torch.compile(lambda t, v: (t[:n].view(-1, width) * v).sum(-1))  # a matrix-vector product over 1 GiB
    rates = []
    for reduce in (lambda: x.sum(), lambda: rows(x, v)):
        reduce()
        rates.append(x.numel() * 4 / median_time(reduce, repeats))
    return max(rates)


def matmul_flops(dtype: torch.dtype, n: int = 2048, repeats: int = 5) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    return 2 * n**3 / median_time(lambda: a @ b, repeats)


def decode_bytes_per_token(model) -> int:
    """Bytes a decode step must read: every decoder weight once, the output head included (with tied embeddings
    the head is the embedding matrix); not the embedding lookup, not the KV cache."""
    d = model.decoder
    modules = [*d.layers, d.norm] + ([d.lm_head] if d.lm_head is not None else [])
    tensors = {t.data_ptr(): t for m in modules for name, t in [*m.named_parameters(), *m.named_buffers()]
               if "kv_cache" not in name}
    if d.lm_head is None:
        tensors[d.embed_tokens.weight.data_ptr()] = d.embed_tokens.weight
    return sum(t.numel() * t.element_size() for t in tensors.values())


def make_clips(seconds: list[float]) -> list[np.ndarray]:
    clips = []
    for i, s in enumerate(seconds):
        wav = None
        with tempfile.NamedTemporaryFile(suffix=".wav") as f:
            if subprocess.run(["espeak-ng", "-w", f.name, SENTENCES[i % len(SENTENCES)]],
                              capture_output=True).returncode == 0:
                wav = qwen2audio.load_audio(f.name)
        if wav is None:  # no espeak-ng: noise bursts stand in for speech
            wav = np.random.default_rng(i).standard_normal(16000).astype(np.float32) * 0.1
        n = int(s * 16000)
        clips.append(np.resize(wav, n).astype(np.float32))  # repeat the sentence to the wanted length
    return clips


def build_inputs(processor, clips):
    conversations = [[{"role": "user", "content": [{"type": "audio", "audio": c},
                                                   {"type": "text", "text": "What does the speaker say?"}]}]
                     for c in clips]
    prompts = [processor.apply_chat_template(c, add_generation_prompt=True) for c in conversations]
    return processor(text=prompts, audio=clips, sampling_rate=16000)


def time_ours(model, inputs, repeats, compile_):
    gen = Generator(model, compile=compile_)
    one, full = GenerationConfig(max_new_tokens=1), GenerationConfig(max_new_tokens=NEW_TOKENS)
    t = time.perf_counter()
    out = gen.generate(inputs, full)  # warm-up (and compile)
    warmup = time.perf_counter() - t
    ttft = median_time(lambda: gen.generate(inputs, one), repeats)
    total = median_time(lambda: gen.generate(inputs, full), max(1, repeats // 2))
    return {"ttft_s": ttft, "decode_tok_s": (NEW_TOKENS - 1) / (total - ttft), "warmup_s": warmup}, out


def time_hf(hf, inputs, repeats):
    hf.generation_config.eos_token_id = None  # always 64 tokens, as ours
    kwargs = dict(do_sample=False, pad_token_id=151643)

    def run(n):
        with torch.inference_mode():
            return hf.generate(**inputs, max_new_tokens=n, min_new_tokens=n, **kwargs)

    out = run(NEW_TOKENS)
    ttft = median_time(lambda: run(1), repeats)
    total = median_time(lambda: run(NEW_TOKENS), max(1, repeats // 2))
    return {"ttft_s": ttft, "decode_tok_s": (NEW_TOKENS - 1) / (total - ttft)}, out


def prefill_flops(config: Qwen2AudioConfig, inputs) -> float:
    """Matmul FLOPs of the prefill: encoder over the valid frames, projector, decoder over the prompt (2 per MAC)."""
    a, t = config.audio, config.text
    mel = int(inputs["feature_attention_mask"].sum())
    pos = (mel - 1) // 2 + 1
    enc = 2 * pos * (a.n_layers * (4 * a.dim**2 + 2 * a.dim * a.ffn_dim) + 3 * a.dim * a.dim * 2) \
        + 2 * mel * 3 * a.n_mels * a.dim + 4 * a.n_layers * pos**2 * a.dim
    T = int(inputs["attention_mask"].sum())
    per_token = t.n_layers * (2 * t.dim * t.n_heads * t.head_dim + 2 * t.dim * t.n_kv_heads * t.head_dim
                              + 3 * t.dim * t.ffn_dim)
    dec = 2 * T * per_token + 4 * t.n_layers * T**2 * t.n_heads * t.head_dim + 2 * t.dim * t.vocab_size
    return enc + 2 * (pos // 2) * a.dim * t.dim + dec


def top1_agreement(reference_model, quantized_model, inputs, tokens) -> float:
    """Teacher-forced: the fraction of the reference's greedy tokens that the quantised model also ranks first."""
    ids = torch.cat([inputs["input_ids"], tokens], dim=1)
    mask = torch.cat([inputs["attention_mask"], torch.ones_like(tokens)], dim=1)
    with torch.inference_mode():
        logits = quantized_model(input_ids=ids, attention_mask=mask, input_features=inputs["input_features"],
                                 feature_attention_mask=inputs["feature_attention_mask"]).logits
    predicted = logits[:, inputs["input_ids"].shape[1] - 1:-1].argmax(-1)
    return (predicted == tokens).float().mean().item()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="ours only, fewer repeats")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    repeats = 3 if args.quick else args.repeats
    torch.manual_seed(0)
    report: dict = {"cpu": _cpu_name(), "threads": torch.get_num_threads(), "torch": torch.__version__}

    config = Qwen2AudioConfig.from_name("bench-0.5b")
    work = Path(tempfile.mkdtemp(prefix="bench-generate-"))
    model = qwen2audio.Qwen2AudioForConditionalGeneration(config)
    model.save_pretrained(work)
    del model
    clip = make_clips([10.0])
    clips8 = make_clips([4.0, 5.5, 7.0, 8.5, 10.0, 11.5, 13.0, 14.5])
    processor = qwen2audio.Processor.from_pretrained(work)
    inputs = build_inputs(processor, clip)

    bandwidth = read_bandwidth()
    report["read_GBps"] = bandwidth / 1e9
    rows = []

    def limit(model):
        return bandwidth / decode_bytes_per_token(model)

    for dtype in (torch.float32, torch.bfloat16):
        name = str(dtype).removeprefix("torch.")
        ours = use_decode_kernels(qwen2audio.load(work, dtype=dtype))
        lim = limit(ours)
        flops = prefill_flops(config, inputs)
        floor = flops / matmul_flops(dtype)
        r_ours, seq_ours = time_ours(ours, inputs.to(dtype=dtype), repeats, compile_=True)
        entry = {"dtype": name, "limit_tok_s": lim, "prefill_GFLOP": flops / 1e9, "prefill_floor_s": floor,
                 "ours": r_ours}
        if not args.quick:
            from transformers import Qwen2AudioForConditionalGeneration
            hf = Qwen2AudioForConditionalGeneration.from_pretrained(work, dtype=dtype).eval()
            r_hf, seq_hf = time_hf(hf, inputs.to(dtype=dtype), repeats)
            entry["transformers"] = r_hf
            entry["greedy_equal_10s_clip"] = bool(torch.equal(seq_ours, seq_hf))
            del hf
        rows.append(entry)
        print(json.dumps(entry, indent=1), flush=True)
        del ours

    # batch of 8 different clips, fp32: aggregate decode tokens/s against our batch-1 figure
    inputs8 = build_inputs(processor, clips8)
    fp32 = rows[0]
    for max_rows in (1, 8):
        ours = use_decode_kernels(qwen2audio.load(work), gemv_max_rows=max_rows)
        r8, _ = time_ours(ours, inputs8, max(1, repeats // 2), compile_=True)
        r8["aggregate_tok_s"] = 8 * r8["decode_tok_s"]
        r8["x_batch1"] = r8["aggregate_tok_s"] / fp32["ours"]["decode_tok_s"]
        report[f"batch8_gemv_rows_{max_rows}"] = r8
        print(f"batch 8 (fused kernel up to {max_rows} rows):", json.dumps(r8), flush=True)
        del ours

    # int8 and int4: speed against our fp32, and teacher-forced top-1 agreement with fp32 on 8 clips
    reference = qwen2audio.load(work)
    gen = Generator(use_decode_kernels(qwen2audio.load(work)), compile=True)
    for mode in ("int8", "int4"):
        q = quantize(qwen2audio.load(work), mode)
        rq, _ = time_ours(q, inputs, repeats, compile_=True)
        agree = []
        for c in clips8:
            one = build_inputs(processor, [c])
            tokens = gen.generate(one, GenerationConfig(max_new_tokens=NEW_TOKENS))[:, one["input_ids"].shape[1]:]
            agree.append(top1_agreement(reference, q, one, tokens))
        rq["x_fp32"] = rq["decode_tok_s"] / fp32["ours"]["decode_tok_s"]
        rq["limit_tok_s"] = limit(q)
        rq["top1_agreement"] = statistics.mean(agree)
        report[mode] = rq
        print(mode, json.dumps(rq), flush=True)
        del q

    if not args.quick:  # greedy equality with transformers on the 8 clips, one by one
        from transformers import Qwen2AudioForConditionalGeneration
        hf = Qwen2AudioForConditionalGeneration.from_pretrained(work, dtype=torch.float32).eval()
        hf.generation_config.eos_token_id = None
        equal = 0
        for c in clips8:
            one = build_inputs(processor, [c])
            with torch.inference_mode():
                ref = hf.generate(**one, max_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=151643)
            equal += bool(torch.equal(ref, gen.generate(one, GenerationConfig(max_new_tokens=NEW_TOKENS))))
        report["greedy_equal_clips"] = f"{equal}/8"

    report["rows"] = rows
    print_summary(report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))


def print_summary(r: dict) -> None:
    print(f"\nCPU {r['cpu']}, {r['threads']} threads, torch {r['torch']}; measured read bandwidth "
          f"{r['read_GBps']:.1f} GB/s")
    print(f"{'dtype':9} {'ours tok/s':>10} {'hf tok/s':>9} {'ratio':>6} {'limit':>7} {'% limit':>8} "
          f"{'ours TTFT':>9} {'hf TTFT':>8} {'ratio':>6} {'floor':>7}")
    for row in r["rows"]:
        o, h = row["ours"], row.get("transformers")
        print(f"{row['dtype']:9} {o['decode_tok_s']:10.1f} {h['decode_tok_s'] if h else float('nan'):9.1f} "
              f"{o['decode_tok_s'] / h['decode_tok_s'] if h else float('nan'):6.2f} {row['limit_tok_s']:7.1f} "
              f"{100 * o['decode_tok_s'] / row['limit_tok_s']:7.0f}% {o['ttft_s']:9.3f} "
              f"{h['ttft_s'] if h else float('nan'):8.3f} {h['ttft_s'] / o['ttft_s'] if h else float('nan'):6.2f} "
              f"{row['prefill_floor_s']:7.3f}")
    for key in ("batch8_gemv_rows_1", "batch8_gemv_rows_8"):
        b = r[key]
        print(f"{key}: aggregate {b['aggregate_tok_s']:.1f} tok/s = {b['x_batch1']:.2f}x our batch-1 fp32")
    for mode in ("int8", "int4"):
        q = r[mode]
        print(f"{mode}: {q['decode_tok_s']:.1f} tok/s = {q['x_fp32']:.2f}x our fp32 (limit {q['limit_tok_s']:.1f}); "
              f"top-1 agreement with fp32 {100 * q['top1_agreement']:.1f}%")
    if "greedy_equal_clips" in r:
        print(f"greedy output equal to transformers on {r['greedy_equal_clips']} clips")


def _cpu_name() -> str:
    try:
        return next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        return "unknown"


if __name__ == "__main__":
    sys.exit(main())
