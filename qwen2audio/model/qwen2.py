"""The Qwen2 decoder: RMSNorm, RoPE, grouped-query attention with q/k/v bias, SwiGLU.

Follows gpt-fast's layout; numerically it matches transformers' Qwen2Model line by line (RMSNorm in fp32, RoPE
angles in fp32, rotate-half convention).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import TextConfig


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


def rope_cos_sin(positions: torch.Tensor, head_dim: int, theta: float, dtype: torch.dtype):
    """positions [B, T] -> cos, signed sin [B, 1, T, head_dim], angles computed in fp32 as the reference does. The
    sine's first half is negated here, once, instead of the rotated half of every query and key (see apply_rope)."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=positions.device).float() / head_dim))
    angles = positions[..., None].float() * inv_freq  # [B, T, head_dim/2]
    cos, sin = angles.cos(), angles.sin()
    return torch.cat([cos, cos], dim=-1)[:, None].to(dtype), torch.cat([-sin, sin], dim=-1)[:, None].to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    """The reference's x * cos + rotate_half(x) * sin, rotate_half(x) = (-x2, x1): bit for bit the same, since
    (-a) * b == a * (-b) exactly."""
    half = x.shape[-1] // 2
    return x * cos + torch.cat([x[..., half:], x[..., :half]], dim=-1) * signed_sin


class Attention(nn.Module):
    def __init__(self, config: TextConfig):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = config.n_heads, config.n_kv_heads, config.head_dim
        self.q_proj = nn.Linear(config.dim, config.n_heads * config.head_dim, bias=True)
        self.k_proj = nn.Linear(config.dim, config.n_kv_heads * config.head_dim, bias=True)
        self.v_proj = nn.Linear(config.dim, config.n_kv_heads * config.head_dim, bias=True)
        self.o_proj = nn.Linear(config.n_heads * config.head_dim, config.dim, bias=False)
        self.kv_cache = None  # set by the inference engine; None for a plain forward

    def forward(self, x, cos, sin, mask, cache_positions=None, last_only=False):
        # x: [B, T, dim]; mask: [B, 1, T, S] bool (True = attend), S = T or the cache length; None = causal over
        # S = T keys (nothing padded: lets the attention kernel skip the blocks above the diagonal).
        # last_only: keys and values of every position (for the cache), the output of the last one only [B, 1, dim]
        B, T, _ = x.shape
        k = self.k_proj(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        k = apply_rope(k, cos, sin)
        if last_only:
            x, cos, sin, T = x[:, -1:], cos[..., -1:, :], sin[..., -1:, :], 1
            mask = None if mask is None else mask[..., -1:, :]
        q = apply_rope(self.q_proj(x).view(B, T, self.n_heads, self.head_dim).transpose(1, 2), cos, sin)
        if cache_positions is not None:  # inference: keys/values go to their slots, attention reads the whole cache
            k, v = self.kv_cache.update(cache_positions, k, v)
        # without a mask: causal, or (one query, the last) every key
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None and T > 1,
                                             enable_gqa=self.n_heads != self.n_kv_heads)
        return self.o_proj(out.transpose(1, 2).reshape(B, T, -1))


class MLP(nn.Module):
    def __init__(self, config: TextConfig):
        super().__init__()
        self.gate_proj = nn.Linear(config.dim, config.ffn_dim, bias=False)
        self.up_proj = nn.Linear(config.dim, config.ffn_dim, bias=False)
        self.down_proj = nn.Linear(config.ffn_dim, config.dim, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, config: TextConfig):
        super().__init__()
        self.attn_norm = RMSNorm(config.dim, config.norm_eps)
        self.attn = Attention(config)
        self.mlp_norm = RMSNorm(config.dim, config.norm_eps)
        self.mlp = MLP(config)

    def forward(self, x, cos, sin, mask, cache_positions=None, last_only=False):
        h = self.attn(self.attn_norm(x), cos, sin, mask, cache_positions, last_only)
        x = (x[:, -1:] if last_only else x) + h
        return x + self.mlp(self.mlp_norm(x))


def causal_padding_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """[B, T] 0/1 padding mask -> [B, 1, T, T] bool: causal, padded keys hidden.

    A padded query row would see no key at all (NaN in SDPA, and 0 * NaN poisons the valid rows through V in the
    next layer), so each position may always see itself.
    """
    T = attention_mask.shape[-1]
    idx = torch.arange(T, device=attention_mask.device)
    causal = idx[None, :] <= idx[:, None]
    mask = causal[None] & attention_mask.bool()[:, None, :]
    return (mask | torch.eye(T, dtype=torch.bool, device=idx.device))[:, None]


class Qwen2(nn.Module):
    def __init__(self, config: TextConfig):
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.dim)
        self.layers = nn.ModuleList(DecoderLayer(config) for _ in range(config.n_layers))
        self.norm = RMSNorm(config.dim, config.norm_eps)
        self.lm_head = None if config.tie_embeddings else nn.Linear(config.dim, config.vocab_size, bias=False)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """The output head; with tied embeddings it reads the embedding matrix."""
        return F.linear(hidden, self.embed_tokens.weight) if self.lm_head is None else self.lm_head(hidden)

    def forward(self, x: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor, cache_positions=None,
                last_only: bool = False):
        """x [B, T, dim] input embeddings, positions [B, T] RoPE positions, mask [B, 1, T, S] (None: causal, no
        padding, S = T) -> hidden [B, T, dim]. last_only (a prefill, which needs the next token's logits only): the
        last layer computes the last position alone -> [B, 1, dim]; every layer's keys and values still reach the
        cache."""
        cos, sin = rope_cos_sin(positions, self.config.head_dim, self.config.rope_theta, x.dtype)
        for i, layer in enumerate(self.layers):
            x = layer(x, cos, sin, mask, cache_positions, last_only and i == len(self.layers) - 1)
        return self.norm(x)
