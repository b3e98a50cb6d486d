"""Log-probabilities of a batch's supervised tokens: the one forward that training (every stage) and evaluation
(the preference measure) run.

    module = TokenLogProbs(model)                          # what the training loop runs, shards and differentiates
    token_logps = batch_token_logps(module, batch)         # [R, T-1]: log p(label) at each supervised position
    chosen, rejected = sequence_logps(token_logps, batch)  # per preference pair, summed over the answer tokens

Only the positions that carry a label go through the LM head, so the [tokens, vocab] logits of the prompt (and of the
audio frames) are never materialised: with a 156k vocabulary that is most of the activation memory of a long prompt.
"""

from __future__ import annotations

import enum

import torch
import torch.nn.functional as F
from torch import nn

from .data import Batch
from .model import IGNORE_INDEX, Qwen2Audio, next_token_targets

SILENT_MEL_FRAMES = 3  # the shortest input the encoder's two convolutions turn into one frame


class IdleAudio(enum.Enum):
    """What runs, at zero weight, for a batch that holds no audio.

    In a distributed run every process must run the same sharded modules (FSDP gathers them collectively), and DDP
    wants a gradient for every trainable weight; a batch without audio would skip the audio modules on one process
    only. SKIP: nothing (one process). ENCODER: the encoder and projector on a few silent frames. PROJECTOR: the
    projector alone, when the encoder's outputs are cached and the encoder never runs in training.
    """

    SKIP = "skip"
    ENCODER = "encoder"
    PROJECTOR = "projector"


class TokenLogProbs(nn.Module):
    """batch tensors -> log p(label) at each supervised position [R, T-1] (0 elsewhere)."""

    def __init__(self, model: Qwen2Audio, idle_audio: IdleAudio = IdleAudio.SKIP):
        super().__init__()
        self.model = model
        self.idle_audio = idle_audio

    def forward(self, input_ids, attention_mask, labels, input_features=None, feature_attention_mask=None,
                audio_repeat: int = 1, audio_frames=None) -> torch.Tensor:
        """audio_frames: the audio encoder's outputs, cached (`train.encoder_cache`), in place of input_features."""
        m = self.model
        embeds = m.embed(input_ids, input_features, feature_attention_mask, audio_frames, audio_repeat)
        if input_features is None and audio_frames is None:
            embeds = embeds + self.idle_audio_term(embeds)
        hidden = m.hidden_states(embeds, attention_mask)
        target = next_token_targets(labels, attention_mask)
        selected = target != IGNORE_INDEX
        logits = m.decoder.logits(hidden[:, :-1][selected]).float()  # [n_supervised, vocab]
        logp = -F.cross_entropy(logits, target[selected], reduction="none")
        return torch.zeros(target.shape, dtype=logp.dtype, device=logp.device).masked_scatter(selected, logp)

    def idle_audio_term(self, embeds: torch.Tensor) -> torch.Tensor | float:
        """0, computed through the audio modules that `idle_audio` names (so they run and get a zero gradient)."""
        m = self.model
        if self.idle_audio is IdleAudio.PROJECTOR:
            silent = torch.zeros(1, m.config.audio.dim, device=embeds.device, dtype=m.projector.linear.weight.dtype)
            return 0.0 * m.projector(silent).sum()
        if self.idle_audio is IdleAudio.ENCODER:
            silent = torch.zeros(1, m.config.audio.n_mels, SILENT_MEL_FRAMES, device=embeds.device, dtype=embeds.dtype)
            mask = torch.ones(1, SILENT_MEL_FRAMES, device=embeds.device)
            return 0.0 * m.encode_audio(silent, mask).sum()
        return 0.0


def supervised_tokens(labels: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """[R, T-1] bool: the positions whose next token carries loss (as TokenLogProbs selects them)."""
    return next_token_targets(labels, attention_mask) != IGNORE_INDEX


def batch_token_logps(module, batch: Batch) -> torch.Tensor:
    """Run `module` (a TokenLogProbs, possibly wrapped by FSDP/DDP) on a collated batch -> [R, T-1]."""
    return module(batch.input_ids, batch.attention_mask, batch.labels, batch.input_features,
                  batch.feature_attention_mask, batch.audio_repeat, batch.audio_frames)


def sequence_logps(token_logps: torch.Tensor, batch: Batch, average: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed (or, with `average`, per-token averaged) answer log-probs of a preference batch's chosen rows (the
    first n_samples) and rejected rows (the next n_samples)."""
    n = batch.n_samples
    total = token_logps.sum(-1)
    if average:
        total = total / supervised_tokens(batch.labels, batch.attention_mask).sum(-1).clamp(min=1)
    return total[:n], total[n:2 * n]
