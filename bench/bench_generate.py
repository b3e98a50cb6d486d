"""Generation speed, side by side with transformers on the same weights, ratios and physical limits printed.

Config: a Qwen2-0.5B-sized LM (896 wide, 24 layers, 14 heads / 2 KV, FFN 4864, vocab 151936, tied) with a
whisper-base-sized encoder (512 wide, 6 layers, 8 heads, FFN 2048, 128 mels); random weights; a 10 s clip + a short
prompt; 64 new tokens; greedy. Both sides are timed the same way: time to first token = a generate() of one token;
decode tokens/s = 63 / (time of 64 tokens - time of 1); each time the best of several runs.

    .venv/bin/python bench/bench_generate.py --json /tmp/bench_gen.json      # everything (~25 minutes on 2 cores)
    .venv/bin/python bench/bench_generate.py --parts decode,batch8 --json F  # some parts (F keeps the others)
    .venv/bin/python bench/bench_generate.py --quick                        # ours only, fewer repeats
    .venv/bin/python bench/bench_generate.py --parts int8_groups --group-size 128  # int8 kernels, grouped scales

Beside every figure: the limits of the same run. Bandwidth limit = measured read bandwidth ÷ bytes of weights a step
reads (x rows for a batch); compute limit = the step's matmul FLOPs ÷ the measured matmul FLOP/s of that dtype;
time-to-first-token floor = the prefill's matmul FLOPs ÷ the same rate.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import qwen2audio
from qwen2audio.audio import SAMPLE_RATE
from qwen2audio.generate import GenerationConfig, Generator
from qwen2audio.machine import Stopwatch, best_time, matmul_gflops, read_bandwidth
from qwen2audio.model import Qwen2AudioConfig
from qwen2audio.quant import decode_kernel_for, quantize, use_decode_kernels

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
            wav = np.random.default_rng(i).standard_normal(SAMPLE_RATE).astype(np.float32) * 0.1
        n = int(s * SAMPLE_RATE)
        clips.append(np.resize(wav, n).astype(np.float32))  # repeat the sentence to the wanted length
    return clips


def build_inputs(processor, clips):
    conversations = [[{"role": "user", "content": [{"type": "audio", "audio": c},
                                                   {"type": "text", "text": "What does the speaker say?"}]}]
                     for c in clips]
    prompts = [processor.apply_chat_template(c, add_generation_prompt=True) for c in conversations]
    return processor(text=prompts, audio=clips, sampling_rate=SAMPLE_RATE)


def time_ours(model, inputs, repeats, compile_):
    gen = Generator(model, compile=compile_)
    one, full = GenerationConfig(max_new_tokens=1), GenerationConfig(max_new_tokens=NEW_TOKENS)
    watch = Stopwatch()
    out = gen.generate(inputs, full)  # warm-up (and compile)
    warmup = watch.seconds()
    ttft = best_time(lambda: gen.generate(inputs, one), repeats)
    total = best_time(lambda: gen.generate(inputs, full), max(2, repeats // 2))
    return {"ttft_s": ttft, "decode_tok_s": (NEW_TOKENS - 1) / (total - ttft), "warmup_s": warmup}, out


def time_hf(hf, inputs, repeats):
    hf.generation_config.eos_token_id = None  # always 64 tokens, as ours
    kwargs = dict(do_sample=False, pad_token_id=151643)

    def run(n):
        with torch.inference_mode():
            return hf.generate(**inputs, max_new_tokens=n, min_new_tokens=n, **kwargs)

    out = run(NEW_TOKENS)
    ttft = best_time(lambda: run(1), repeats)
    total = best_time(lambda: run(NEW_TOKENS), max(2, repeats // 2))
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


def prefill_gemm_seconds(model, inputs, repeats: int = 3) -> float:
    """The prefill's linear layers and convolutions alone: each on its own (cold) weights and with the row count the
    prefill gives it (the encoder's valid positions, the pooled audio for the projector, the prompt for the decoder,
    one row for the last decoder layer after attention and for the lm head), in model order, no other op between.
    A floor for this engine's prefill at BLAS's rate for these very shapes, where the 2048² rate flatters."""
    mel = int(inputs["feature_attention_mask"].sum())
    pos, T = (mel - 1) // 2 + 1, int(inputs["attention_mask"].sum())
    dtype, last = model.projector.linear.weight.dtype, len(model.decoder.layers) - 1
    enc = model.audio_encoder
    calls = [(enc.conv1, torch.randn(1, enc.conv1.in_channels, mel, dtype=dtype)),
             (enc.conv2, torch.randn(1, enc.conv2.in_channels, mel, dtype=dtype))]
    for name, module in model.named_modules():
        if not hasattr(module, "weight") or getattr(module.weight, "ndim", 0) != 2 or name.startswith(
                ("decoder.embed_tokens", "decoder.lm_head")):  # the head: below, whether tied or wrapped
            continue
        if name.startswith("audio_encoder."):
            rows = pos
        elif name.startswith("projector."):
            rows = pos // 2
        else:  # decoder.layers.N....: the last layer needs its queries' and MLP's last row only
            layer = int(name.split(".")[2])
            rows = 1 if layer == last and not name.endswith(("k_proj", "v_proj")) else T
        x = torch.randn(rows, module.weight.shape[1], dtype=dtype)
        calls.append((lambda x, w=module.weight, b=module.bias: torch.nn.functional.linear(x, w, b), x))
    head = model.decoder.embed_tokens.weight  # tied: the lm head reads the embedding matrix, one row
    calls.append((lambda x: torch.nn.functional.linear(x, head), torch.randn(1, head.shape[1], dtype=dtype)))

    def run():
        with torch.inference_mode():
            for fn, x in calls:
                fn(x)
    return best_time(run, repeats)


def top1_agreement(model, inputs, tokens) -> float:
    """Teacher-forced: the fraction of the reference's greedy tokens `tokens` that `model` also ranks first."""
    ids = torch.cat([inputs["input_ids"], tokens], dim=1)
    mask = torch.cat([inputs["attention_mask"], torch.ones_like(tokens)], dim=1)
    with torch.inference_mode():
        logits = model(input_ids=ids, attention_mask=mask, input_features=inputs["input_features"],
                       feature_attention_mask=inputs["feature_attention_mask"]).logits
    predicted = logits[:, inputs["input_ids"].shape[1] - 1:-1].argmax(-1)
    return (predicted == tokens).float().mean().item()


