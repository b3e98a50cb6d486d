"""The request bodies of the OpenAI API this server speaks (pydantic: FastAPI checks types and publishes them in
/openapi.json), and the response objects, with OpenAI's field names. The content of messages is handed on as plain
dicts to `chat.load_messages`, the one message parser."""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Any, Literal, Union, get_args

from pydantic import BaseModel, ConfigDict, Field

TranscriptionFormat = Literal["json", "text", "srt", "vtt", "verbose_json"]  # the Whisper API's response_format
TRANSCRIPTION_FORMATS = get_args(TranscriptionFormat)
SEED_RANGE = (-(2**63), 2**64 - 1)  # what torch.Generator.manual_seed takes
MAX_STOP_STRINGS = 4  # as OpenAI


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class InputAudio(BaseModel):
    data: str = Field(description="base64 of an audio file (anything ffmpeg reads)")
    format: str = Field("wav", description="wav, mp3, flac, ogg, webm, m4a ... (the data is sniffed anyway)")


class InputAudioPart(BaseModel):
    type: Literal["input_audio"]
    input_audio: InputAudio


class AudioUrl(BaseModel):
    url: str = Field(description="data:audio/...;base64,... ; file:///path (allowed directories only); http(s) "
                                 "(when the server allows it)")


class AudioUrlPart(BaseModel):
    type: Literal["audio_url"]
    audio_url: AudioUrl


ContentPart = Annotated[Union[TextPart, InputAudioPart, AudioUrlPart], Field(discriminator="type")]


class Message(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: str | list[ContentPart]
    name: str | None = None


class StreamOptions(BaseModel):
    include_usage: bool = False


StopString = Annotated[str, Field(min_length=1)]


class ChatCompletionRequest(BaseModel):
    """Fields of OpenAI's chat completion request that change the answer, plus vLLM's top_k and
    repetition_penalty. Absent or 0 temperature decodes greedily (as `model.chat`); other OpenAI fields are
    accepted and ignored."""

    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=0, le=1_000_000)
    repetition_penalty: float | None = Field(None, gt=0, le=10)
    n: int = Field(1, ge=1)
    stop: StopString | Annotated[list[StopString], Field(max_length=MAX_STOP_STRINGS)] | None = None
    seed: int | None = Field(None, ge=SEED_RANGE[0], le=SEED_RANGE[1])
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None


# -- responses --------------------------------------------------------------------------------------------------------

def completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex[:24]}"


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def chat_completion(cid: str, model: str, choices: list[dict[str, Any]], prompt_tokens: int) -> dict[str, Any]:
    """choices: [{"text", "finish_reason", "completion_tokens"}] in index order."""
    return {"id": cid, "object": "chat.completion", "created": int(time.time()), "model": model,
            "system_fingerprint": None,
            "choices": [{"index": i, "message": {"role": "assistant", "content": c["text"]}, "logprobs": None,
                         "finish_reason": c["finish_reason"]} for i, c in enumerate(choices)],
            "usage": usage(prompt_tokens, sum(c["completion_tokens"] for c in choices))}


def chat_chunk(cid: str, model: str, created: int, index: int | None, delta: dict[str, Any] | None = None,
               finish_reason: str | None = None, usage_counts: dict[str, int] | None = None) -> dict[str, Any]:
    """One `chat.completion.chunk`; index None: the closing usage chunk (no choices)."""
    choices = [] if index is None else [{"index": index, "delta": delta or {}, "logprobs": None,
                                         "finish_reason": finish_reason}]
    chunk = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
             "system_fingerprint": None, "choices": choices}
    if usage_counts is not None:
        chunk["usage"] = usage_counts
    return chunk


def model_card(name: str, created: int) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": created, "owned_by": "qwen2audio"}
