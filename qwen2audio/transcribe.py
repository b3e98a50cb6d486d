"""Speech to text for audio of any length.

    result = transcribe(model, "talk.mp3", language="en")
    result.text, result.language, result.segments   # segments: start/end seconds and the text of each window
    format_transcription(result, "srt")

Audio over 30 s is cut into windows of at most 30 s at pauses where there are any (`split_long_audio`: the quietest
stretch of the last 5 s before each 30 s limit, else a hard cut at the limit); the windows are transcribed in
batches through `model.generate` (greedy unless told otherwise) and their texts stitched, language tags removed
(`transcription_from_windows`: any caller that decodes the windows its own way stitches them with it).
Prompt: a base model gets the official ASR prompt (`<|audio_bos|><|AUDIO|><|audio_eos|>Detect the language and
recognize the speech: <|en|>`, the tag left to the model when `language` is None); an Instruct model gets a chat
turn asking for the transcript. `style="auto"` tells them apart by the checkpoint's generation config.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

from .audio import SAMPLE_RATE, load_audio
from .chat import model_processor
from .processor import AudioWindow, describe_windows, split_long_audio
from .tokenizer import base_prompt, chat_task_prompt

OUTPUT_FORMATS = ("txt", "json", "srt")
STYLES = ("auto", "base", "chat")
TAG = re.compile(r"<\|([^|<>]*)\|>")  # <|en|>, <|endoftext|> ... written as text in the output
LANGUAGE_TAG = re.compile(r"<\|([a-z]{2,3})\|>")
# scripts written without spaces between words: no space is put between two windows' texts there
NO_SPACE = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\u3000-\u303f\uff00-\uffef]")

logger = logging.getLogger("qwen2audio")


@dataclass
class Segment:
    start: float  # seconds
    end: float
    text: str
    at_pause: bool = False  # the window was cut at a pause (not at the 30 s limit or the end of the audio)


@dataclass
class Transcription:
    text: str
    language: str | None  # as given, or the tag the model wrote first (base model), else None
    duration: float
    segments: list[Segment] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def prompt_style(model) -> str:
    """'chat' for an Instruct checkpoint, 'base' for a pre-trained one: generation_config.json's chat_format when
    it has one, else whether <|im_end|> (the end of a chat turn) is among its eos ids."""
    defaults = model.generation_defaults()
    chat_format = defaults.get("chat_format")
    if chat_format in ("chatml", "raw"):
        return "chat" if chat_format == "chatml" else "base"
    eos = defaults.get("eos_token_id")
    eos = [eos] if isinstance(eos, int) else list(eos or [])
    return "chat" if model_processor(model).tokenizer.im_end_id in eos else "base"


def transcription_prompt(processor, style: str, language: str | None) -> str:
    if style == "base":
        return base_prompt("asr", language)
    conversation = [{"role": "user", "content": [{"type": "audio"},
                                                 {"type": "text", "text": chat_task_prompt("asr", language)}]}]
    return processor.apply_chat_template(conversation, add_generation_prompt=True)


def clean_transcript(raw: str) -> tuple[str, str | None]:
    """Model output -> (text without <|..|> tags, single-spaced; the first language tag or None)."""
    tag = LANGUAGE_TAG.search(raw)
    return " ".join(TAG.sub(" ", raw).split()), tag.group(1) if tag else None


def stitch(texts: list[str]) -> str:
    """Join the windows' texts: a space between them, none where both sides are Chinese/Japanese script."""
    out = ""
    for text in filter(None, texts):
        joint = "" if not out or (NO_SPACE.match(out[-1]) and NO_SPACE.match(text[0])) else " "
        out += joint + text
    return out