PARTS = ("decode", "batch8", "quant", "equality", "int8_groups")
INT8_VARIANTS = (("channel", "avx512"), ("group", "fused"), ("group", "avx512"))  # (scales, decode kernel)


def time_alternating(generators: dict, inputs, rounds: int) -> dict:
    """Decode tokens/s of each generator (warmed up), timed in turn round after round so that a change in the
    machine's load touches all alike; per generator the best time of one token and of NEW_TOKENS."""
    one, full = GenerationConfig(max_new_tokens=1), GenerationConfig(max_new_tokens=NEW_TOKENS)
    for gen in generators.values():
        gen.generate(inputs, full)  # warm-up (and compile)
    best = {name: [float("inf"), float("inf")] for name in generators}
    for _ in range(rounds):
        for name, gen in generators.items():
            best[name][0] = min(best[name][0], best_time(lambda: gen.generate(inputs, one), 1))
            best[name][1] = min(best[name][1], best_time(lambda: gen.generate(inputs, full), 1))
    return {name: {"ttft_s": t1, "decode_tok_s": (NEW_TOKENS - 1) / (t64 - t1)} for name, (t1, t64) in best.items()}


def int8_group_rows(work: Path, inputs, group_size: int, dtype_name: str, rounds: int, limits) -> list[dict]:
    """int8 decode with a scale per row (AVX-512 kernel) and per group of `group_size` inputs (W8A16's layout) on
    the fused per-group pass and on the AVX-512 kernel, `dtype_name` activations, compiled, timed alternately."""
    dtype = getattr(torch, dtype_name)
    models = {f"{scales} {kernel}": quantize(qwen2audio.load(work, dtype=dtype), "int8", kernel=kernel,
                                            group_size=group_size if scales == "group" else None)
              for scales, kernel in INT8_VARIANTS}
    speeds = time_alternating({name: Generator(m, compile=True) for name, m in models.items()},
                              inputs.to(dtype=dtype), rounds)
    return [{"variant": name, "group_size": group_size if name.startswith("group") else "row",
             "activations": dtype_name, **limits(m, dtype_name), "GB_per_token": decode_bytes_per_token(m) / 1e9,
             "ours": speeds[name]} for name, m in models.items()]


