"""Decode kernels and weight-only quantisation for the language model (gpt-fast's quantize.py: swap modules at
runtime; the checkpoint stays in full precision).

Decoding one token reads every weight once, so its speed is memory bandwidth ÷ bytes of weights. Two levers:
- `use_decode_kernels`: products of a few rows (a decode step of a batch of up to 8) through a kernel that streams
  the weights once: on x86 CPUs with AVX-512 BF16/VNNI the `cpu_kernels` ops (fp32 and bf16 weights); elsewhere
  `(x * W).sum(-1)` (accumulated in fp32), which `torch.compile` fuses into one pass over W, for one row;
- `quantize(model, "int8")`: int8 weights with one scale per output row (4x fewer bytes than fp32, 2x fewer than
  bf16), multiplied without a dequantised copy by the same kernels (`cpu_kernels.gemv_int8`, or the fused pass);
  a prefill dequantises one layer at a time for BLAS. `"int4"`: two weights per byte, one scale per group of 32
  inputs; on CPU ATen's packed int4 kernel.
Products of more rows (prefill, training) keep the BLAS matmul (oneDNN with AMX for bf16 on Intel CPUs).
Which path wins depends on the CPU: bench/bench_generate.py times them (figures in bench/RESULTS.md).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import cpu_kernels
from .model import Qwen2Audio

# rows (batch x tokens) up to which each decode kernel beats BLAS (bench/bench_generate): the AVX-512 kernels up to
# the most they take; inductor's fused product for one row only
KERNEL_MAX_ROWS = {"avx512": cpu_kernels.MAX_ROWS, "fused": 1}
GEMV_MAX_ROWS = KERNEL_MAX_ROWS["fused"]  # the portable default
INT4_GROUP = 32  # inputs sharing one int4 scale
INT4_INNER_K_TILES = 2  # ATen's int4 packing parameter (CPU)


def decode_kernel_for(weight: torch.Tensor) -> str:
    """'avx512' where the AVX-512 kernels run on this weight (CPU, fp32/bf16/int8, kernels built), else 'fused'."""
    usable = weight.device.type == "cpu" and weight.dtype in (torch.float32, torch.bfloat16, torch.int8)
    return "avx512" if usable and cpu_kernels.available() else "fused"


def _rows(x: torch.Tensor) -> int:
    return x.numel() // x.shape[-1]


def fused_gemv(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor | None = None) -> torch.Tensor:
    """x [..., in] times weight [out, in] (times a per-row scale [out]) as `(x * W).sum(-1)`: compiled, one pass
    over the weight. Products and sums in fp32, as BLAS accumulates bf16 (and as int8 must be dequantised)."""
    y = (x.unsqueeze(-2).float() * weight.float()).sum(-1)
    return (y if scale is None else y * scale.float()).to(x.dtype)


class DecodeLinear(nn.Module):
    """nn.Linear over the same weight, with a streaming matrix-vector path for products of up to `gemv_max_rows`
    rows (None: as many as the kernel beats BLAS for)."""

    decode_kernel = "gemv"

    def __init__(self, weight: nn.Parameter, bias: nn.Parameter | None, gemv_max_rows: int | None = None):
        super().__init__()
        self.weight, self.bias = weight, bias
        self.kernel = decode_kernel_for(weight)
        self.gemv_max_rows = KERNEL_MAX_ROWS[self.kernel] if gemv_max_rows is None else gemv_max_rows

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = _rows(x)
        if rows > self.gemv_max_rows:
            return F.linear(x, self.weight, self.bias)
        if self.kernel == "avx512" and rows <= cpu_kernels.MAX_ROWS and x.dtype == self.weight.dtype:
            return cpu_kernels.gemv(x, self.weight, self.bias)
        y = fused_gemv(x, self.weight)
        return y if self.bias is None else y + self.bias


class Int8Linear(nn.Module):
    """Weight-only int8: W ≈ q * scale[:, None], q int8 [out, in], scale [out] (fp32).

    kernel: the path for products of up to `gemv_max_rows` rows, "avx512" (`cpu_kernels.gemv_int8`) or "fused"
    (inductor's fused pass); None: the first that runs here. Larger products (prefill) dequantise the layer's
    weights for one BLAS matmul (ATen's `_weight_int8pack_mm` is ~20x slower there, and no faster for a few
    rows: bench/RESULTS.md)."""

    decode_kernel = "gemv"
    KERNELS = tuple(KERNEL_MAX_ROWS)

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, gemv_max_rows: int | None = None,
                 kernel: str | None = None):
        super().__init__()
        if kernel not in (None, *self.KERNELS):
            raise ValueError(f"unknown int8 kernel {kernel!r}; choose one of {', '.join(self.KERNELS)}")
        self.kernel = kernel or decode_kernel_for(weight)
        self.gemv_max_rows = KERNEL_MAX_ROWS[self.kernel] if gemv_max_rows is None else gemv_max_rows
        w = weight.detach().float()
        scale = w.abs().amax(-1).clamp(min=1e-12) / 127
        self.register_buffer("q", torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8))
        self.register_buffer("scale", scale)
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)

    def dequantize(self, dtype: torch.dtype) -> torch.Tensor:
        return self.q.to(dtype) * self.scale.to(dtype)[:, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = _rows(x)
        if rows <= self.gemv_max_rows and self.kernel == "avx512" and rows <= cpu_kernels.MAX_ROWS:
            return cpu_kernels.gemv_int8(x, self.q, self.scale, self.bias)
        if rows <= self.gemv_max_rows:
            y = fused_gemv(x, self.q, self.scale)
            return y if self.bias is None else y + self.bias
        return F.linear(x, self.dequantize(x.dtype), self.bias)


class Int4Linear(nn.Module):
    """Weight-only int4, symmetric, one scale per group of INT4_GROUP inputs; two weights per byte. On CPU (out
    features a multiple of 16) in ATen's packed layout, multiplied by its int4 kernel; elsewhere dequantised."""

    decode_kernel = "gemv"

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, gemv_max_rows: int | None = None):
        super().__init__()
        self.gemv_max_rows = GEMV_MAX_ROWS if gemv_max_rows is None else gemv_max_rows
        out_features, in_features = weight.shape
        if in_features % INT4_GROUP:
            raise ValueError(f"int4 needs in_features divisible by {INT4_GROUP}, got {in_features}")
        w = weight.detach().float().view(out_features, in_features // INT4_GROUP, INT4_GROUP)
        scale = w.abs().amax(-1).clamp(min=1e-12) / 7
        q = (torch.round(w / scale[..., None]).clamp(-8, 7) + 8).to(torch.uint8).view(out_features, -1)
        self.aten = weight.device.type == "cpu" and out_features % 16 == 0
        if self.aten:  # ATen computes (q - 8) * scale + zero, per group
            packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q.int(), INT4_INNER_K_TILES)
            scales_and_zeros = torch.stack([scale.T, torch.zeros_like(scale.T)], dim=-1)  # [in/GROUP, out, 2]
            self.register_buffer("packed", packed)
            self.register_buffer("scales_and_zeros", scales_and_zeros.to(weight.dtype))
        else:
            self.register_buffer("packed", q[:, 0::2] | (q[:, 1::2] << 4))  # [out, in/2]
            self.register_buffer("scale", scale.to(weight.dtype))  # [out, in/GROUP]
        self.shape = (out_features, in_features)
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)

    def _aten_matmul(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.ops.aten._weight_int4pack_mm_for_cpu(x.reshape(-1, x.shape[-1]).contiguous(), self.packed, INT4_GROUP,
                                                       self.scales_and_zeros.to(x.dtype))
        return y.view(*x.shape[:-1], self.shape[0])

    def dequantize(self, dtype: torch.dtype) -> torch.Tensor:
        if self.aten:  # the kernel applied to the identity
            return self._aten_matmul(torch.eye(self.shape[1], dtype=dtype)).T.contiguous()
        low = (self.packed & 0xF).to(dtype) - 8
        high = (self.packed >> 4).to(dtype) - 8
        w = torch.stack([low, high], dim=-1).view(self.packed.shape[0], -1, INT4_GROUP)
        return (w * self.scale[..., None].to(dtype)).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.aten:
            y = self._aten_matmul(x)
        else:
            w = self.dequantize(x.dtype)
            y = fused_gemv(x, w) if _rows(x) <= self.gemv_max_rows else F.linear(x, w)
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


def use_decode_kernels(model: Qwen2Audio, gemv_max_rows: int | None = None) -> Qwen2Audio:
    """Route the language model's products of up to `gemv_max_rows` rows (None: where the kernel beats BLAS)
    through the decode kernel (same weights, no copy); larger ones keep BLAS."""
    _swap_decoder_linears(model, lambda w, b: DecodeLinear(w, b, gemv_max_rows))
    return model


def quantize(model: Qwen2Audio, mode: str = "int8", gemv_max_rows: int | None = None) -> Qwen2Audio:
    """Quantise the language model's linear layers and output head in place (weight-only; the audio encoder and
    the embedding lookup stay in full precision). mode: 'int8' or 'int4'."""
    if mode not in ("int8", "int4"):
        raise ValueError(f"unknown quantisation {mode!r}; choose int8 or int4")
    cls = LINEAR_KINDS[mode]
    _swap_decoder_linears(model, lambda w, b: cls(w, b, gemv_max_rows))
    model.quantization = mode
    return model
