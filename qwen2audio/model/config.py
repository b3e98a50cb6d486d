"""Typed configuration of Qwen2-Audio, read from and written to the Hugging Face `config.json`.

Our field names are short and say what they are; `from_hf_dict`/`to_hf_dict` are the only places that know the
Hugging Face names. Fields of config.json that we do not model are kept in `extra` and written back unchanged, so a
round trip through us loses nothing that transformers or vLLM read.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from typing import Any


@dataclass
class AudioEncoderConfig:
    n_mels: int = 128  # num_mel_bins: 128 for Whisper-large-v3 shapes, 80 for tiny..large-v2
    dim: int = 1280  # d_model
    n_layers: int = 32  # encoder_layers
    n_heads: int = 20  # encoder_attention_heads
    ffn_dim: int = 5120  # encoder_ffn_dim
    n_positions: int = 1500  # max_source_positions: positions after the stride-2 conv (30 s)
    norm_eps: float = 1e-5  # nn.LayerNorm default, as in Whisper
    extra: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self):
        if self.dim % self.n_heads:
            raise ValueError(f"audio encoder dim {self.dim} is not divisible by n_heads {self.n_heads}")

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @property
    def max_mel_frames(self) -> int:
        """Longest mel input: 2 mel frames per position (conv2 has stride 2) = 3000 for 30 s."""
        return 2 * self.n_positions


@dataclass
class TextConfig:
    """A Qwen2 decoder."""

    vocab_size: int = 156032
    dim: int = 4096  # hidden_size
    n_layers: int = 32  # num_hidden_layers
    n_heads: int = 32  # num_attention_heads
    n_kv_heads: int = 32  # num_key_value_heads (grouped-query attention when fewer than n_heads)
    ffn_dim: int = 11008  # intermediate_size
    norm_eps: float = 1e-5  # rms_norm_eps (Qwen2Config's default is 1e-6: always read config.json)
    rope_theta: float = 10000.0
    max_positions: int = 8192  # max_position_embeddings
    tie_embeddings: bool = False  # tie_word_embeddings
    head_dim: int | None = None  # derived: dim // n_heads unless config.json says otherwise
    extra: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self):
        if self.head_dim is None:
            if self.dim % self.n_heads:
                raise ValueError(f"text dim {self.dim} is not divisible by n_heads {self.n_heads}")
            self.head_dim = self.dim // self.n_heads
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads {self.n_heads} is not a multiple of n_kv_heads {self.n_kv_heads}")


@dataclass
class Qwen2AudioConfig:
    audio: AudioEncoderConfig = field(default_factory=AudioEncoderConfig)
    text: TextConfig = field(default_factory=TextConfig)
    audio_token_id: int = 151646  # audio_token_index: the <|AUDIO|> placeholder
    extra: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    # -- presets -------------------------------------------------------------------------------------------------
    @classmethod
    def from_name(cls, name: str) -> "Qwen2AudioConfig":
        if name not in PRESETS:
            raise ValueError(f"unknown config {name!r}; available: {', '.join(sorted(PRESETS))}")
        return copy.deepcopy(PRESETS[name])

    # -- Hugging Face config.json ----------------------------------------------------------------------------------
    @classmethod
    def from_hf_dict(cls, hf: dict[str, Any]) -> "Qwen2AudioConfig":
        if hf.get("model_type", "qwen2_audio") != "qwen2_audio":
            raise ValueError(f"config.json has model_type {hf.get('model_type')!r}, expected 'qwen2_audio'")
        hf = copy.deepcopy(hf)
        a = hf.pop("audio_config", None) or {}
        t = hf.pop("text_config", None) or {}
        audio = AudioEncoderConfig(
            n_mels=a.pop("num_mel_bins", 128), dim=a.pop("d_model", 1280), n_layers=a.pop("encoder_layers", 32),
            n_heads=a.pop("encoder_attention_heads", 20), ffn_dim=a.pop("encoder_ffn_dim", 5120),
            n_positions=a.pop("max_source_positions", 1500), extra=a,
        )
        if a.get("activation_function", "gelu") != "gelu":
            raise ValueError(f"audio_config.activation_function {a['activation_function']!r} is not supported (gelu)")
        tie = t.pop("tie_word_embeddings", hf.get("tie_word_embeddings", False))
        n_heads = t.pop("num_attention_heads", 32)
        text = TextConfig(
            vocab_size=t.pop("vocab_size", 151936), dim=t.pop("hidden_size", 4096),
            n_layers=t.pop("num_hidden_layers", 32), n_heads=n_heads,
            n_kv_heads=t.pop("num_key_value_heads", None) or n_heads,  # absent or null: multi-head attention
            ffn_dim=t.pop("intermediate_size", 22016), norm_eps=t.pop("rms_norm_eps", 1e-6),
            rope_theta=_rope_theta(t), max_positions=t.pop("max_position_embeddings", 32768),
            tie_embeddings=bool(tie), head_dim=t.pop("head_dim", None), extra=t,
        )
        if t.get("hidden_act", "silu") != "silu":
            raise ValueError(f"text_config.hidden_act {t['hidden_act']!r} is not supported (silu)")
        token = hf.pop("audio_token_index", hf.pop("audio_token_id", 151646))
        return cls(audio=audio, text=text, audio_token_id=token, extra=hf)

    def to_hf_dict(self) -> dict[str, Any]:
        a, t = self.audio, self.text
        audio = {**a.extra, "model_type": "qwen2_audio_encoder", "num_mel_bins": a.n_mels, "d_model": a.dim,
                 "encoder_layers": a.n_layers, "encoder_attention_heads": a.n_heads, "encoder_ffn_dim": a.ffn_dim,
                 "max_source_positions": a.n_positions}
        audio.setdefault("activation_function", "gelu")
        audio.setdefault("scale_embedding", False)
        text = {**t.extra, "model_type": "qwen2", "vocab_size": t.vocab_size, "hidden_size": t.dim,
                "num_hidden_layers": t.n_layers, "num_attention_heads": t.n_heads,
                "num_key_value_heads": t.n_kv_heads, "intermediate_size": t.ffn_dim, "rms_norm_eps": t.norm_eps,
                "rope_theta": t.rope_theta, "max_position_embeddings": t.max_positions,
                "tie_word_embeddings": t.tie_embeddings}
        text.setdefault("hidden_act", "silu")
        if t.head_dim != t.dim // t.n_heads:
            text["head_dim"] = t.head_dim
        if "rope_parameters" in text:  # transformers >= 5 spells theta here; keep both in step
            text["rope_parameters"] = {**text["rope_parameters"], "rope_theta": t.rope_theta}
        out = {**self.extra, "model_type": "qwen2_audio", "audio_config": audio, "text_config": text,
               "audio_token_index": self.audio_token_id, "tie_word_embeddings": t.tie_embeddings}
        out.setdefault("architectures", ["Qwen2AudioForConditionalGeneration"])
        return out

    def replace(self, **changes) -> "Qwen2AudioConfig":
        return dataclasses.replace(self, **changes)


def _rope_theta(t: dict[str, Any]) -> float:
    """RoPE base from a text config dict (pops it): `rope_theta` (transformers 4) or `rope_parameters` (5)."""
    params = t.get("rope_parameters") or {}
    if params.get("rope_type", "default") != "default":
        raise ValueError(f"rope_type {params['rope_type']!r} is not supported (Qwen2-Audio uses plain RoPE)")
    scaling = t.get("rope_scaling")
    if scaling and scaling.get("rope_type", scaling.get("type", "default")) != "default":
        raise ValueError(f"rope_scaling {scaling} is not supported (Qwen2-Audio uses plain RoPE)")
    theta = t.pop("rope_theta", None)
    return float(theta if theta is not None else params.get("rope_theta", 10000.0))


PRESETS: dict[str, Qwen2AudioConfig] = {
    # Qwen/Qwen2-Audio-7B and -7B-Instruct (config.json of the hub checkpoints): 8,397,094,912 parameters.
    "qwen2-audio-7b": Qwen2AudioConfig(
        audio=AudioEncoderConfig(),
        text=TextConfig(vocab_size=156032, dim=4096, n_layers=32, n_heads=32, n_kv_heads=32, ffn_dim=11008,
                        norm_eps=1e-5, rope_theta=10000.0, max_positions=8192, tie_embeddings=False),
    ),
    # The inference benchmark's model: a Qwen2-0.5B-sized LM with a whisper-base-sized encoder.
    "bench-0.5b": Qwen2AudioConfig(
        audio=AudioEncoderConfig(n_mels=128, dim=512, n_layers=6, n_heads=8, ffn_dim=2048),
        text=TextConfig(vocab_size=151936, dim=896, n_layers=24, n_heads=14, n_kv_heads=2, ffn_dim=4864,
                        norm_eps=1e-6, rope_theta=1000000.0, max_positions=32768, tie_embeddings=True),
    ),
    # A tiny config for tests and smoke runs (random weights, real vocabulary).
    "tiny-random": Qwen2AudioConfig(
        audio=AudioEncoderConfig(n_mels=128, dim=64, n_layers=2, n_heads=4, ffn_dim=128),
        text=TextConfig(vocab_size=151936, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=128,
                        norm_eps=1e-6, rope_theta=1000000.0, max_positions=4096, tie_embeddings=True),
    ),
}
