"""Chat with Qwen2-Audio: OpenAI-style messages with text and audio parts -> the assistant's reply.

    reply = model.chat([{"role": "user", "content": [
        {"type": "input_audio", "input_audio": {"data": base64_wav, "format": "wav"}},
        {"type": "text", "text": "What's that sound?"}]}])                          # audio analysis
    reply = model.chat([{"role": "user", "content": [{"type": "audio", "audio": "question.wav"}]}])  # voice chat
    for piece in model.chat(messages, stream=True, stop=["\\n\\n"]): print(piece, end="", flush=True)
    replies = model.chat([conversation_1, conversation_2])                          # a batch, left-padded

Audio parts, in any mix: `{"type": "input_audio", "input_audio": {"data": <base64>, "format": "wav"|"mp3"|...}}`
(OpenAI), `{"type": "audio_url", "audio_url": {"url": "data:audio/...;base64,..." | path}}`, and
`{"type": "audio", "audio": path | bytes | numpy array | data URL}` (transformers; arrays at 16 kHz unless the part
has "sampling_rate"; "path" or "url" keys work too). Audio over 30 s is split into windows of at most 30 s that the
model reads in order inside that audio's one <|audio_bos|>...<|audio_eos|> span (see the processor).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .audio import SAMPLE_RATE, AudioError, load_audio
from .processor import ModelInputs, Processor, split_long_audio
from .streaming import TextStream, text_pieces
from .tokenizer import validate_conversation

AUDIO_PART_TYPES = ("audio", "input_audio", "audio_url")


@dataclass
class ChatReply:
    """What `chat(..., details=True)` returns for each conversation."""

    text: str
    finish_reason: str | None  # "stop": the model ended its turn or a stop string appeared; "length": max_new_tokens
    prompt_tokens: int
    completion_tokens: int
    audio_windows: list[int] = field(default_factory=list)  # windows per audio (1 = up to 30 s, not split)


def load_messages(messages: Sequence[Mapping[str, Any]]) -> tuple[list[dict], list[np.ndarray]]:
    """Messages -> (the conversation as the chat template takes it, the audios as 16 kHz waveforms, in order)."""
    validate_conversation(messages)
    conversation, audios = [], []
    for i, message in enumerate(messages):
        content = message["content"]
        if isinstance(content, str):
            conversation.append({"role": message["role"], "content": content})
            continue
        parts = []
        for j, part in enumerate(content):
            kind = part.get("type", "text" if "text" in part else "audio")
            if kind == "text":
                if not isinstance(part.get("text"), str):
                    raise ValueError(f"message {i} part {j}: a text part needs a string 'text', got {part!r}")
                parts.append({"type": "text", "text": part["text"]})
            elif kind in AUDIO_PART_TYPES:
                audios.append(load_audio(*_audio_source(part, kind, f"message {i} part {j}")))
                parts.append({"type": "audio"})
            else:
                raise ValueError(f"message {i} part {j} has type {kind!r}; use text, {', '.join(AUDIO_PART_TYPES)}")
        conversation.append({"role": message["role"], "content": parts})
    return conversation, audios


def _audio_source(part: Mapping[str, Any], kind: str, where: str) -> tuple[Any, int | None]:
    """(source for load_audio, sampling rate of an array) of one audio part."""
    if kind == "input_audio":
        body = part.get("input_audio")
        if not isinstance(body, Mapping) or not isinstance(body.get("data"), str):
            raise ValueError(f"{where}: input_audio needs {{'data': <base64 string>, 'format': 'wav'}}")
        try:
            return base64.b64decode("".join(body["data"].split()), validate=True), None
        except binascii.Error as e:
            raise AudioError(f"{where}: input_audio data is not valid base64 ({e})") from None
    if kind == "audio_url":
        url = part.get("audio_url")
        url = url.get("url") if isinstance(url, Mapping) else url
        if not isinstance(url, str):
            raise ValueError(f"{where}: audio_url needs {{'url': 'data:audio/wav;base64,...' or a file path}}")
        return (url[len("file://"):] if url.startswith("file://") else url), None
    source = next((part[k] for k in ("audio", "path", "url") if part.get(k) is not None), None)
    if source is None:
        raise ValueError(f"{where}: an audio part needs 'audio' (a path, bytes, a 16 kHz array or a data: URL)")
    if isinstance(source, (str, Path)) and str(source).startswith("file://"):
        source = str(source)[len("file://"):]
    return source, part.get("sampling_rate", SAMPLE_RATE)


def chat_inputs(processor: Processor, conversations: Sequence[Sequence[Mapping[str, Any]]],
                long_audio: str = "window") -> tuple[ModelInputs, list[list[int]]]:
    """Model inputs of a batch of conversations (each ending in a user turn), left-padded, with audio over 30 s
    kept as windows; and the number of windows of each audio per conversation."""
    prompts, audios, windows = [], [], []
    for messages in conversations:
        conversation, waves = load_messages(messages)
        prompts.append(processor.apply_chat_template(conversation, add_generation_prompt=True))
        audios += waves
        windows.append([len(split_long_audio(w)) if long_audio == "window" else 1 for w in waves])
    inputs = processor(text=prompts, audio=audios or None, sampling_rate=SAMPLE_RATE, padding_side="left",
                       long_audio=long_audio)
    return inputs, windows


def generation_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """OpenAI's meaning of temperature on top of transformers' options: temperature > 0 samples, 0 is greedy."""
    options = {k: v for k, v in options.items() if v is not None}
    temperature = options.get("temperature")
    if temperature is not None and "do_sample" not in options:
        options["do_sample"] = temperature > 0
    if temperature == 0:
        del options["temperature"]
    return options


def chat(model, messages, stream: bool = False, stop: str | Sequence[str] | None = None, details: bool = False,
         long_audio: str = "window", **options):
    """The assistant's reply to `messages` (a list of messages), or to each of a batch (a list of such lists).

    options: generation options (max_new_tokens, temperature, top_p, top_k, do_sample, repetition_penalty, seed;
    defaults from the checkpoint's generation_config.json, greedy unless temperature > 0 or do_sample=True).
    stop: strings that end the reply (not included). stream=True: an iterator of text pieces (of lists of pieces,
    one per conversation, for a batch). details=True: `ChatReply` objects instead of strings.
    """
    batch = _is_batch(messages)
    conversations = list(messages) if batch else [messages]
    processor = model_processor(model)
    inputs, windows = chat_inputs(processor, conversations, long_audio=long_audio)
    config = model.generation_config_for(**generation_options(options))
    check_context(inputs, config.max_new_tokens, model.config.text.max_positions, windows)
    text_stream = TextStream(model.generator.stream(inputs, config), processor.tokenizer, config.eos_token_id, stop)
    if stream:
        return iter(text_stream) if batch else text_pieces(text_stream)
    for _ in text_stream:
        pass
    if details:
        prompt_tokens = inputs["attention_mask"].sum(-1).tolist()
        replies = [ChatReply(row.text, row.finish_reason, p, row.n_tokens, w)
                   for row, p, w in zip(text_stream.rows, prompt_tokens, windows)]
        return replies if batch else replies[0]
    return text_stream.texts if batch else text_stream.texts[0]


def model_processor(model) -> Processor:
    """The model's processor; a model built in Python rather than loaded gets the bundled tokenizer."""
    if getattr(model, "processor", None) is None:
        model.processor = Processor(n_mels=model.config.audio.n_mels)
    return model.processor


def check_context(inputs: ModelInputs, max_new_tokens: int, max_positions: int, windows: list[list[int]]) -> None:
    """Refuse a prompt that, with the reply, would run past the positions the model was trained on (its output
    would silently degrade): say how much of it is audio."""
    prompt = inputs["input_ids"].shape[1]
    if prompt + max_new_tokens > max_positions:
        n_windows = sum(sum(w) for w in windows)
        raise ValueError(
            f"the prompt takes {prompt} tokens ({n_windows} audio window(s) of up to 30 s, about 750 tokens each) "
            f"and the reply up to {max_new_tokens}: over the model's {max_positions} positions; shorten the audio "
            "or the conversation, lower max_new_tokens, or use transcribe() for long recordings")


def _is_batch(messages) -> bool:
    """A batch is a list of conversations: its first item is a list of messages, not a message."""
    return (isinstance(messages, Sequence) and not isinstance(messages, (str, Mapping)) and len(messages) > 0
            and isinstance(messages[0], Sequence) and not isinstance(messages[0], (str, Mapping)))
