"""Decode kernels and weight-only quantisation for the language model (gpt-fast's quantize.py: swap modules at
runtime), from a full-precision checkpoint or from integers and scales read from one (`QuantizedWeight`, the layout
of compressed-tensors: a scale, and for asymmetric schemes a zero point, per group of inputs of each row).

Decoding one token reads every weight once, so its speed is memory bandwidth ÷ bytes of weights. Two levers:
- `use_decode_kernels`: products of a few rows (a decode step of a batch of up to 8) through a kernel that streams
  the weights once: on x86 CPUs with AVX-512 BF16/VNNI the `cpu_kernels` ops (fp32 and bf16 weights); elsewhere
  `(x * W).sum(-1)` (accumulated in fp32), which `torch.compile` fuses into one pass over W, for one row;
- `quantize(model, "int8")`: int8 weights with one scale per output row (4x fewer bytes than fp32, 2x fewer than
  bf16), multiplied without a dequantised copy by the same kernels (`cpu_kernels.gemv_int8`, or the fused pass);
  a prefill dequantises one layer at a time for BLAS. Symmetric scales per group of inputs (W8A16 and GGUF q8_0
  checkpoints) take the same AVX-512 kernel; zero points (asymmetric) go through the fused pass, group by group
  (`grouped_gemv`). `"int4"`: two weights per byte, one scale per group of 32 inputs; on CPU ATen's packed int4
  kernel.
Products of more rows (prefill, training) keep the BLAS matmul (oneDNN with AMX for bf16 on Intel CPUs).
Which path wins depends on the CPU: bench/bench_generate.py times them (figures in bench/RESULTS.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from . import cpu_kernels
from .model import Qwen2Audio

# rows (batch x tokens) up to which each decode kernel beats BLAS (bench/bench_generate): the AVX-512 kernels up to
# the most they take; inductor's fused product for one row only
KERNEL_MAX_ROWS = {"avx512": cpu_kernels.MAX_ROWS, "fused": 1}
GEMV_MAX_ROWS = KERNEL_MAX_ROWS["fused"]  # the portable default
INT4_GROUP = 32  # inputs sharing one int4 scale (`quantize`'s default)
ATEN_INT4_GROUPS = (256, 128, 64, 32)  # the group sizes ATen's CPU int4 kernel takes
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


@dataclass
class QuantizedWeight:
    """W ≈ (q - zero_point) * scale, one scale (and zero point) per group of `group_size` consecutive inputs of a row:
    q int8 [out, in] holding signed `bits`-bit values, scale [out, in / group_size] (one column: per output
    channel), zero_point None (symmetric) or int8 like scale. The layout compressed-tensors' int formats describe."""

    q: torch.Tensor
    scale: torch.Tensor
    bits: int
    zero_point: torch.Tensor | None = None

    @property
    def group_size(self) -> int:
        return self.q.shape[1] // self.scale.shape[1]

    def dequantize(self, dtype: torch.dtype) -> torch.Tensor:
        """Each weight as one product of its integer and its scale in fp32, rounded once to `dtype`."""
        out_features, in_features = self.q.shape
        q = self.q.float().view(out_features, -1, self.group_size)
        if self.zero_point is not None:
            q = q - self.zero_point.float()[..., None]
        return (q * self.scale.float()[..., None]).view(out_features, in_features).to(dtype)

    def to(self, device: str | torch.device, scale_dtype: torch.dtype | None = None) -> "QuantizedWeight":
        zero_point = None if self.zero_point is None else self.zero_point.to(device)
        return QuantizedWeight(self.q.to(device), self.scale.to(device, scale_dtype or self.scale.dtype), self.bits,
                               zero_point)


