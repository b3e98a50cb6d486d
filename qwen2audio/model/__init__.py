"""Pure nn.Modules of Qwen2-Audio: no I/O, no checkpoint names."""

from .audio_encoder import AudioEncoder, audio_token_count, encoder_positions, mel_frames_needed
from .config import AudioEncoderConfig, Qwen2AudioConfig, TextConfig
from .projector import Projector
from .qwen2 import Qwen2
from .qwen2_audio import (IGNORE_INDEX, CausalLMOutput, Qwen2Audio, causal_lm_loss, merge_audio, next_token_targets,
                          token_positions)

__all__ = [
    "AudioEncoder", "AudioEncoderConfig", "CausalLMOutput", "IGNORE_INDEX", "Projector", "Qwen2", "Qwen2Audio",
    "Qwen2AudioConfig", "TextConfig", "audio_token_count", "causal_lm_loss", "encoder_positions",
    "mel_frames_needed", "merge_audio", "next_token_targets", "token_positions",
]
