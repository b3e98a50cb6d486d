"""What an evaluation set is made of: the `Benchmark` preset type (its layout, task, metric and published numbers;
the presets themselves are `datasets.PRESETS`) and the `EvalItem`s its loaders read, and the report's language of
each official source."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from ..tokenizer import AUDIO_PLACEHOLDER, base_prompt

# The report's language of each official ASR / S2TT source, for manifest rows that name no language.
SOURCE_LANGUAGE = [(r"librispeech|_en$|^cv15_en", "en"), (r"aishell|fleurs_zh|cv15_zh|wenetspeech", "zh"),
                   (r"yue", "yue"), (r"_fr$", "fr")]


@dataclass(frozen=True)
class EvalItem:
    """One utterance: `audio` is a path, file bytes or a 16 kHz array; `prompt` is the full base-model prompt
    (`<|audio_bos|><|AUDIO|><|audio_eos|>` + task text, one placeholder per audio). The chat form of the item is
    `conversation()`: its own `messages` where it has them, else one user turn holding its audio(s) and `text`."""

    id: str
    audio: Any
    source: str
    prompt: str
    gt: str
    language: str | None = None
    target: str | None = None
    text: str | None = None  # the text of a chat turn after the audio (API requests; None: the prompt's task text)
    extra: dict = field(default_factory=dict)  # what a metric needs besides gt (AIR-Bench: question, choices ...)
    # the conversation up to the last user turn, audio parts {"type": "audio", "audio": source} in place (multi-turn,
    # several audios); None: built by conversation(). Items that have one follow the model's prompt style.
    messages: list[dict] | None = None
    audios: tuple = ()  # every audio in prompt order when there are several (`audio` is then the first)

    def all_audios(self) -> list:
        return list(self.audios) or [self.audio]

    def conversation(self) -> list[dict]:
        """The item as a chat: its `messages`, else one user turn with its audio part(s) and then its text (the
        prompt's task text when `text` is None; no text part when that is empty: voice chat)."""
        if self.messages is not None:
            return self.messages
        text = self.text if self.text is not None else self.prompt.replace(AUDIO_PLACEHOLDER, "")
        parts = [{"type": "audio", "audio": a} for a in self.all_audios()]
        return [{"role": "user", "content": parts + ([{"type": "text", "text": text}] if text else [])}]


@dataclass(frozen=True)
class Benchmark:
    """A preset. layout: how the users' download is read (a key of `datasets.LOADERS`); task: the official base prompt (`base_prompt`);
    metric: a name in `metrics.METRICS`; language/target: of the speech and of the answer; labels: the label set of
    a classification task; columns: the text column(s) of the Hugging Face parquet export, first found wins;
    published: the report's numbers per source (paper, and after the HF conversion where it gives both)."""

    name: str
    layout: str
    task: str
    metric: str
    language: str | None = "en"
    target: str = "en"
    labels: tuple[str, ...] = ()
    columns: tuple[str, ...] = ("text", "sentence", "transcription", "raw_transcription")
    source: str = ""  # the source name when the layout does not give one
    published: dict[str, Any] = field(default_factory=dict)

    def prompt(self, language: str | None = None, target: str | None = None) -> str:
        if self.task == "chat":
            raise ValueError(f"{self.name}: chat items carry their own prompt")
        return base_prompt(self.task, language or self.language, target or self.target)


def source_language(source: str) -> str | None:
    return next((language for pattern, language in SOURCE_LANGUAGE if re.search(pattern, source)), None)
