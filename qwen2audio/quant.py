"""Decode kernels and weight-only quantisation for the language model (gpt-fast's quantize.py: swap modules at
runtime; the checkpoint stays in full precision).

Decoding one token reads every weight once, so its speed is memory bandwidth ÷ bytes of weights. Two levers:
- `use_decode_kernels`: a matrix-vector product written as `(x * W).sum(-1)`, which `torch.compile` fuses into one
  streaming pass over W (on the CPUs measured here, ~2x the bandwidth that the BLAS call reaches for one row);
- `quantize(model, "int8")`: int8 weights with one fp scale per output row (4x fewer bytes than fp32), dequantised
  on the fly inside the same fused pass. `"int4"`: two weights per byte, one scale per group of 32 inputs.
Larger batches (prefill, training) keep the BLAS matmul.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .model import Qwen2Audio

GEMV_MAX_ROWS = 1  # default rows (batch x tokens) up to which the fused product beats BLAS (bench/bench_generate)
INT4_GROUP = 32  # inputs sharing one int4 scale


def _rows(x: torch.Tensor) -> int:
    return x.numel() // x.shape[-1]


class DecodeLinear(nn.Module):
    """nn.Linear over the same weight, with a fused matrix-vector path for decode steps."""

    decode_kernel = "gemv"

    def __init__(self, weight: nn.Parameter, bias: nn.Parameter | None, gemv_max_rows: int = GEMV_MAX_ROWS):
        super().__init__()
        self.weight, self.bias = weight, bias
        self.gemv_max_rows = gemv_max_rows

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _rows(x) <= self.gemv_max_rows:
            y = (x.unsqueeze(-2) * self.weight).sum(-1)
            return y if self.bias is None else y + self.bias
        return F.linear(x, self.weight, self.bias)


class Int8Linear(nn.Module):
    """Weight-only int8: W ≈ q * scale[:, None], q int8 [out, in], scale [out]."""

    decode_kernel = "gemv"

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, gemv_max_rows: int = GEMV_MAX_ROWS):
        super().__init__()
        self.gemv_max_rows = gemv_max_rows
        w = weight.detach().float()
        scale = w.abs().amax(-1).clamp(min=1e-12) / 127
        self.register_buffer("q", torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8))
        self.register_buffer("scale", scale.to(weight.dtype))
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _rows(x) <= self.gemv_max_rows:
            y = (x.unsqueeze(-2) * self.q.to(x.dtype)).sum(-1) * self.scale
        else:
            y = F.linear(x, self.q.to(x.dtype)) * self.scale
        return y if self.bias is None else y + self.bias


class Int4Linear(nn.Module):
    """Weight-only int4, symmetric, one scale per group of INT4_GROUP inputs; two weights per byte."""

    decode_kernel = "gemv"

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, gemv_max_rows: int = GEMV_MAX_ROWS):
        super().__init__()
        self.gemv_max_rows = gemv_max_rows
        out_features, in_features = weight.shape
        if in_features % INT4_GROUP:
            raise ValueError(f"int4 needs in_features divisible by {INT4_GROUP}, got {in_features}")
        w = weight.detach().float().view(out_features, in_features // INT4_GROUP, INT4_GROUP)
        scale = w.abs().amax(-1).clamp(min=1e-12) / 7
        q = (torch.round(w / scale[..., None]).clamp(-8, 7) + 8).to(torch.uint8).view(out_features, -1)
        self.register_buffer("packed", q[:, 0::2] | (q[:, 1::2] << 4))  # [out, in/2]
        self.register_buffer("scale", scale.to(weight.dtype))  # [out, in/GROUP]
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)

    def dequantize(self, dtype: torch.dtype) -> torch.Tensor:
        low = (self.packed & 0xF).to(dtype) - 8
        high = (self.packed >> 4).to(dtype) - 8
        w = torch.stack([low, high], dim=-1).view(self.packed.shape[0], -1, INT4_GROUP)
        return (w * self.scale[..., None].to(dtype)).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.dequantize(x.dtype)
        y = (x.unsqueeze(-2) * w).sum(-1) if _rows(x) <= self.gemv_max_rows else F.linear(x, w)
        return y if self.bias is None else y + self.bias


LINEAR_KINDS = {"int8": Int8Linear, "int4": Int4Linear}


def _swap_decoder_linears(model: Qwen2Audio, make) -> None:
    decoder = model.decoder
    for layer in decoder.layers:
        for parent in (layer.attn, layer.mlp):
            for name, child in list(parent.named_children()):
                if isinstance(child, (nn.Linear, DecodeLinear)):
                    setattr(parent, name, make(child.weight, child.bias))
    head = decoder.lm_head
    if head is None:  # tied: the head reads the embedding matrix; give it its own (quantised) view
        decoder.lm_head = make(decoder.embed_tokens.weight, None)
    elif isinstance(head, (nn.Linear, DecodeLinear)):
        decoder.lm_head = make(head.weight, head.bias)


def use_decode_kernels(model: Qwen2Audio, gemv_max_rows: int = GEMV_MAX_ROWS) -> Qwen2Audio:
    """Route the language model's products of up to `gemv_max_rows` rows through the fused decode kernel (same
    weights, no copy); larger ones keep BLAS."""
    _swap_decoder_linears(model, lambda w, b: DecodeLinear(w, b, gemv_max_rows))
    return model


def quantize(model: Qwen2Audio, mode: str = "int8", gemv_max_rows: int = GEMV_MAX_ROWS) -> Qwen2Audio:
    """Quantise the language model's linear layers and output head in place (weight-only; the audio encoder and
    the embedding lookup stay in full precision). mode: 'int8' or 'int4'."""
    if mode not in ("int8", "int4"):
        raise ValueError(f"unknown quantisation {mode!r}; choose int8 or int4")
    cls = LINEAR_KINDS[mode]
    _swap_decoder_linears(model, lambda w, b: cls(w, b, gemv_max_rows))
    model.quantization = mode
    return model
