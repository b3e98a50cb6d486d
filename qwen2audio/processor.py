"""Text + audio -> model inputs, with the names, shapes and meaning of transformers' `Qwen2AudioProcessor`.

    processor = Processor.from_pretrained(checkpoint_dir)
    prompt = processor.apply_chat_template(conversation, add_generation_prompt=True)
    inputs = processor(text=prompt, audio=[waveform], sampling_rate=16000)
    # input_ids [B, T], attention_mask [B, T], input_features [N, n_mels, 3000], feature_attention_mask [N, 3000]

Each `<|AUDIO|>` of the text (one per audio, in order across the batch) is expanded to `audio_token_count(frames)`
copies, the number of frames the encoder gives for that audio.

Audio over 30 s (`long_audio=`): "truncate" cuts it to 30 s with a warning, as transformers does (the default);
"window" splits it into windows of at most 30 s, cut at pauses where there are any (`split_long_audio`), each
encoded as its own feature row; the windows' frames fill that audio's one `<|AUDIO|>` span in order, so its
placeholder expands to the sum of the windows' counts; "error" refuses it.
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .files import atomic_write_json
from .audio import CHUNK_LENGTH, HOP_LENGTH, N_FFT, N_MELS, N_SAMPLES, SAMPLE_RATE, load_audio, log_mel_spectrogram
from .model import audio_token_count
from .tokenizer import AUDIO_TOKEN, Tokenizer

PREPROCESSOR_CONFIG = "preprocessor_config.json"
LONG_AUDIO_MODES = ("truncate", "window", "error")
# Where to cut audio longer than 30 s: the quietest stretch in the last PAUSE_SEARCH_S seconds before each 30 s limit,
# if it is quiet enough to be a pause (smoothed energy at most QUIET_RATIO x the clip's median); else at the limit.
PAUSE_SEARCH_S = 5.0
ENERGY_HOP = HOP_LENGTH  # energy frames of 10 ms
ENERGY_SMOOTHING = 20  # frames averaged (200 ms): a pause, not a gap between two samples
QUIET_RATIO = 0.1  # -20 dB (in amplitude) below the clip's median frame energy

logger = logging.getLogger("qwen2audio")


class ModelInputs(dict):
    """A dict of tensors (so `model(**inputs)` works) with `.to(device)`, like transformers' BatchFeature."""

    def to(self, device=None, dtype: torch.dtype | None = None) -> "ModelInputs":
        """Move every tensor to `device`; `dtype` applies to the floating-point ones (the audio features)."""
        return ModelInputs({k: v.to(device=device, dtype=dtype if v.is_floating_point() else None)
                            for k, v in self.items()})

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


