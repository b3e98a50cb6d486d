"""Qwen2-Audio: audio encoder -> projector -> frames replace the <|AUDIO|> embeddings -> Qwen2 decoder (SPEC §1)."""

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

    def embed(self, input_ids, input_features=None, feature_attention_mask=None) -> torch.Tensor:
        """Token embeddings with the projected audio frames written over the <|AUDIO|> placeholders, in order."""
        embeds = self.decoder.embed_tokens(input_ids)
        is_audio = input_ids == self.config.audio_token_id
        n_placeholders = int(is_audio.sum())
        if input_features is None:
            if n_placeholders:
                raise ValueError(f"input_ids hold {n_placeholders} <|AUDIO|> tokens but no input_features were given")
            return embeds
        audio = self.encode_audio(input_features, feature_attention_mask)
        if audio.shape[0] != n_placeholders:
            raise ValueError(
                f"input_ids hold {n_placeholders} <|AUDIO|> tokens but the audio gives {audio.shape[0]} frames: expand "
                "each <|AUDIO|> to audio_token_count(frames) copies (the Processor does this)")
        return embeds.masked_scatter(is_audio[..., None], audio.to(embeds.dtype))

    def forward(self, input_ids, attention_mask=None, input_features=None, feature_attention_mask=None,
                labels=None, position_ids=None) -> CausalLMOutput:
        """input_ids [B, T] (left or right padded), attention_mask [B, T], input_features [N, n_mels, ≤3000],
        feature_attention_mask [N, ≤3000], labels [B, T] (IGNORE_INDEX = no loss) -> logits [B, T, vocab]."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if position_ids is None:  # positions count real tokens only, so left padding does not shift RoPE
            position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        x = self.embed(input_ids, input_features, feature_attention_mask)
        hidden = self.decoder(x, position_ids, causal_padding_mask(attention_mask))
        logits = self.decoder.logits(hidden)
        loss = None if labels is None else causal_lm_loss(logits, labels, attention_mask)
        return CausalLMOutput(logits=logits, loss=loss)


def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Next-token cross entropy, mean over the supervised tokens, as transformers' Qwen2-Audio computes it: token t
    predicts labels[t+1], counted where attention_mask[t+1] is set and the label is not IGNORE_INDEX."""
    target = labels[:, 1:].masked_fill(attention_mask[:, 1:] == 0, IGNORE_INDEX)
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), target.flatten().to(logits.device),
                           ignore_index=IGNORE_INDEX)
