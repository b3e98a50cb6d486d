"""Which attention kernel trains faster on this machine: PyTorch's flash attention or plain matmul + softmax ("math").

    .venv/bin/python bench/bench_train_attention.py [--repeats 5] [--device cpu]

Side by side in one run, alternating the two kernels: forward + backward of `scaled_dot_product_attention` with a
causal padding mask, bf16, over sequence lengths, for the demo model's heads (B 32, 4 query / 2 KV heads of 64) and
7B's (B 4, 28 / 4 of 128); then whole training steps (forward, loss, backward) of the demo model's 4-layer LM under
bf16 autocast at the lengths its pretraining batches have. The training loop picks math below
`train.loop.CPU_MATH_ATTENTION_MAX_TOKENS` on a CPU: the ratios printed here are where that number comes from.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from qwen2audio.machine import median_times
from qwen2audio.model import Qwen2, Qwen2AudioConfig
from qwen2audio.model.qwen2 import causal_padding_mask
from qwen2audio.train.loop import CPU_MATH_ATTENTION_MAX_TOKENS

KERNELS = {"flash": SDPBackend.FLASH_ATTENTION, "math": SDPBackend.MATH}
ANSWER_TOKENS = 8  # supervised tokens per row in the LM step (a task row's answer is short)
DEMO_LM = Path(__file__).resolve().parents[1] / "recipes" / "demo" / "lm.json"
DEMO_VOCAB = 3136  # the demo model's trimmed vocabulary


def padded_mask(batch: int, length: int, generator: torch.Generator, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of length/2..length real tokens, right-padded: the [B, T] 0/1 mask and its [B, 1, T, T] attention mask."""
    lengths = torch.randint(length // 2, length + 1, (batch,), generator=generator)
    attention_mask = (torch.arange(length)[None] < lengths[:, None]).long().to(device)
    return attention_mask, causal_padding_mask(attention_mask)


def attention_case(batch, heads, kv_heads, head_dim, length, device, repeats) -> dict[str, float]:
    g = torch.Generator().manual_seed(length)
    q, k, v = (torch.randn(batch, h, length, head_dim, generator=g).to(device, torch.bfloat16).requires_grad_()
               for h in (heads, kv_heads, kv_heads))
    _, mask = padded_mask(batch, length, g, device)

    def step(kernel):
        def run():
            with sdpa_kernel([kernel]):
                out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
            out.float().sum().backward()
        return run

    return dict(zip(KERNELS, median_times([step(kernel) for kernel in KERNELS.values()], repeats)))


def lm_step_case(length, device, repeats) -> dict[str, float]:
    """The demo LM (recipes/demo/lm.json, trimmed vocabulary): forward, the loss on each row's last ANSWER_TOKENS
    and backward, B 32 rows."""
    text = {**json.loads(DEMO_LM.read_text()), "vocab_size": DEMO_VOCAB}
    config = Qwen2AudioConfig.from_hf_dict({"text_config": text}).text
    torch.manual_seed(0)
    lm = Qwen2(config).to(device)
    g = torch.Generator().manual_seed(length)
    ids = torch.randint(0, config.vocab_size, (32, length), generator=g).to(device)
    attention_mask, mask = padded_mask(32, length, g, device)
    positions = (attention_mask.cumsum(-1) - 1).clamp(min=0)

    def step(kernel):
        def run():
            with torch.autocast(device.type, dtype=torch.bfloat16), sdpa_kernel([kernel]):
                hidden = lm(lm.embed_tokens(ids), positions, mask)
                logits = lm.logits(hidden[:, -ANSWER_TOKENS - 1:-1])  # the loss reads the answers' positions only
                loss = F.cross_entropy(logits.flatten(0, 1).float(), ids[:, -ANSWER_TOKENS:].flatten())
            loss.backward()
            lm.zero_grad(set_to_none=True)
        return run

    return dict(zip(KERNELS, median_times([step(kernel) for kernel in KERNELS.values()], repeats)))


def report(label: str, t: dict[str, float]) -> None:
    print(f"{label:<34} flash {t['flash'] * 1e3:8.1f} ms   math {t['math'] * 1e3:8.1f} ms   "
          f"math/flash {t['math'] / t['flash']:5.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {device}; "
          f"the loop uses math up to {CPU_MATH_ATTENTION_MAX_TOKENS} tokens on a CPU")
    for name, (batch, heads, kv_heads, head_dim) in {"demo": (32, 4, 2, 64), "7B": (4, 28, 4, 128)}.items():
        for length in (64, 128, 160, 192, 256, 512, 768):
            report(f"attention {name} B{batch} T{length}",
                   attention_case(batch, heads, kv_heads, head_dim, length, device, args.repeats))
    for length in (64, 96, 128, 160, 192):
        report(f"demo LM step B32 T{length}", lm_step_case(length, device, args.repeats))


if __name__ == "__main__":
    main()
