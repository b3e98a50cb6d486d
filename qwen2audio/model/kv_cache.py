"""A static, preallocated key/value cache (gpt-fast): fixed-shape buffers written in place by slot index, so the
decode step has the same shapes every call (compilable, CUDA-graph friendly)."""

from __future__ import annotations

import torch
from torch import nn


class KVCache(nn.Module):
    """Keys and values of one attention layer: k, v [batch, n_kv_heads, max_len, head_dim] (not saved)."""

    def __init__(self, batch_size: int, n_kv_heads: int, max_len: int, head_dim: int, dtype: torch.dtype,
                 device: torch.device | str | None = None):
        super().__init__()
        shape = (batch_size, n_kv_heads, max_len, head_dim)
        self.register_buffer("k", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("v", torch.zeros(shape, dtype=dtype, device=device), persistent=False)

    def update(self, slots: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
        """Write k, v [B, H, T, D] at cache slots [T]; return the whole cache (masking hides unwritten slots)."""
        self.k.index_copy_(2, slots, k.to(self.k.dtype))
        self.v.index_copy_(2, slots, v.to(self.v.dtype))
        return self.k, self.v


def setup_caches(decoder: nn.Module, batch_size: int, max_len: int, dtype: torch.dtype | None = None) -> None:
    """Give every attention layer of a Qwen2 decoder a cache for `batch_size` rows of up to `max_len` tokens."""
    c = decoder.config
    weight = decoder.embed_tokens.weight
    for layer in decoder.layers:
        layer.attn.kv_cache = KVCache(batch_size, c.n_kv_heads, max_len, c.head_dim, dtype or weight.dtype,
                                      weight.device)


def clear_caches(decoder: nn.Module) -> None:
    for layer in decoder.layers:
        layer.attn.kv_cache = None