class Processor:
    def __init__(self, tokenizer: Tokenizer | None = None, n_mels: int = N_MELS, padding_side: str = "left",
                 feature_config: Mapping[str, Any] | None = None):
        self.tokenizer = tokenizer or Tokenizer.from_pretrained()
        self.n_mels = n_mels
        self.padding_side = _check_padding_side(padding_side)
        self.feature_config = dict(feature_config or {})

    @classmethod
    def from_pretrained(cls, path: str | Path | None = None, padding_side: str = "left") -> "Processor":
        """Tokenizer files and `preprocessor_config.json` of a checkpoint directory (the bundled tokenizer and
        Whisper-large-v3 features when `path` is None or lacks them)."""
        tokenizer = Tokenizer.from_pretrained(path)
        config: dict[str, Any] = {}
        if path is not None and (Path(path) / PREPROCESSOR_CONFIG).exists():
            config = json.loads((Path(path) / PREPROCESSOR_CONFIG).read_text())
            _check_feature_config(config, Path(path) / PREPROCESSOR_CONFIG)
        return cls(tokenizer, n_mels=config.get("feature_size", N_MELS), padding_side=padding_side,
                   feature_config=config)

    # -- prompts ----------------------------------------------------------------------------------------------------
    def apply_chat_template(self, conversation, add_generation_prompt: bool = False, tokenize: bool = False):
        text = self.tokenizer.apply_chat_template(conversation, add_generation_prompt=add_generation_prompt)
        return self.tokenizer.encode(text) if tokenize else text

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        return self.tokenizer.decode(_as_list(ids), skip_special_tokens=skip_special_tokens)

    def batch_decode(self, batch, skip_special_tokens: bool = False) -> list[str]:
        return [self.decode(ids, skip_special_tokens) for ids in batch]

    # -- inputs -------------------------------------------------------------------------------------------------------
    def __call__(self, text: str | Sequence[str], audio=None, sampling_rate: int | None = None,
                 padding_side: str | None = None, long_audio: str = "truncate",
                 device: torch.device | str | None = None, **unused) -> ModelInputs:
        """text: one prompt or a batch; audio: one waveform/path/bytes or a list, one per `<|AUDIO|>` in order.

        sampling_rate: the rate of waveform arrays (files carry their own); they are resampled to 16 kHz.
        long_audio: what to do with audio over 30 s: "truncate" (the default, as transformers: cut to 30 s with a
        warning), "window" (keep all of it as consecutive windows of at most 30 s, see the module docstring) or
        "error".
        """
        if unused.pop("return_tensors", "pt") != "pt":
            raise ValueError("Processor returns PyTorch tensors only (return_tensors='pt')")
        unused.pop("padding", None)  # always pads to the longest, as transformers' padding=True
        if unused:
            raise TypeError(f"unexpected arguments: {', '.join(unused)}")
        if long_audio not in LONG_AUDIO_MODES:
            raise ValueError(f"long_audio must be one of {', '.join(LONG_AUDIO_MODES)}, not {long_audio!r}")
        texts = [text] if isinstance(text, str) else list(text)
        if not texts or not all(isinstance(t, str) for t in texts):
            raise ValueError("text must be a string or a non-empty list of strings")
        audios = _as_audio_list(audio)
        n_placeholders = sum(t.count(AUDIO_TOKEN) for t in texts)
        if n_placeholders != len(audios):
            raise ValueError(f"the text holds {n_placeholders} {AUDIO_TOKEN} but {len(audios)} audios were given: "
                             "put one <|audio_bos|><|AUDIO|><|audio_eos|> in the prompt per audio")

        out = ModelInputs()
        if audios:
            waves = [load_audio(a, sampling_rate) for a in audios]
            windows = _audio_windows(waves, long_audio)
            rows = [w[win.start:win.end] for w, ws in zip(waves, windows) for win in ws]
            features, frame_mask = log_mel_spectrogram(rows, n_mels=self.n_mels, device=device)
            row_counts = iter(audio_token_count(frame_mask.sum(-1)).tolist())
            counts = iter([sum(next(row_counts) for _ in ws) for ws in windows])  # one sum per audio
            texts = [_expand_audio_tokens(t, counts) for t in texts]
            out["input_features"], out["feature_attention_mask"] = features, frame_mask.long()
        ids, mask = self.pad([self.tokenizer.encode(t) for t in texts], padding_side or self.padding_side)
        return ModelInputs({"input_ids": ids.to(device), "attention_mask": mask.to(device), **out})

    def pad(self, sequences: Sequence[Sequence[int]], padding_side: str | None = None):
        """Token lists -> input_ids, attention_mask [B, longest], padded with <|endoftext|> on the chosen side."""
        side = _check_padding_side(padding_side or self.padding_side)
        T = max(len(s) for s in sequences)
        ids = torch.full((len(sequences), T), self.tokenizer.pad_id, dtype=torch.long)
        mask = torch.zeros((len(sequences), T), dtype=torch.long)
        for i, seq in enumerate(sequences):
            span = slice(T - len(seq), T) if side == "left" else slice(0, len(seq))
            ids[i, span] = torch.tensor(seq, dtype=torch.long)
            mask[i, span] = 1
        return ids, mask

    # -- files -------------------------------------------------------------------------------------------------------
    def save_pretrained(self, directory: str | Path) -> None:
        """Tokenizer files and a WhisperFeatureExtractor `preprocessor_config.json`, as the hub checkpoints have."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save_pretrained(directory)
        atomic_write_json(directory / PREPROCESSOR_CONFIG, self.preprocessor_config())

    def preprocessor_config(self) -> dict[str, Any]:
        return {
            **self.feature_config,
            "feature_extractor_type": "WhisperFeatureExtractor", "processor_class": "Qwen2AudioProcessor",
            "feature_size": self.n_mels, "sampling_rate": SAMPLE_RATE, "hop_length": HOP_LENGTH,
            "chunk_length": CHUNK_LENGTH, "n_fft": N_FFT, "n_samples": N_SAMPLES,
            "nb_max_frames": N_SAMPLES // HOP_LENGTH, "padding_side": "right", "padding_value": 0.0,
            "return_attention_mask": True, "dither": 0.0,
        }


@dataclass(frozen=True)
class AudioWindow:
    """Samples [start, end) of a 16 kHz waveform; `at_pause`: the window ends at a pause (else at the 30 s limit or
    at the end of the audio)."""

    start: int
    end: int
    at_pause: bool = False

    @property
    def seconds(self) -> tuple[float, float]:
        return self.start / SAMPLE_RATE, self.end / SAMPLE_RATE


def split_long_audio(wave: np.ndarray, max_samples: int = N_SAMPLES,
                     search_samples: int = int(PAUSE_SEARCH_S * SAMPLE_RATE)) -> list[AudioWindow]:
    """Consecutive windows of at most `max_samples` covering `wave` [n] (16 kHz) without gaps or overlap.

    Each cut goes in the middle of the quietest stretch (200 ms smoothed energy) of the last `search_samples` before
    the limit when that stretch is a pause (at most QUIET_RATIO x the clip's median energy); else at the limit.
    """
    n = len(wave)
    if n <= max_samples:
        return [AudioWindow(0, n)]
    frames = -(-n // ENERGY_HOP)
    power = np.zeros(frames * ENERGY_HOP, dtype=np.float64)
    power[:n] = np.square(wave, dtype=np.float64)
    energy = np.sqrt(power.reshape(frames, ENERGY_HOP).mean(-1))  # RMS per 10 ms
    smooth = np.convolve(energy, np.ones(ENERGY_SMOOTHING) / ENERGY_SMOOTHING, mode="same")
    quiet_level = QUIET_RATIO * np.median(smooth)
    windows, start = [], 0
    while n - start > max_samples:
        limit = start + max_samples
        lo, hi = max(start, limit - search_samples) // ENERGY_HOP + 1, limit // ENERGY_HOP  # frames inside
        zone = smooth[lo:hi]
        if zone.size and zone.min() <= quiet_level:
            quietest = np.flatnonzero(zone <= zone.min() + 1e-3 * quiet_level)
            breaks = np.flatnonzero(np.diff(quietest) > 1)
            run_start = quietest[breaks[-1] + 1] if breaks.size else quietest[0]  # the last quietest run: its middle
            cut = (lo + (int(run_start) + int(quietest[-1])) // 2) * ENERGY_HOP + ENERGY_HOP // 2
            windows.append(AudioWindow(start, cut, at_pause=True))
        else:
            cut = limit
            windows.append(AudioWindow(start, cut))
        start = cut
    windows.append(AudioWindow(start, n))
    return windows


def describe_windows(windows: Sequence[AudioWindow]) -> str:
    """'0.0-28.3 s (pause), 28.3-57.9 s (pause), 57.9-61.0 s' for logs and messages."""
    return ", ".join(f"{w.seconds[0]:.1f}-{w.seconds[1]:.1f} s" + (" (pause)" if w.at_pause else "")
                     for w in windows)


def audios_in_conversation(conversation: Sequence[Mapping[str, Any]]) -> list[Any]:
    """The audio sources of a chat conversation, in the order the template numbers them ('Audio 1', 'Audio 2', ...):
    the value of each audio part's "audio", "audio_url" (a string or {"url": ...}) or "path" key."""
    sources = []
    for message in conversation:
        content = message.get("content")
        if isinstance(content, str):
            continue
        for part in content or []:
            if part.get("type") == "audio" or "audio" in part or "audio_url" in part:
                source = next((part[k] for k in ("audio", "audio_url", "path", "url") if k in part), None)
                if isinstance(source, Mapping):
                    source = source.get("url")
                if source is None:
                    raise ValueError(f"audio part {part} has no audio: give it an 'audio' (path, bytes, array or "
                                     "data: URL) or 'audio_url' key")
                sources.append(source)
    return sources


def _audio_windows(waves: Sequence[np.ndarray], long_audio: str) -> list[list[AudioWindow]]:
    """The windows each waveform reaches the model in, by `long_audio` (Processor.__call__): one window of at most
    30 s ("truncate", with a warning when it cuts; "error" refuses longer audio), or windows cut at pauses
    ("window")."""
    long = [i for i, w in enumerate(waves) if len(w) > N_SAMPLES]
    if long and long_audio == "error":
        raise ValueError(f"audio {long} is longer than {CHUNK_LENGTH} s; split it into windows of at most "
                         f"{CHUNK_LENGTH} s (long_audio='window') or pass long_audio='truncate'")
    if long and long_audio == "truncate":
        warnings.warn(f"audio {long} is longer than {CHUNK_LENGTH} s and was cut to {CHUNK_LENGTH} s, as "
                      "transformers does; pass long_audio='window' (model.chat does) to keep all of it",
                      stacklevel=3)  # the caller of Processor.__call__
    windows = [split_long_audio(w) if long_audio == "window" else [AudioWindow(0, min(len(w), N_SAMPLES))]
               for w in waves]
    for i in long if long_audio == "window" else []:
        logger.info("audio %d (%.1f s) is longer than %d s: given to the model as %d windows in order "
                    "(%s)", i + 1, len(waves[i]) / SAMPLE_RATE, CHUNK_LENGTH, len(windows[i]),
                    describe_windows(windows[i]))
    return windows


def _expand_audio_tokens(text: str, counts) -> str:
    pieces = text.split(AUDIO_TOKEN)
    return pieces[0] + "".join(AUDIO_TOKEN * next(counts) + piece for piece in pieces[1:])


def _as_audio_list(audio) -> list:
    if audio is None:
        return []
    if isinstance(audio, (list, tuple)):
        if audio and all(isinstance(x, (int, float)) for x in audio[:8]):
            raise ValueError("audio is a list of numbers: pass a numpy array for one waveform, or a list of arrays")
        return list(audio)
    return [audio]


def _as_list(ids) -> list[int]:
    return ids.tolist() if hasattr(ids, "tolist") else list(ids)


def _check_padding_side(side: str) -> str:
    if side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', not {side!r}")
    return side


def _check_feature_config(config: Mapping[str, Any], path: Path) -> None:
    """Our front end implements Whisper's: refuse a preprocessor config that asks for another one."""
    fixed = {"sampling_rate": SAMPLE_RATE, "hop_length": HOP_LENGTH, "n_fft": N_FFT, "chunk_length": CHUNK_LENGTH}
    wrong = {k: config[k] for k, v in fixed.items() if k in config and config[k] != v}
    if wrong:
        raise ValueError(f"{path}: {wrong} differ from the Whisper front end this package implements {fixed}")
