"""Text + audio -> model inputs, with the names, shapes and meaning of transformers' `Qwen2AudioProcessor`.

    processor = Processor.from_pretrained(checkpoint_dir)
    prompt = processor.apply_chat_template(conversation, add_generation_prompt=True)
    inputs = processor(text=prompt, audio=[waveform], sampling_rate=16000)
    # input_ids [B, T], attention_mask [B, T], input_features [N, n_mels, 3000], feature_attention_mask [N, 3000]

Each `<|AUDIO|>` of the text (one per audio, in order across the batch) is expanded to `audio_token_count(frames)`
copies, the number of frames the encoder gives for that audio.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from .files import atomic_write_json
from .audio import CHUNK_LENGTH, HOP_LENGTH, N_FFT, N_MELS, N_SAMPLES, SAMPLE_RATE, load_audio, log_mel_spectrogram
from .model import audio_token_count
from .tokenizer import AUDIO_TOKEN, Tokenizer

PREPROCESSOR_CONFIG = "preprocessor_config.json"


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
                 padding_side: str | None = None, truncate_audio: bool = True,
                 device: torch.device | str | None = None, **unused) -> ModelInputs:
        """text: one prompt or a batch; audio: one waveform/path/bytes or a list, one per `<|AUDIO|>` in order.

        sampling_rate: the rate of waveform arrays (files carry their own); they are resampled to 16 kHz.
        Audio over 30 s is cut to 30 s, as transformers does, with a warning; `truncate_audio=False` raises
        instead (split long audio into windows first; the inference engine does that for you).
        """
        if unused.pop("return_tensors", "pt") != "pt":
            raise ValueError("Processor returns PyTorch tensors only (return_tensors='pt')")
        unused.pop("padding", None)  # always pads to the longest, as transformers' padding=True
        if unused:
            raise TypeError(f"unexpected arguments: {', '.join(unused)}")
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
            long = [i for i, w in enumerate(waves) if len(w) > N_SAMPLES]
            if long and not truncate_audio:
                raise ValueError(f"audio {long} is longer than {CHUNK_LENGTH} s; split it into windows of at most "
                                 f"{CHUNK_LENGTH} s or pass truncate_audio=True")
            if long:
                warnings.warn(f"audio {long} is longer than {CHUNK_LENGTH} s and was cut to {CHUNK_LENGTH} s, as "
                              "transformers does; use the inference engine's long-audio path to keep all of it",
                              stacklevel=2)
            features, frame_mask = log_mel_spectrogram([w[:N_SAMPLES] for w in waves], n_mels=self.n_mels,
                                                       device=device)
            counts = iter(audio_token_count(frame_mask.sum(-1)).tolist())
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
