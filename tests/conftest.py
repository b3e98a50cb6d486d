"""Shared fixtures: tiny random Qwen2-Audio configs in the Hugging Face format, and inputs with expanded audio."""

from __future__ import annotations

import pytest
import torch

from qwen2audio.model import audio_token_count
from qwen2audio.tokenizer import AUDIO_BOS as AUDIO_BOS_TOKEN, AUDIO_EOS as AUDIO_EOS_TOKEN, AUDIO_TOKEN, ENDOFTEXT
from qwen2audio.tokenizer import IM_START as IM_START_TOKEN, SPECIAL_TOKENS

# Special ids of the Qwen2-Audio vocabulary (SPEC §4), for building inputs by hand in tests.
PAD, IM_START, AUDIO, AUDIO_BOS, AUDIO_EOS = (SPECIAL_TOKENS[t] for t in (ENDOFTEXT, IM_START_TOKEN, AUDIO_TOKEN,
                                                                      AUDIO_BOS_TOKEN, AUDIO_EOS_TOKEN))

# Several tiny shapes: grouped-query and not, tied and untied embeddings, odd sizes, 80 and 128 mel bins.
TINY_HF_CONFIGS = {
    "gqa-untied": dict(
        audio_config=dict(d_model=64, encoder_layers=2, encoder_attention_heads=4, encoder_ffn_dim=96,
                          num_mel_bins=128),
        text_config=dict(model_type="qwen2", vocab_size=151700, hidden_size=48, num_hidden_layers=2,
                         num_attention_heads=6, num_key_value_heads=2, intermediate_size=80, rms_norm_eps=1e-6,
                         rope_theta=1000000.0, tie_word_embeddings=False)),
    "mha-tied": dict(
        audio_config=dict(d_model=32, encoder_layers=1, encoder_attention_heads=2, encoder_ffn_dim=64,
                          num_mel_bins=128),
        text_config=dict(model_type="qwen2", vocab_size=151936, hidden_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, intermediate_size=96, rms_norm_eps=1e-5,
                         tie_word_embeddings=True),
        tie_word_embeddings=True),
    "odd-80mel": dict(
        audio_config=dict(d_model=60, encoder_layers=3, encoder_attention_heads=5, encoder_ffn_dim=84,
                          num_mel_bins=80),
        text_config=dict(model_type="qwen2", vocab_size=151655, hidden_size=36, num_hidden_layers=3,
                         num_attention_heads=3, num_key_value_heads=1, intermediate_size=70, rms_norm_eps=1e-6,
                         tie_word_embeddings=False)),
}


def make_hf_model(name: str, seed: int = 0):
    from transformers import Qwen2AudioConfig, Qwen2AudioForConditionalGeneration

    torch.manual_seed(seed)
    model = Qwen2AudioForConditionalGeneration(Qwen2AudioConfig(**TINY_HF_CONFIGS[name])).eval()
    with torch.no_grad():  # transformers initialises some weights to constants; randomise them all
        for p in model.parameters():
            p.normal_(0, 0.1 if p.ndim > 1 else 0.3)
        if TINY_HF_CONFIGS[name].get("tie_word_embeddings"):  # transformers 5.24 does not tie this model itself
            model.lm_head.weight.copy_(model.model.language_model.embed_tokens.weight)
    return model


def make_batch(n_mels: int, seconds=(0.8, 23.0), texts=((872, 198), (100, 200, 300, 400)), seed: int = 0):
    """Left-padded batch of two conversations, one audio each: ids with <|AUDIO|> expanded, features, masks and
    labels that supervise only the text after the audio."""
    g = torch.Generator().manual_seed(seed)
    frames = [int(s * 100) for s in seconds]
    feats = torch.randn(len(frames), n_mels, 3000, generator=g)
    fmask = torch.zeros(len(frames), 3000, dtype=torch.long)
    for i, n in enumerate(frames):
        fmask[i, :n] = 1
    seqs, answers = [], []
    for n, text in zip(frames, texts):
        prompt = [IM_START, 872, 198, AUDIO_BOS] + [AUDIO] * int(audio_token_count(n)) + [AUDIO_EOS]
        seqs.append(prompt + list(text))
        answers.append(len(text))
    T = max(map(len, seqs))
    ids = torch.full((len(seqs), T), PAD)
    mask = torch.zeros(len(seqs), T, dtype=torch.long)
    labels = torch.full((len(seqs), T), -100)
    for i, (s, k) in enumerate(zip(seqs, answers)):
        ids[i, T - len(s):] = torch.tensor(s)
        mask[i, T - len(s):] = 1
        labels[i, T - k:] = ids[i, T - k:]
    return dict(input_ids=ids, attention_mask=mask, input_features=feats, feature_attention_mask=fmask), labels


@pytest.fixture(params=sorted(TINY_HF_CONFIGS))
def hf_name(request):
    return request.param


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """A saved "tiny-random" Qwen2-Audio (our own class, no transformers) for the inference tests. Its weights are
    drawn so that greedy decoding wanders over the vocabulary (Chinese, emoji pieces ...) instead of repeating one
    token, with logits spread wide enough that float noise cannot flip a greedy choice."""
    from qwen2audio import Qwen2AudioConfig, Qwen2AudioForConditionalGeneration

    torch.manual_seed(0)
    model = Qwen2AudioForConditionalGeneration(Qwen2AudioConfig.from_name("tiny-random"))
    with torch.no_grad():
        for name, p in model.named_parameters():
            is_norm_scale = "norm" in name and name.endswith("weight")
            p.normal_(1.0 if is_norm_scale else 0.0, 0.2 if p.ndim > 1 else 0.1)
    directory = tmp_path_factory.mktemp("tiny-random")
    model.save_pretrained(directory)
    return directory


def clip_with_pauses(seconds: float = 95.0, seed: int = 0):
    """Tone bursts of 3-8 s (each at its own pitch, with a little noise) separated by near-silent pauses of
    0.6-1.2 s: a stand-in for speech with pauses. Returns the 16 kHz waveform and the pauses as (start, end) s."""
    import numpy as np

    sr, rng = 16000, np.random.default_rng(seed)
    parts, pauses, t = [], [], 0.0
    while t < seconds:
        burst, freq = rng.uniform(3.0, 8.0), rng.uniform(200.0, 900.0)
        n = int(burst * sr)
        parts.append(0.3 * np.sin(2 * np.pi * freq * np.arange(n) / sr) + 0.01 * rng.standard_normal(n))
        pause = rng.uniform(0.6, 1.2)
        parts.append(1e-4 * rng.standard_normal(int(pause * sr)))
        pauses.append((t + n / sr, t + n / sr + int(pause * sr) / sr))
        t += n / sr + int(pause * sr) / sr
    return np.concatenate(parts)[: int(seconds * sr)].astype(np.float32), pauses
