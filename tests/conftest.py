"""Shared fixtures: tiny random Qwen2-Audio configs in the Hugging Face format, inputs with expanded audio, and the
test audio (tones, speech, clips with pauses) as waveforms, file bytes and files; all of it at SAMPLE_RATE."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
from tokenizers import AddedToken, pre_tokenizers

from qwen2audio import Processor, Qwen2AudioForConditionalGeneration
from qwen2audio.audio import SAMPLE_RATE
from qwen2audio.model import AudioEncoderConfig, Qwen2AudioConfig, TextConfig, audio_token_count
from qwen2audio.tokenizer import AUDIO_BOS as AUDIO_BOS_TOKEN, AUDIO_EOS as AUDIO_EOS_TOKEN, AUDIO_TOKEN, ENDOFTEXT
from qwen2audio.tokenizer import IM_START as IM_START_TOKEN, SPECIAL_TOKENS, Tokenizer, build_backend

REPO = Path(__file__).resolve().parents[1]

# Special ids of the Qwen2-Audio vocabulary, for building inputs by hand in tests.
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


# -- test audio -------------------------------------------------------------------------------------------------------
TONE_AMPLITUDE = 0.3  # headroom for the noise on top: a 16-bit file never clips it


def tone(seconds: float, freq: float = 440.0, noise: float = 0.0, seed: int = 0) -> np.ndarray:
    """A sine of `freq` Hz (float32), plus `noise` x seeded standard normal noise where noise > 0."""
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    wave = TONE_AMPLITUDE * np.sin(2 * np.pi * freq * t)
    if noise:
        wave = wave + noise * np.random.default_rng(seed).standard_normal(t.size)
    return wave.astype(np.float32)


def audio_bytes(wave: np.ndarray, format: str = "WAV", subtype: str = "PCM_16") -> bytes:
    """A waveform as the bytes of an audio file (soundfile's `format` and `subtype`)."""
    buffer = io.BytesIO()
    soundfile.write(buffer, wave, SAMPLE_RATE, format=format, subtype=subtype)
    return buffer.getvalue()


def write_tone(path: Path, seconds: float, freq: float = 440.0, noise: float = 0.0, seed: int = 0) -> Path:
    """`tone(...)` written to `path` (the format from its suffix), folders made as needed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(path, tone(seconds, freq, noise, seed), SAMPLE_RATE)
    return path


def write_speech(path: Path, text: str, voice: str | None = None) -> Path:
    """espeak-ng reading `text` (in `voice`, else its default) as a wav file; the caller checks espeak-ng is there."""
    subprocess.run(["espeak-ng", *(["-v", voice] if voice else []), "-w", str(path), text], check=True)
    return path


def dominant_hz(x: np.ndarray) -> float:
    """The frequency of the strongest bin of the Hann-windowed spectrum."""
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.fft.rfftfreq(len(x), 1 / SAMPLE_RATE)[np.argmax(spectrum)])


def count_onsets(x: np.ndarray, threshold: float = 0.1) -> int:
    """Events counted as rising edges of the rectified signal smoothed over 5 ms, merging edges < 30 ms apart."""
    envelope = np.convolve(np.abs(x), np.ones(80) / 80, mode="same")
    above = envelope > threshold * envelope.max()
    edges = np.flatnonzero(above[1:] & ~above[:-1])
    return int(1 + np.sum(np.diff(edges) > 0.03 * SAMPLE_RATE)) if len(edges) else 0


def median_f0(x: np.ndarray, top_hz: int = 400) -> float:
    """Median pitch of the voiced 40-ms frames by autocorrelation (60..top_hz Hz)."""
    n, lo, hi = int(0.04 * SAMPLE_RATE), SAMPLE_RATE // top_hz, SAMPLE_RATE // 60
    pitches = []
    for start in range(0, len(x) - n, n):
        frame = x[start:start + n] - x[start:start + n].mean()
        if np.sqrt(np.mean(frame ** 2)) < 0.3 * np.sqrt(np.mean(x ** 2)):
            continue
        ac = np.correlate(frame, frame, "full")[n - 1:]
        lag = lo + int(np.argmax(ac[lo:hi]))
        if ac[lag] > 0.3 * ac[0]:
            pitches.append(SAMPLE_RATE / lag)
    return float(np.median(pitches))


def clip_with_pauses(seconds: float = 95.0, seed: int = 0):
    """Tone bursts of 3-8 s (each at its own pitch, with a little noise) separated by near-silent pauses of
    0.6-1.2 s: a stand-in for speech with pauses. Returns the waveform and the pauses as (start, end) s."""
    sr, rng = SAMPLE_RATE, np.random.default_rng(seed)
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


# -- a tiny trainable model and rows for it (data, training and feature-cache tests) -----------------------
WORDS = ["low", "mid", "high", "top"]
FREQS = [200, 400, 800, 1600]


def tiny_tokenizer(directory: Path) -> Tokenizer:
    directory.mkdir(parents=True, exist_ok=True)
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    (directory / "vocab.json").write_text(json.dumps({c: i for i, c in enumerate(alphabet)}))
    (directory / "merges.txt").write_text("#version: 0.2\n")
    added = {len(alphabet) + i: AddedToken(t, special=True, normalized=False) for i, t in enumerate(SPECIAL_TOKENS)}
    Tokenizer(build_backend(directory / "vocab.json", directory / "merges.txt", added)).save_pretrained(directory)
    return Tokenizer.from_pretrained(directory)


def write_trainable_checkpoint(directory: Path, seed: int = 0) -> Path:
    """A 2-layer Qwen2-Audio with a 272-row vocabulary, saved in the hub layout with its tokenizer."""
    tok = tiny_tokenizer(directory / "tokenizer")
    config = Qwen2AudioConfig(
        audio=AudioEncoderConfig(n_mels=128, dim=32, n_layers=1, n_heads=2, ffn_dim=64),
        text=TextConfig(vocab_size=272, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=64, norm_eps=1e-6,
                        rope_theta=10000.0, max_positions=2048, tie_embeddings=False),
        audio_token_id=tok.audio_token_id)
    torch.manual_seed(seed)
    model = Qwen2AudioForConditionalGeneration(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.normal_(0, 0.02)
        # embeddings and head at a trained model's scale, so that adapters inside the layers can move the logits
        model.decoder.embed_tokens.weight.normal_(0, 0.3)
        model.decoder.lm_head.weight.normal_(0, 0.3)
        for name, p in model.named_parameters():
            if "norm" in name and name.endswith("weight"):
                p.fill_(1.0)
    model.processor = Processor(tok)
    model.save_pretrained(directory)
    return directory


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def pitch_rows(directory: Path, n: int = 16, kind: str = "sft") -> list[dict]:
    """Rows about tones of four pitches (audio under directory/audio, paths relative to the manifest)."""
    rows = []
    for i in range(n):
        k = i % 4
        write_tone(directory / "audio" / f"{i}.wav", 0.5 + 0.1 * (i % 5), FREQS[k], noise=0.01, seed=i)
        audio = f"audio/{i}.wav"
        if kind == "task":
            rows.append({"audio": audio, "task": "sound", "text": f"A {WORDS[k]} tone."})
        elif kind == "dpo":
            rows.append({"messages": [{"role": "user", "content": "<audio>What pitch is this?"},
                                      {"role": "assistant", "content": f"It is {WORDS[k]}."}],
                         "rejected_response": "I cannot tell.", "audios": [audio]})
        else:
            rows.append({"messages": [{"role": "user", "content": "<audio>What pitch is this?"},
                                      {"role": "assistant", "content": f"It is {WORDS[k]}."}], "audios": [audio]})
    return rows


def write_training_dir(d: Path) -> Path:
    """A tiny checkpoint (d/ckpt) and 16 pitch rows in each row form (d/sft.jsonl, task.jsonl, dpo.jsonl)."""
    write_trainable_checkpoint(d / "ckpt")
    for kind in ("sft", "task", "dpo"):
        write_jsonl(d / f"{kind}.jsonl", pitch_rows(d, 16, kind))
    return d


@pytest.fixture(scope="session")
def tiny(tmp_path_factory) -> Path:
    """`write_training_dir`'s checkpoint and rows, shared by the session: read-only."""
    return write_training_dir(tmp_path_factory.mktemp("tiny"))


def overrides(tiny: Path, out: Path, *extra: str) -> list[str]:
    """Command-line overrides of a fast training run of the tiny checkpoint, writing to `out`."""
    return [f"model.path={tiny / 'ckpt'}", f"out_dir={out}", "data.batch_size=4", "data.num_workers=0",
            "model.precision=32-true", "logging.progress=false", "checkpoint.save_final=false", *extra]


def losses(run, key="loss"):
    """One metric of every logged step of a finished run."""
    return [line[key] for line in run.history]


RESUME_SCRIPT = textwrap.dedent("""
    import os, signal, sys
    from qwen2audio.train import load_config, train
    import qwen2audio.train.checkpointing as checkpointing
    out, kill_at, mode, *extra = sys.argv[1:]
    kill_at = int(kill_at)
    def hook(run, event):
        if mode == "step" and event == "step" and run.step == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
    if mode == "write":  # die half-way through writing the new checkpoint's trainer state
        save = checkpointing._save_fsynced
        def dying_save(obj, path):
            if path.name == "trainer.pt" and path.parent.name == f".tmp-step-{kill_at:08d}":
                path.write_bytes(b"half a file")
                os.kill(os.getpid(), signal.SIGKILL)
            save(obj, path)
        checkpointing._save_fsynced = dying_save
    train(load_config(None, [f"out_dir={out}", *extra], stage="sft"), hooks=[hook], resume=True)
""")


def run_script(tmp_path, *args):
    """Train in a fresh process (RESUME_SCRIPT's arguments: out, kill_at, mode, overrides...)."""
    script = tmp_path / "resume.py"
    script.write_text(RESUME_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, str(script), *map(str, args)], env=env, capture_output=True, text=True,
                          timeout=300)
