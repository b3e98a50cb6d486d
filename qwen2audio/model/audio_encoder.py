"""The audio encoder: Whisper's encoder with a 2x average pooling and a final LayerNorm.

Shapes: mel [B, n_mels, T] --conv1--> [B, d, T] --conv2 (stride 2)--> [B, d, T'] with T' = (T-1)//2 + 1
--layers--> --avg-pool 2--> [B, T'//2, d] --layer_norm--> audio frames of 40 ms each.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import AudioEncoderConfig


def encoder_positions(mel_frames):
    """Positions after the stride-2 convolution for `mel_frames` valid mel frames (int or tensor)."""
    return (mel_frames - 1) // 2 + 1


def audio_token_count(mel_frames):
    """Audio tokens (= projected frames) for `mel_frames` valid mel frames: 3000 -> 750, 100 -> 25, <= 2 -> 0.

    The one place this formula is written; the processor, the model and the server import it.
    """
    return (encoder_positions(mel_frames) - 2) // 2 + 1


def mel_frames_needed(mel_frames):
    """Mel frames the encoder must see so that every valid position is exact: the valid ones plus the (at most two)
    padded frames that the two kernel-3 convolutions reach past the end."""
    return 2 * encoder_positions(mel_frames) + 1


class EncoderAttention(nn.Module):
    """Bidirectional multi-head attention; k has no bias (Whisper)."""

    def __init__(self, dim: int, n_heads: int):
        super().__init__()
        self.n_heads = n_heads
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim, bias=False)
        self.v_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        # x: [B, T, d]; mask: [B, 1, 1, T] bool, True = attend
        B, T, d = x.shape
        head_dim = d // self.n_heads
        q = self.q_proj(x).view(B, T, self.n_heads, head_dim).transpose(1, 2)
        k = self.k_proj(x).view(B, T, self.n_heads, head_dim).transpose(1, 2)
        v = self.v_proj(x).view(B, T, self.n_heads, head_dim).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.out_proj(out.transpose(1, 2).reshape(B, T, d))


class EncoderLayer(nn.Module):
    """Pre-norm transformer block with a GELU MLP."""

    def __init__(self, config: AudioEncoderConfig):
        super().__init__()
        self.attn_norm = nn.LayerNorm(config.dim, eps=config.norm_eps)
        self.attn = EncoderAttention(config.dim, config.n_heads)
        self.mlp_norm = nn.LayerNorm(config.dim, eps=config.norm_eps)
        self.fc1 = nn.Linear(config.dim, config.ffn_dim)
        self.fc2 = nn.Linear(config.ffn_dim, config.dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), mask)
        x = x + self.fc2(F.gelu(self.fc1(self.mlp_norm(x))))
        if x.dtype == torch.float16:
            # fp16 overflows in the residual stream of Whisper-large encoders; the reference clamps here.
            limit = torch.finfo(torch.float16).max - 1000
            x = x.clamp(-limit, limit)
        return x


class AudioEncoder(nn.Module):
    def __init__(self, config: AudioEncoderConfig):
        super().__init__()
        self.config = config
        self.conv1 = nn.Conv1d(config.n_mels, config.dim, kernel_size=3, padding=1)
        self.conv2 = nn.Conv1d(config.dim, config.dim, kernel_size=3, stride=2, padding=1)
        # Saved with the weights but never trained (Whisper's sinusoids at initialisation).
        self.positional_embedding = nn.Parameter(torch.empty(config.n_positions, config.dim), requires_grad=False)
        self.layers = nn.ModuleList(EncoderLayer(config) for _ in range(config.n_layers))
        self.final_norm = nn.LayerNorm(config.dim, eps=config.norm_eps)

    def forward(self, mel: torch.Tensor, mel_lengths: torch.Tensor | None = None) -> torch.Tensor:
        """mel [B, n_mels, T] (T <= 2 * n_positions), mel_lengths [B] valid frames -> [B, audio_token_count(T), d].

        Positions past a clip's valid length are masked out as attention keys, so passing only the frames a clip
        needs (`mel_frames_needed`) gives the same valid outputs as the padded 30 s window, for much less compute.
        """
        x = F.gelu(self.conv1(mel.to(self.conv1.weight.dtype)))
        x = F.gelu(self.conv2(x)).transpose(1, 2)  # [B, T', d]
        T = x.shape[1]
        if T > self.config.n_positions:
            raise ValueError(f"audio encoder got {mel.shape[-1]} mel frames; at most {2 * self.config.n_positions} "
                             "fit (30 s): split longer audio into windows")
        x = x + self.positional_embedding[:T]
        mask = None
        if mel_lengths is not None:
            valid = torch.arange(T, device=x.device) < encoder_positions(mel_lengths.to(x.device))[:, None]
            mask = valid[:, None, None, :]  # [B, 1, 1, T]: keys only
        for layer in self.layers:
            x = layer(x, mask)
        x = F.avg_pool1d(x.transpose(1, 2), kernel_size=2, stride=2).transpose(1, 2)
        return self.final_norm(x)
