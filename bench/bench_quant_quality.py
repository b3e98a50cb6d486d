"""Weight-only int8 / int4 against the full-precision model on a synthetic test split: top-1 agreement under
teacher forcing, and the scores of `eval --benchmark synth` side by side.

    .venv/bin/qwen2audio synth --out /tmp/q-corpus --clips 500 --seed 0 --test-fraction 0.5 \\
        --tasks asr:8,noisy_asr:2,s2tt:3,voice_chat:2,facts:2,dialog:2,compare,lid,gender,sound,count,style,pitch,order,loudness,caption,numbers
    .venv/bin/python bench/bench_quant_quality.py --data /tmp/q-corpus/eval [--model DIR] [--out /tmp/q-eval]

The full-precision model (as stored: bf16 for the demo model) answers every test item greedily; each scheme's model
then reads the same prompt and answer (teacher forcing), and agreement is the share of answer positions where its
top-1 token equals the full-precision model's. Schemes: int8 one scale per row (`quantize(model, "int8")`), w8a16
and w4a16 in groups of 128 (what `qwen2audio quantize` and llm-compressor write), int4 in groups of 32 (the
`--quantize int4` default). The scores are those of the eval runner, per task.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

import qwen2audio
from qwen2audio.api import default_model_path
from qwen2audio.eval.datasets import get_benchmark, load_items
from qwen2audio.eval.runner import LocalPredictor, evaluate

SCHEMES = {"int8 per row": ("int8", None), "w8a16 g128": ("int8", 128), "w4a16 g128": ("int4", 128),
           "int4 g32": ("int4", 32)}
MAX_NEW_TOKENS = 64
BATCH = 8


def teacher_forced_batches(model, items):
    """(inputs with the full-precision answers appended, answer-position mask [B, T-1], full-precision top-1 there)."""
    predictor = LocalPredictor(model)
    for start in range(0, len(items), BATCH):
        inputs = predictor.inputs(items[start:start + BATCH])
        with torch.no_grad():
            sequences = model.generate(**inputs, max_new_tokens=MAX_NEW_TOKENS, do_sample=False)
        T = inputs["input_ids"].shape[1]
        answer = sequences[:, T:]
        ended = torch.isin(answer, torch.tensor(model.generation_config_for().eos_token_id))
        real = (ended.long().cumsum(-1) - ended.long()) == 0  # tokens up to and including the first eos
        full = dict(inputs, input_ids=sequences, attention_mask=torch.cat([inputs["attention_mask"], real.long()], 1))
        positions = torch.zeros(sequences.shape[0], sequences.shape[1] - 1, dtype=torch.bool)
        positions[:, T - 1:] = real  # the logits at t predict token t + 1: the answer's tokens
        yield full, positions


def percent(score) -> float:
    """A score as the results table shows it: shares (accuracy, exact match) in %, the rest as they are."""
    return 100 * score.value if not score.unit else score.value


def top1(model, inputs) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs).logits[:, :-1].argmax(-1)


def agreement(reference, models: dict, items) -> dict[str, float]:
    same = dict.fromkeys(models, 0)
    total = 0
    for inputs, positions in teacher_forced_batches(reference, items):
        expected = top1(reference, inputs)[positions]
        total += expected.numel()
        for name, model in models.items():
            same[name] += int((top1(model, inputs)[positions] == expected).sum())
    return {name: same[name] / total for name in models} | {"positions": total}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="a synth corpus' eval/ folder")
    parser.add_argument("--model", default=None, help="checkpoint directory (default: the demo model)")
    parser.add_argument("--out", default="/tmp/bench-quant-quality", help="predictions and results per scheme")
    parser.add_argument("--limit", type=int, default=None, help="items per source")
    parser.add_argument("--json", default=None, help="also write the figures here")
    args = parser.parse_args()
    path = args.model or default_model_path()
    reference = qwen2audio.load(path)
    models = {name: qwen2audio.quantize(qwen2audio.load(path), mode, group_size=group)
              for name, (mode, group) in SCHEMES.items()}
    items = load_items(get_benchmark("synth"), args.data, args.limit)
    agree = agreement(reference, models, items)
    scores = {}
    for name, model in {"full precision": reference, **models}.items():
        results = evaluate("synth", args.data, LocalPredictor(model), Path(args.out) / name.replace(" ", "-"),
                           limit=args.limit, progress=False)
        scores[name] = {f"{task}, {s.unit or '%'}": round(percent(s), 1) for task, s in results.tasks.items()}
    print(f"{path}: {len(items)} test items, {agree['positions']} answer positions (teacher-forced)")
    print("scheme          top-1 agreement")
    for name in models:
        print(f"{name:<15} {100 * agree[name]:6.2f} %")
    tasks = sorted(scores["full precision"])
    print("\n" + "task".ljust(28) + "".join(f"{name:>16}" for name in scores))
    for task in tasks:
        print(f"{task:<28}" + "".join(f"{scores[name].get(task, float('nan')):>16}" for name in scores))
    if args.json:
        Path(args.json).write_text(json.dumps({"agreement": agree, "scores": scores}, indent=1))


if __name__ == "__main__":
    main()