def limits_of(bandwidth: float, flops_per_s: float, bytes_per_step: int, flops_per_row: float, rows: int) -> dict:
    """The decode's two physical limits for `rows` sequences per step: reading the weights once per step, and doing
    the step's matmul FLOPs at the measured matmul rate; aggregate tokens/s."""
    return {"bandwidth_tok_s": rows * bandwidth / bytes_per_step,
            "compute_tok_s": flops_per_s / flops_per_row,
            "limit_tok_s": min(rows * bandwidth / bytes_per_step, flops_per_s / flops_per_row)}


def decode_flops_per_token(config: Qwen2AudioConfig) -> float:
    t = config.text
    per_layer = 2 * t.dim * t.n_heads * t.head_dim + 2 * t.dim * t.n_kv_heads * t.head_dim + 3 * t.dim * t.ffn_dim
    return 2 * (t.n_layers * per_layer + t.dim * t.vocab_size)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="ours only, fewer repeats")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {', '.join(PARTS)}")
    parser.add_argument("--json", type=Path, help="also write the figures here (parts already there are kept)")
    parser.add_argument("--config", default="bench-0.5b", help="a named config (tiny-random: a smoke test)")
    parser.add_argument("--group-size", type=int, default=128, help="int8_groups: inputs per scale (W8A16's 128)")
    parser.add_argument("--activations", default="bfloat16", choices=("float32", "bfloat16"),
                        help="int8_groups: the activations' dtype")
    args = parser.parse_args()
    parts = args.parts.split(",")
    if not set(parts) <= set(PARTS):
        parser.error(f"--parts: choose from {', '.join(PARTS)}")
    repeats = 3 if args.quick else args.repeats
    torch.manual_seed(0)
    # one process compiles the decode step for every model, dtype and batch here: more than dynamo's default 8
    torch._dynamo.config.recompile_limit = 64
    report: dict = {}
    if args.json and args.json.exists():
        report = json.loads(args.json.read_text())
    report.update({"cpu": _cpu_name(), "threads": torch.get_num_threads(), "torch": torch.__version__,
                   "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                   "load_at_start": os.getloadavg()[0]})

    config = Qwen2AudioConfig.from_name(args.config)
    work = Path(tempfile.mkdtemp(prefix="bench-generate-"))
    model = qwen2audio.Qwen2AudioForConditionalGeneration(config)
    model.save_pretrained(work)
    del model
    clip = make_clips([10.0])
    clips8 = make_clips([4.0, 5.5, 7.0, 8.5, 10.0, 11.5, 13.0, 14.5])
    processor = qwen2audio.Processor.from_pretrained(work)
    inputs, inputs8 = build_inputs(processor, clip), build_inputs(processor, clips8)

    reads = read_bandwidth()
    bandwidth = max(reads.values())
    dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16}
    matmul = {name: matmul_gflops(dtype) * 1e9 for name, dtype in dtypes.items()}  # FLOP/s
    report.update(read_GBps=bandwidth / 1e9, read_probes_GBps={k: v / 1e9 for k, v in reads.items()},
                  matmul_GFLOPs={k: v / 1e9 for k, v in matmul.items()},
                  decode_kernel=decode_kernel_for(torch.empty(0)))
    flops_row = decode_flops_per_token(config)
    print(f"read bandwidth {report['read_probes_GBps']} GB/s, matmul GFLOP/s {report['matmul_GFLOPs']}", flush=True)

    def limits(model, dtype_name, rows=1):
        return limits_of(bandwidth, matmul[dtype_name], decode_bytes_per_token(model), flops_row, rows)

    if "decode" in parts:  # batch 1, each dtype, against transformers in the same dtype
        rows = []
        for name, dtype in dtypes.items():
            ours = use_decode_kernels(qwen2audio.load(work, dtype=dtype))
            flops = prefill_flops(config, inputs)
            entry = {"dtype": name, **limits(ours, name), "GB_per_token": decode_bytes_per_token(ours) / 1e9,
                     "prefill_GFLOP": flops / 1e9, "prefill_floor_s": flops / matmul[name],
                     "prefill_gemm_s": prefill_gemm_seconds(ours, inputs.to(dtype=dtype))}
            entry["ours"], seq_ours = time_ours(ours, inputs.to(dtype=dtype), repeats, compile_=True)
            del ours
            if not args.quick:
                from transformers import Qwen2AudioForConditionalGeneration
                hf = Qwen2AudioForConditionalGeneration.from_pretrained(work, dtype=dtype).eval()
                entry["transformers"], seq_hf = time_hf(hf, inputs.to(dtype=dtype), repeats)
                entry["greedy_equal_10s_clip"] = bool(torch.equal(seq_ours, seq_hf))
                del hf
            rows.append(entry)
            print(json.dumps(entry), flush=True)
        report["rows"] = rows

    if "batch8" in parts:  # 8 different clips: aggregate tokens/s, the decode kernel or BLAS for the 8 rows
        batch8 = []
        for name, dtype in dtypes.items():
            for max_rows in (8, 1):
                ours = use_decode_kernels(qwen2audio.load(work, dtype=dtype), gemv_max_rows=max_rows)
                r8, _ = time_ours(ours, inputs8.to(dtype=dtype), max(2, repeats // 2), compile_=True)
                kernel = ours.decoder.layers[0].mlp.up_proj.kernel if max_rows == 8 else "blas"
                entry = {"dtype": name, "kernel_8_rows": kernel,
                         **limits(ours, name, rows=8), "ours": r8, "aggregate_tok_s": 8 * r8["decode_tok_s"]}
                del ours
                if max_rows == 8 and not args.quick:
                    from transformers import Qwen2AudioForConditionalGeneration
                    hf = Qwen2AudioForConditionalGeneration.from_pretrained(work, dtype=dtype).eval()
                    r_hf, _ = time_hf(hf, inputs8.to(dtype=dtype), max(2, repeats // 2))
                    entry["transformers_aggregate_tok_s"] = 8 * r_hf["decode_tok_s"]
                    del hf
                batch8.append(entry)
                print("batch 8:", json.dumps(entry), flush=True)
        report["batch8"] = batch8

    if "int8_groups" in parts:
        report["int8_groups"] = int8_group_rows(work, inputs, args.group_size, args.activations, repeats, limits)

    # int8 / int4 (fp32 and bf16 activations): speed, and teacher-forced top-1 agreement with fp32 on 8 clips
    gen = Generator(use_decode_kernels(qwen2audio.load(work)), compile=True)
    references = []
    for c in clips8 if {"quant", "equality"} & set(parts) else []:
        one = build_inputs(processor, [c])
        references.append((one, gen.generate(one, GenerationConfig(max_new_tokens=NEW_TOKENS))))
    if "quant" in parts:
        quant = []
        for mode, name in (("int8", "float32"), ("int8", "bfloat16"), ("int4", "bfloat16")):
            q = quantize(qwen2audio.load(work, dtype=dtypes[name]), mode)
            rq, _ = time_ours(q, inputs.to(dtype=dtypes[name]), repeats, compile_=True)
            agree = [top1_agreement(q, {k: v.to(dtype=dtypes[name]) if v.is_floating_point() else v
                                                   for k, v in one.items()}, seq[:, one["input_ids"].shape[1]:])
                     for one, seq in references]
            entry = {"mode": mode, "activations": name, **limits(q, name), "GB_per_token":
                     decode_bytes_per_token(q) / 1e9, "ours": rq, "top1_agreement": statistics.mean(agree)}
            r8, _ = time_ours(q, inputs8.to(dtype=dtypes[name]), max(2, repeats // 2), compile_=True)
            entry["batch8_aggregate_tok_s"] = 8 * r8["decode_tok_s"]
            quant.append(entry)
            print(mode, json.dumps(entry), flush=True)
            del q
        report["quant"] = quant

    if "equality" in parts and not args.quick:  # greedy equality with transformers on the 8 clips, one by one
        from transformers import Qwen2AudioForConditionalGeneration
        hf = Qwen2AudioForConditionalGeneration.from_pretrained(work, dtype=torch.float32).eval()
        hf.generation_config.eos_token_id = None
        equal = 0
        for one, seq in references:
            with torch.inference_mode():
                ref = hf.generate(**one, max_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=151643)
            equal += bool(torch.equal(ref, seq))
        report["greedy_equal_clips"] = f"{equal}/8"

    report["load_at_end"] = os.getloadavg()[0]
    print_summary(report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))


def _ratio(a, b) -> str:
    return f"{a / b:.2f}x" if a and b else "-"


def print_summary(r: dict) -> None:
    print(f"\nCPU {r['cpu']}, {r['threads']} threads, torch {r['torch']}, decode kernel {r['decode_kernel']}; read "
          f"bandwidth {r['read_GBps']:.1f} GB/s (best of {r['read_probes_GBps']}); matmul GFLOP/s "
          f"{r['matmul_GFLOPs']}; load {r['load_at_start']:.1f} at the start, {r['load_at_end']:.1f} at the end")
    if "rows" in r:
        print("batch 1     ours tok/s  transformers  ratio  limit (% ours)  |  TTFT ours  transformers  ratio  floor  "
              "GEMMs")
        for row in r["rows"]:
            o, h = row["ours"], row.get("transformers", {})
            print(f"{row['dtype']:10} {o['decode_tok_s']:10.1f} {h.get('decode_tok_s', float('nan')):12.1f} "
                  f"{_ratio(o['decode_tok_s'], h.get('decode_tok_s')):>6} {row['limit_tok_s']:7.1f} "
                  f"({100 * o['decode_tok_s'] / row['limit_tok_s']:3.0f}%)  |  {o['ttft_s']:8.3f}s "
                  f"{h.get('ttft_s', float('nan')):12.3f}s {_ratio(h.get('ttft_s'), o['ttft_s']):>6} "
                  f"{row['prefill_floor_s']:6.3f}s {row.get('prefill_gemm_s', float('nan')):6.3f}s")
        print("  (floor: the prefill's matmul FLOPs at the 2048² rate; GEMMs: its linear layers and convolutions "
              "alone, on their weights and row counts, timed in the same run)")
    batch1 = {row["dtype"]: row["ours"]["decode_tok_s"] for row in r.get("rows", [])}
    for b in r.get("batch8", []):
        print(f"batch 8 {b['dtype']:9} {b['kernel_8_rows']:5}: aggregate {b['aggregate_tok_s']:6.1f} tok/s "
              f"(limit {b['limit_tok_s']:.0f}: bandwidth {b['bandwidth_tok_s']:.0f}, compute {b['compute_tok_s']:.0f})"
              f" = {_ratio(b['aggregate_tok_s'], batch1.get(b['dtype']))} our batch 1; transformers "
              f"{b.get('transformers_aggregate_tok_s', float('nan')):.1f}")
    fp32 = batch1.get("float32")
    for q in r.get("quant", []):
        print(f"{q['mode']} ({q['activations']} activations): {q['ours']['decode_tok_s']:.1f} tok/s = "
              f"{_ratio(q['ours']['decode_tok_s'], fp32)} our fp32 (limit {q['limit_tok_s']:.1f}, "
              f"{100 * q['ours']['decode_tok_s'] / q['limit_tok_s']:.0f}%); TTFT {q['ours']['ttft_s']:.3f}s; batch 8 "
              f"{q['batch8_aggregate_tok_s']:.1f} tok/s; top-1 agreement with fp32 {100 * q['top1_agreement']:.1f}%")
    for q in r.get("int8_groups", []):
        print(f"int8 scales per {q['group_size']}, {q['variant'].split()[1]} kernel ({q['activations']} "
              f"activations): {q['ours']['decode_tok_s']:.1f} tok/s (limit {q['limit_tok_s']:.1f}, "
              f"{100 * q['ours']['decode_tok_s'] / q['limit_tok_s']:.0f}%; {q['GB_per_token']:.3f} GB a token)")
    if "greedy_equal_clips" in r:
        print(f"greedy output equal to transformers on {r['greedy_equal_clips']} clips")


def _cpu_name() -> str:
    try:
        return next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        return "unknown"


if __name__ == "__main__":
    sys.exit(main())