def transcription_from_windows(windows: Sequence[AudioWindow], raw_texts: Sequence[str], language: str | None,
                               duration: float) -> Transcription:
    """The windows' raw outputs, in order -> the Transcription: one Segment per window (tags removed), the texts
    stitched, and the language as given, else the first tag the model wrote."""
    segments, detected = [], []
    for window, raw in zip(windows, raw_texts):
        text, tag = clean_transcript(raw)
        detected.append(tag)
        segments.append(Segment(*window.seconds, text, window.at_pause))
    found = language or next((tag for tag in detected if tag), None)
    return Transcription(stitch([s.text for s in segments]), found, duration, segments)


def transcribe(model, audio, language: str | None = None, sampling_rate: int | None = None, style: str = "auto",
               batch_size: int = 8, progress: Callable[[int, int], None] | None = None,
               **options) -> Transcription:
    """Transcribe `audio` (a path, bytes, a data URL, or an array with `sampling_rate`) of any length.

    language: a code such as "en" or "zh" (None: the model detects it). style: "auto", "base" or "chat" (prompt
    format, see the module docstring). batch_size: windows per `generate` call. progress: called as
    progress(windows done, windows in all) before the first batch and after each. options: generation options
    (max_new_tokens defaults to 256, as in the official evaluation; greedy unless do_sample=True).
    """
    if style not in STYLES:
        raise ValueError(f"style must be one of {', '.join(STYLES)}, not {style!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    style = prompt_style(model) if style == "auto" else style
    wave = load_audio(audio, sampling_rate)
    windows = split_long_audio(wave)
    if len(windows) > 1:
        name = audio if isinstance(audio, (str, os.PathLike)) and not str(audio).startswith("data:") else "audio"
        logger.info("%s (%.1f s) is longer than 30 s: transcribed as %d windows: %s", name,
                    len(wave) / SAMPLE_RATE, len(windows), describe_windows(windows))
    prompt = transcription_prompt(model_processor(model), style, language)
    options.setdefault("max_new_tokens", 256)
    raw_texts = _window_texts(model, prompt, wave, windows, batch_size, progress, options)
    return transcription_from_windows(windows, raw_texts, language, len(wave) / SAMPLE_RATE)


def _window_texts(model, prompt: str, wave, windows: Sequence[AudioWindow], batch_size: int,
                  progress: Callable[[int, int], None] | None, options: dict) -> list[str]:
    """The model's raw output for each window (special tokens skipped, language tags kept), `batch_size` windows per
    `model.generate` call."""
    processor = model_processor(model)
    texts = []
    if progress is not None:
        progress(0, len(windows))
    for first in range(0, len(windows), batch_size):
        batch = windows[first:first + batch_size]
        inputs = processor(text=[prompt] * len(batch), audio=[wave[w.start:w.end] for w in batch],
                           sampling_rate=SAMPLE_RATE, padding_side="left")
        sequences = model.generate(**inputs, **options)
        texts += processor.tokenizer.decode_batch(sequences[:, inputs["input_ids"].shape[1]:].tolist(),
                                                  skip_special_tokens=True)
        if progress is not None:
            progress(len(texts), len(windows))
    return texts


def format_transcription(result: Transcription, output_format: str) -> str:
    """The text of a .txt, .json or .srt file for `result`."""
    if output_format == "txt":
        return result.text + "\n"
    if output_format == "json":
        return json.dumps(result.to_dict(), ensure_ascii=False, indent=2) + "\n"
    if output_format == "srt":
        blocks = [f"{i}\n{_srt_time(s.start)} --> {_srt_time(s.end)}\n{s.text}\n"
                  for i, s in enumerate((s for s in result.segments if s.text), start=1)]
        return "\n".join(blocks)
    raise ValueError(f"unknown output format {output_format!r}; choose {', '.join(OUTPUT_FORMATS)}")


def _srt_time(seconds: float) -> str:
    ms = round(seconds * 1000)
    return f"{ms // 3_600_000:02d}:{ms // 60_000 % 60:02d}:{ms // 1000 % 60:02d},{ms % 1000:03d}"