def quantize_weight(weight: torch.Tensor, bits: int, group_size: int | None = None) -> QuantizedWeight:
    """Round-to-nearest symmetric quantisation as llm-compressor's RTN does: scale = max|w| of the group / half the
    integer range (127.5 for 8 bits, 7.5 for 4), rounded to the weight's dtype (the dtype it is stored in) before the
    weights are divided by it; integers clamped to [-2^(bits-1), 2^(bits-1) - 1]. group_size None: per row."""
    out_features, in_features = weight.shape
    group_size = group_size or in_features
    if in_features % group_size:
        raise ValueError(f"{bits}-bit quantisation in groups of {group_size} needs in_features divisible by "
                         f"{group_size}, got {in_features}")
    w = weight.detach().float().view(out_features, in_features // group_size, group_size)
    half_range = (2**bits - 1) / 2
    scale = (w.abs().amax(-1) / half_range).to(weight.dtype).float()
    scale = torch.where(scale == 0, torch.finfo(weight.dtype).eps, scale)  # an all-zero group stays zero
    low, high = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    q = torch.round(w / scale[..., None]).clamp(low, high).to(torch.int8).view(out_features, in_features)
    return QuantizedWeight(q, scale.to(weight.dtype), bits)


def grouped_gemv(x: torch.Tensor, weight: QuantizedWeight) -> torch.Tensor:
    """x [..., in] times the dequantised weight as `fused_gemv` computes it, group by group: each group's integer
    products summed in fp32, less its zero point times the group's inputs, times its scale."""
    out_features, in_features = weight.q.shape
    groups = in_features // weight.group_size
    xg = x.float().view(*x.shape[:-1], 1, groups, weight.group_size)
    y = (xg * weight.q.float().view(out_features, groups, weight.group_size)).sum(-1)  # [..., out, groups]
    if weight.zero_point is not None:
        y = y - weight.zero_point.float() * xg.sum(-1)
    return (y * weight.scale.float()).sum(-1).to(x.dtype)


def avx512_int8_layout(weight: QuantizedWeight) -> bool:
    """Whether `cpu_kernels.gemv_int8` multiplies by this weight: symmetric, one scale per row or per group of a
    multiple of 32 inputs (its vectors of 32 int8 weights never straddle two groups)."""
    per_row = weight.scale.shape[1] == 1
    return weight.zero_point is None and (per_row or weight.group_size % 32 == 0)


class Int8Linear(nn.Module):
    """Weight-only int8: W ≈ (q - zero_point) * scale per group of inputs (`QuantizedWeight`), q int8 [out, in].

    Built from a full-precision weight (quantised per output row, or in groups of `group_size`) or from a
    `QuantizedWeight` read from a checkpoint. kernel: the path for products of up to `gemv_max_rows` rows, "avx512"
    (`cpu_kernels.gemv_int8`: symmetric, a scale per row or per group of a multiple of 32 inputs) or "fused"
    (inductor's fused pass, any groups and zero points); None: the first that runs here. Larger products (prefill)
    dequantise the layer's weights for one BLAS matmul (ATen's `_weight_int8pack_mm` is ~20x slower there, and no
    faster for a few rows: bench/RESULTS.md)."""

    decode_kernel = "gemv"
    KERNELS = tuple(KERNEL_MAX_ROWS)

    def __init__(self, weight: torch.Tensor | QuantizedWeight, bias: torch.Tensor | None,
                 gemv_max_rows: int | None = None, kernel: str | None = None, group_size: int | None = None):
        super().__init__()
        if kernel not in (None, *self.KERNELS):
            raise ValueError(f"unknown int8 kernel {kernel!r}; choose one of {', '.join(self.KERNELS)}")
        quantized = weight if isinstance(weight, QuantizedWeight) else quantize_weight(weight, 8, group_size)
        self.register_buffer("q", quantized.q)
        self.register_buffer("scale", quantized.scale.float())  # [out, groups]
        self.register_buffer("zero_point", quantized.zero_point)
        self.kernel = kernel or (decode_kernel_for(self.q) if avx512_int8_layout(quantized) else "fused")
        if self.kernel == "avx512" and not avx512_int8_layout(quantized):
            raise ValueError("the avx512 int8 kernel takes symmetric scales, per row or per group of a multiple of "
                             "32 inputs; use kernel='fused'")
        self.gemv_max_rows = KERNEL_MAX_ROWS[self.kernel] if gemv_max_rows is None else gemv_max_rows
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)

    def quantized_weight(self) -> QuantizedWeight:
        return QuantizedWeight(self.q, self.scale, 8, self.zero_point)

    def dequantize(self, dtype: torch.dtype) -> torch.Tensor:
        return self.quantized_weight().dequantize(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = _rows(x)
        if rows <= self.gemv_max_rows and self.kernel == "avx512" and rows <= cpu_kernels.MAX_ROWS:
            return cpu_kernels.gemv_int8(x, self.q, self.scale, self.bias)
        if rows <= self.gemv_max_rows:
            y = grouped_gemv(x, self.quantized_weight())
            return y if self.bias is None else y + self.bias
        return F.linear(x, self.dequantize(x.dtype), self.bias)


def aten_int4_group(group_size: int, in_features: int) -> int | None:
    """The largest group size ATen's int4 kernel takes that splits `group_size` evenly (a finer split of the same
    scales is the same weight), or None."""
    return next((g for g in ATEN_INT4_GROUPS if group_size % g == 0 and in_features % g == 0), None)


class Int4Linear(nn.Module):
    """Weight-only int4, one scale (and zero point, when asymmetric) per group of inputs; two weights per byte.

    Built from a full-precision weight (symmetric, groups of `group_size`) or a `QuantizedWeight` read from a
    checkpoint. On CPU (out features a multiple of 16, groups that ATen's sizes split) in ATen's packed layout,
    multiplied by its int4 kernel; elsewhere stored as bytes of two weights and dequantised per product."""

    decode_kernel = "gemv"

    def __init__(self, weight: torch.Tensor | QuantizedWeight, bias: torch.Tensor | None,
                 gemv_max_rows: int | None = None, group_size: int = INT4_GROUP):
        super().__init__()
        self.gemv_max_rows = GEMV_MAX_ROWS if gemv_max_rows is None else gemv_max_rows
        quantized = weight if isinstance(weight, QuantizedWeight) else quantize_weight(weight, 4, group_size)
        self.shape = tuple(quantized.q.shape)
        dtype = quantized.scale.dtype  # the checkpoint's (or the full-precision weight's) dtype
        self.aten_group = aten_int4_group(quantized.group_size, self.shape[1])
        self.aten = quantized.q.device.type == "cpu" and self.shape[0] % 16 == 0 and self.aten_group is not None
        if self.aten:
            self._store_aten(quantized, dtype)
        else:
            unsigned = (quantized.q + 8).to(torch.uint8)
            self.register_buffer("packed", unsigned[:, 0::2] | (unsigned[:, 1::2] << 4))  # [out, in/2]
            self.register_buffer("scale", quantized.scale.to(dtype))  # [out, groups]
            self.register_buffer("zero_point", quantized.zero_point)
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)

    def _store_aten(self, quantized: QuantizedWeight, dtype: torch.dtype) -> None:
        """ATen computes (u - 8) * scale + zero per group of `aten_group`, u the unsigned nibble: zero is
        -zero_point * scale, and a coarser group's scale repeats over its finer groups."""
        repeat = quantized.group_size // self.aten_group
        scale = quantized.scale.float().repeat_interleave(repeat, dim=1)
        zero = torch.zeros_like(scale) if quantized.zero_point is None else \
            -quantized.zero_point.float().repeat_interleave(repeat, dim=1) * scale
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(quantized.q.int() + 8, INT4_INNER_K_TILES)
        self.register_buffer("packed", packed)
        self.register_buffer("scales_and_zeros", torch.stack([scale.T, zero.T], dim=-1).to(dtype))
        self.group_repeat = repeat

    def _aten_matmul(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.ops.aten._weight_int4pack_mm_for_cpu(x.reshape(-1, x.shape[-1]).contiguous(), self.packed,
                                                       self.aten_group, self.scales_and_zeros.to(x.dtype))
        return y.view(*x.shape[:-1], self.shape[0])

    def quantized_weight(self) -> QuantizedWeight:
        """The integers and scales this layer multiplies by (from ATen's layout: the kernel applied to the identity,
        less the zero, divided by the scale: exact integers)."""
        if not self.aten:
            q = torch.stack([self.packed & 0xF, self.packed >> 4], dim=-1).view(self.shape).to(torch.int8) - 8
            return QuantizedWeight(q, self.scale, 4, self.zero_point)
        scale, zero = self.scales_and_zeros.float().unbind(-1)  # [groups, out] each
        w = self._aten_matmul(torch.eye(self.shape[1])).T.reshape(self.shape[0], -1, self.aten_group)
        q = torch.round((w - zero.T[..., None]) / scale.T[..., None]).to(torch.int8).view(self.shape)
        scale, zero = scale.T[:, ::self.group_repeat], zero.T[:, ::self.group_repeat]
        zero_point = None if not zero.any() else torch.round(-zero / scale).to(torch.int8)
        return QuantizedWeight(q, scale.to(self.scales_and_zeros.dtype), 4, zero_point)

    def dequantize(self, dtype: torch.dtype) -> torch.Tensor:
        if self.aten:  # the kernel applied to the identity
            return self._aten_matmul(torch.eye(self.shape[1], dtype=dtype)).T.contiguous()
        return self.quantized_weight().dequantize(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.aten:
            y = self._aten_matmul(x)
        else:
            w = self.dequantize(x.dtype)
            y = fused_gemv(x, w) if _rows(x) <= self.gemv_max_rows else F.linear(x, w)
        return y if self.bias is None else y + self.bias


QUANTIZED_LINEAR = {8: Int8Linear, 4: Int4Linear}  # a QuantizedWeight's bits -> the layer over its integers
LINEAR_KINDS = {f"int{bits}": layer for bits, layer in QUANTIZED_LINEAR.items()}  # `quantize`'s modes


def replace_linear(model: nn.Module, name: str, weight: QuantizedWeight, bias: torch.Tensor | None) -> nn.Module:
    """Put the int8 / int4 layer over `weight`'s integers (with `bias`) where the model's linear layer `name` is
    (a checkpoint's stored integers, never a full-precision copy) -> that layer."""
    parent_name, _, child_name = name.rpartition(".")
    layer = QUANTIZED_LINEAR[weight.bits](weight, bias)
    setattr(model.get_submodule(parent_name), child_name, layer)
    return layer


def quantization_mode(bits) -> str:
    """`model.quantization` of a model whose quantised layers have these bit widths: int4 as soon as one is."""
    return "int8" if set(bits) == {8} else "int4"


def _swap_decoder_linears(model: Qwen2Audio, make, include_head: bool = True) -> None:
    decoder = model.decoder
    for layer in decoder.layers:
        for parent in (layer.attn, layer.mlp):
            for name, child in list(parent.named_children()):
                if isinstance(child, (nn.Linear, DecodeLinear)):
                    setattr(parent, name, make(child.weight, child.bias))
    head = decoder.lm_head
    if not include_head:
        return
    if head is None:  # tied: the head reads the embedding matrix; give it its own (quantised) view
        decoder.lm_head = make(decoder.embed_tokens.weight, None)
    elif isinstance(head, (nn.Linear, DecodeLinear)):
        decoder.lm_head = make(head.weight, head.bias)


def use_decode_kernels(model: Qwen2Audio, gemv_max_rows: int | None = None) -> Qwen2Audio:
    """Route the language model's products of up to `gemv_max_rows` rows (None: where the kernel beats BLAS)
    through the decode kernel (same weights, no copy); larger ones keep BLAS."""
    _swap_decoder_linears(model, lambda w, b: DecodeLinear(w, b, gemv_max_rows))
    return model


def quantize(model: Qwen2Audio, mode: str = "int8", gemv_max_rows: int | None = None, group_size: int | None = None,
             include_head: bool = True, kernel: str | None = None) -> Qwen2Audio:
    """Quantise the language model's linear layers (and, with include_head, its output head) in place (weight-only;
    the audio encoder and the embedding lookup stay in full precision). mode: 'int8' or 'int4'. group_size: inputs
    sharing a scale (default: int8 one per output row, int4 INT4_GROUP). kernel: int8's decode path (one of
    Int8Linear.KERNELS; None: the first that runs here)."""
    if mode not in LINEAR_KINDS:
        raise ValueError(f"unknown quantisation {mode!r}; choose int8 or int4")
    if kernel is not None and mode != "int8":
        raise ValueError(f"a decode kernel is chosen for int8 only, not {mode}")
    if mode == "int8":
        make = lambda w, b: Int8Linear(w, b, gemv_max_rows, kernel, group_size)  # noqa: E731
    else:
        make = lambda w, b: Int4Linear(w, b, gemv_max_rows, group_size=group_size or INT4_GROUP)  # noqa: E731
    _swap_decoder_linears(model, make, include_head)
    model.quantization = mode
    return model
