"""A static, preallocated key/value cache (gpt-fast): fixed-shape buffers written in place by slot index, so the
decode step has the same shapes every call (compilable, CUDA-graph friendly).

Each batch row is its own sequence: `update` takes the slots shared by every row ([T], a left-padded batch) or one
set per row ([B, T], continuous batching, where rows hold requests of different lengths), and `KVCache.rows` with
`using_caches` let the decoder run on some rows only (a prefill into one free row, a decode step over the rows in
use) without a copy.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

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
        """Write k, v [B, H, T, D] at cache slots [T] (every row) or [B, T] (row by row); return the whole cache
        (masking hides unwritten slots)."""
        if slots.ndim == 1:
            self.k.index_copy_(2, slots, k.to(self.k.dtype))
            self.v.index_copy_(2, slots, v.to(self.v.dtype))
        else:
            index = slots[:, None, :, None].expand(k.shape)
            self.k.scatter_(2, index, k.to(self.k.dtype))
            self.v.scatter_(2, index, v.to(self.v.dtype))
        return self.k, self.v

    def rows(self, start: int, stop: int, length: int | None = None) -> "KVCache":
        """A cache over rows [start, stop) and the first `length` slots (all when None) of this one: views, so that
        writes land here, and attention reads only those slots."""
        view = KVCache.__new__(KVCache)
        nn.Module.__init__(view)
        view.register_buffer("k", self.k[start:stop, :, :length], persistent=False)
        view.register_buffer("v", self.v[start:stop, :, :length], persistent=False)
        return view


def make_caches(decoder: nn.Module, batch_size: int, max_len: int, dtype: torch.dtype | None = None) -> list[KVCache]:
    """One cache per attention layer of a Qwen2 decoder, for `batch_size` rows of up to `max_len` tokens."""
    c = decoder.config
    weight = decoder.embed_tokens.weight
    return [KVCache(batch_size, c.n_kv_heads, max_len, c.head_dim, dtype or weight.dtype, weight.device)
            for _ in decoder.layers]


def setup_caches(decoder: nn.Module, batch_size: int, max_len: int, dtype: torch.dtype | None = None) -> None:
    """Give every attention layer of a Qwen2 decoder a cache for `batch_size` rows of up to `max_len` tokens."""
    for layer, cache in zip(decoder.layers, make_caches(decoder, batch_size, max_len, dtype)):
        layer.attn.kv_cache = cache


def clear_caches(decoder: nn.Module) -> None:
    for layer in decoder.layers:
        layer.attn.kv_cache = None


@contextlib.contextmanager
def using_caches(decoder: nn.Module, caches: list[KVCache]) -> Iterator[None]:
    """Inside the block the decoder's layers use `caches` (e.g. views of some rows: `[c.rows(0, 4) for c in
    caches]`); whatever caches they had before are back afterwards, so that engines holding their own caches
    can take turns on one model."""
    before = [layer.attn.kv_cache for layer in decoder.layers]
    for layer, cache in zip(decoder.layers, caches):
        layer.attn.kv_cache = cache
    try:
        yield
    finally:
        for layer, cache in zip(decoder.layers, before):
            layer.attn.kv_cache = cache
