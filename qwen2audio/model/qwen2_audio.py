"""Qwen2-Audio: audio encoder -> projector -> frames replace the <|AUDIO|> embeddings -> Qwen2 decoder."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .audio_encoder import AudioEncoder, audio_token_count, mel_frames_needed
from .config import Qwen2AudioConfig
from .projector import Projector
from .qwen2 import Qwen2, causal_padding_mask

IGNORE_INDEX = -100  # label value that carries no loss (PyTorch's cross_entropy default)


@dataclass
class CausalLMOutput:
    logits: torch.Tensor
    loss: torch.Tensor | None = None


class Qwen2Audio(nn.Module):
    def __init__(self, config: Qwen2AudioConfig):
        super().__init__()
        self.config = config
        self.audio_encoder = AudioEncoder(config.audio)
        self.projector = Projector(config.audio.dim, config.text.dim)
        self.decoder = Qwen2(config.text)

    @property
    def device(self) -> torch.device:
        return self.decoder.embed_tokens.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.decoder.embed_tokens.weight.dtype

    def encode_audio(self, input_features: torch.Tensor, feature_attention_mask: torch.Tensor | None = None):
        """input_features [N, n_mels, T], feature_attention_mask [N, T] -> audio embeddings [sum of tokens, text dim].

        Only the frames that carry a valid position are encoded (the padding past the longest clip is skipped); the
        rows come out clip after clip, `audio_token_count(valid frames)` rows each.
        """
        return self.projector(self.encoder_frames(input_features, feature_attention_mask))

    def encoder_frames(self, input_features: torch.Tensor, feature_attention_mask: torch.Tensor | None = None):
        """The audio encoder's valid output frames, before the projector: [sum of tokens, audio dim], clip after clip.

        Under the padding mask they depend on each clip's own valid frames only, so a frozen encoder's frames can be
        computed once per clip and projected later (`projector(frames)` = `encode_audio`)."""
        if feature_attention_mask is None:
            lengths = torch.full(input_features.shape[:1], input_features.shape[-1], device=input_features.device)
        else:
            lengths = feature_attention_mask.sum(-1)
        device = self.audio_encoder.conv1.weight.device  # the model's device (a filling pass may move the encoder)
        needed = min(int(mel_frames_needed(lengths).max()), input_features.shape[-1])
        frames = self.audio_encoder(input_features[:, :, :needed].to(device), lengths.to(device))
        counts = audio_token_count(lengths.to(device))
        keep = torch.arange(frames.shape[1], device=frames.device) < counts[:, None]
        return frames[keep]

    def audio_embeddings(self, input_features=None, feature_attention_mask=None, audio_frames=None):
        """The projected audio rows [sum of tokens, text dim], clip after clip, from log-mel features or from the
        encoder's cached outputs (`audio_frames`, see `encoder_frames`); None when there is no audio."""
        if audio_frames is not None:
            return self.projector(audio_frames.to(self.projector.linear.weight.dtype))
        if input_features is not None:
            return self.encode_audio(input_features, feature_attention_mask)
        return None

    def embed(self, input_ids, input_features=None, feature_attention_mask=None, audio_frames=None,
              audio_repeat: int = 1) -> torch.Tensor:
        """Token embeddings [B, T, dim] with the projected audio frames written over the <|AUDIO|> placeholders, in
        order. audio_repeat: the batch's rows hold the same clips this many times over (DPO's chosen and rejected
        rows share their audio, encoded once)."""
        embeds = self.decoder.embed_tokens(input_ids)
        audio = self.audio_embeddings(input_features, feature_attention_mask, audio_frames)
        if audio is not None and audio_repeat != 1:
            audio = audio.repeat(audio_repeat, 1)
        return merge_audio(embeds, input_ids == self.config.audio_token_id, audio)

    def hidden_states(self, embeds: torch.Tensor, attention_mask: torch.Tensor,
                      positions: torch.Tensor | None = None) -> torch.Tensor:
        """embeds [B, T, dim] (left or right padded), attention_mask [B, T] -> the decoder's last hidden states
        [B, T, dim], without a KV cache. positions: RoPE positions [B, T], by default `token_positions(mask)`."""
        positions = token_positions(attention_mask) if positions is None else positions
        return self.decoder(embeds, positions, causal_padding_mask(attention_mask))

    def forward(self, input_ids, attention_mask=None, input_features=None, feature_attention_mask=None,
                labels=None, position_ids=None) -> CausalLMOutput:
        """input_ids [B, T] (left or right padded), attention_mask [B, T], input_features [N, n_mels, ≤3000],
        feature_attention_mask [N, ≤3000], labels [B, T] (IGNORE_INDEX = no loss) -> logits [B, T, vocab]."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        x = self.embed(input_ids, input_features, feature_attention_mask)
        hidden = self.hidden_states(x, attention_mask, position_ids)
        logits = self.decoder.logits(hidden)
        loss = None if labels is None else causal_lm_loss(logits, labels, attention_mask)
        return CausalLMOutput(logits=logits, loss=loss)


def token_positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """attention_mask [B, T] -> RoPE positions [B, T] that count real tokens only, so that left padding does not
    shift them (padding takes position 0)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def merge_audio(embeds: torch.Tensor, is_audio: torch.Tensor, audio: torch.Tensor | None) -> torch.Tensor:
    """embeds [B, T, dim] with `audio` [n, dim] written, in order, over the n positions where is_audio [B, T] is set;
    a clear error when the counts differ."""
    n_placeholders = int(is_audio.sum())
    if audio is None:
        if n_placeholders:
            raise ValueError(f"input_ids hold {n_placeholders} <|AUDIO|> tokens but no input_features were given")
        return embeds
    if audio.shape[0] != n_placeholders:
        raise ValueError(
            f"input_ids hold {n_placeholders} <|AUDIO|> tokens but the audio gives {audio.shape[0]} frames: expand "
            "each <|AUDIO|> to audio_token_count(frames) copies (the Processor does this)")
    return embeds.masked_scatter(is_audio[..., None], audio.to(embeds.dtype))


def next_token_targets(labels: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """labels [B, T] -> targets [B, T-1]: token t predicts labels[t+1], IGNORE_INDEX where attention_mask[t+1] is 0."""
    return labels[:, 1:].masked_fill(attention_mask[:, 1:] == 0, IGNORE_INDEX)


def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Next-token cross entropy, mean over the supervised tokens, as transformers' Qwen2-Audio computes it."""
    target = next_token_targets(labels, attention_mask)
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), target.flatten().to(logits.device),
                           ignore_index=IGNORE_INDEX)
