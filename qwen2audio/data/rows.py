"""Manifest rows -> typed samples. The ecosystem's row forms are all accepted:

- chat (ms-swift, LLaMA-Factory): `{"messages": [{"role", "content"}...], "audios": [...]}`, each `<audio>` tag in a
  message's text standing for the next audio of `audios`; ShareGPT's `{"conversations": [{"from", "value"}...]}`;
  OpenAI-style content parts (`text`, `audio`, `audio_url`, `input_audio` with base64 data);
- task (pre-training corpora): `{"audio": ..., "task": "asr", "text": ..., "language": ..., ...}`;
- preference (DPO): a chat row plus `rejected_response` (ms-swift: the last assistant turn is the chosen one), or
  `chosen`/`rejected` (strings, messages or lists of messages) after a prompt conversation.

Audio paths that are not absolute resolve against the manifest's folder (or the source's `audio_dir`).
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

AUDIO_TAG = "<audio>"
ROLES = {"user": "user", "human": "user", "assistant": "assistant", "gpt": "assistant", "bot": "assistant",
         "model": "assistant", "system": "system"}
URL_PREFIXES = ("data:", "http://", "https://")


class RowError(ValueError):
    """A row that cannot be used. The message starts with `file:line:`."""

    def __init__(self, where: str, message: str):
        super().__init__(f"{where}: {message}")
        self.where, self.message = where, message

    def __reduce__(self):  # picklable, so that a worker process can hand it back
        return RowError, (self.where, self.message)


@dataclass(frozen=True)
class RowRef:
    """Where a row came from: manifest, line (1-based), the source's index in the mix and the epoch."""

    path: str
    line: int
    source: int = 0
    epoch: int = 0

    def __str__(self) -> str:
        return f"{self.path}:{self.line}"


@dataclass
class Chat:
    """A conversation in the chat template's form: audio parts are `{"type": "audio", "audio": source}`."""

    messages: list[dict[str, Any]]


@dataclass
class TaskRow:
    """A pre-training row: one audio, a task, the answer text and the fields its instructions may use."""

    task: str
    audio: Any
    text: str | None
    fields: dict[str, Any] = field(default_factory=dict)
    prompt: str | None = None  # an explicit instruction; otherwise one is drawn from the task's pool


@dataclass
class Preference:
    """A prompt conversation and two answers to it."""

    prompt: list[dict[str, Any]]
    chosen: str
    rejected: str


Sample = Chat | TaskRow | Preference


def parse_row(row: Any, base_dir: Path) -> Sample:
    """One decoded JSON row -> Chat, TaskRow or Preference; ValueError says what is wrong (the caller adds file:line)."""
    if not isinstance(row, Mapping):
        raise ValueError(f"a row must be a JSON object, got {type(row).__name__}")
    audios = row.get("audios", row.get("audio") if "task" not in row else None)
    audios = [] if audios is None else audios if isinstance(audios, list) else [audios]
    audios = [resolve_audio(a, base_dir) for a in audios]
    conversation = row.get("messages", row.get("conversations"))
    if conversation is None and isinstance(row.get("prompt"), list):
        conversation = row["prompt"]
    if "rejected_response" in row or "rejected" in row:
        return _preference(row, conversation, audios)
    if conversation is not None:
        return Chat(_messages(conversation, audios))
    if "task" in row:
        return _task(row, base_dir)
    raise ValueError("row has no 'messages' (or 'conversations') and no 'task': see the data formats in the README")


def resolve_audio(source: Any, base_dir: Path) -> Any:
    """A path (relative ones against `base_dir`), a data:/http URL, or a {"path"|"bytes"|"url"} dict -> a source
    `load_audio` takes."""
    if isinstance(source, Mapping):
        if source.get("bytes") is not None:
            return bytes(source["bytes"]) if not isinstance(source["bytes"], str) else _b64(source["bytes"])
        if "data" in source and isinstance(source["data"], str):  # OpenAI input_audio
            return _b64(source["data"])
        source = source.get("path", source.get("url", source.get("audio")))
    if not isinstance(source, str) or not source:
        raise ValueError(f"an audio must be a path, a URL or a {{'path'|'bytes'|'data'}} object, got {source!r}")
    if source.startswith(URL_PREFIXES):
        return source
    path = Path(source).expanduser()
    return str(path if path.is_absolute() else base_dir / path)


def _b64(text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except binascii.Error as e:
        raise ValueError(f"audio data is not valid base64 ({e})") from None


def _messages(conversation: Any, audios: list, allow_open_end: bool = True) -> list[dict[str, Any]]:
    """Normalise messages (roles, content parts, <audio> tags -> audio parts) and check every audio is used once."""
    if not isinstance(conversation, list) or not conversation:
        raise ValueError("'messages' must be a non-empty list of {'role', 'content'} objects")
    queue = list(audios)
    out = [_message(m, i, queue) for i, m in enumerate(conversation)]
    if queue:
        n_tags = len(audios) - len(queue)
        raise ValueError(f"the messages hold {n_tags} {AUDIO_TAG} tag(s) but 'audios' lists {len(audios)} audio(s)")
    return out


def _message(message: Any, index: int, audios: list) -> dict[str, Any]:
    if not isinstance(message, Mapping):
        raise ValueError(f"message {index} is not an object: {message!r}")
    role = message.get("role", message.get("from"))
    content = message.get("content", message.get("value"))
    if role not in ROLES:
        raise ValueError(f"message {index} has role {role!r}; use one of {', '.join(sorted(set(ROLES.values())))}")
    role = ROLES[role]
    message_loss = _loss_flag(message, f"message {index}")
    if isinstance(content, str):
        parts = [_out_of_loss(p, not message_loss) for p in _split_tags(content, index, audios)]
    elif isinstance(content, list):
        parts = [_out_of_loss(p, not (message_loss and _loss_flag(part, f"message {index} part")))
                 for part in content for p in _part(part, index, audios)]
    else:
        raise ValueError(f"message {index} content must be a string or a list of parts, got {content!r}")
    if role != "user" and any(p["type"] == "audio" for p in parts):
        raise ValueError(f"message {index} ({role}) holds audio: only user turns may")
    if any("loss" in p for p in parts):  # the parts keep their flags for the encoder
        if role != "assistant":
            raise ValueError(f"message {index} ({role}) sets 'loss': only assistant turns carry loss")
        return {"role": role, "content": parts}
    if all(p["type"] == "text" for p in parts):
        return {"role": role, "content": "".join(p["text"] for p in parts)}
    return {"role": role, "content": parts}


def _out_of_loss(part: dict[str, Any], out: bool) -> dict[str, Any]:
    return dict(part, loss=False) if out else part


def _loss_flag(entry: Any, what: str) -> bool:
    """ms-swift's per-message `"loss": false` (here also per text part of an assistant turn): no loss on that text."""
    flag = entry.get("loss", True) if isinstance(entry, Mapping) else True
    if flag is None:
        return True
    if not isinstance(flag, bool):
        raise ValueError(f"{what} has 'loss': {flag!r}; use true or false")
    return flag


def _split_tags(text: str, index: int, audios: list) -> list[dict[str, Any]]:
    pieces = text.split(AUDIO_TAG)
    parts = [{"type": "text", "text": pieces[0]}] if pieces[0] else []
    for piece in pieces[1:]:
        if not audios:
            raise ValueError(f"message {index} has more {AUDIO_TAG} tags than 'audios' lists")
        parts.append({"type": "audio", "audio": audios.pop(0)})
        if piece:
            parts.append({"type": "text", "text": piece})
    return parts or [{"type": "text", "text": ""}]


def _part(part: Any, index: int, audios: list) -> list[dict[str, Any]]:
    if not isinstance(part, Mapping):
        raise ValueError(f"message {index} has a part that is not an object: {part!r}")
    kind = part.get("type", "text" if "text" in part else "audio")
    if kind == "text":
        return _split_tags(str(part.get("text", "")), index, audios)
    if kind in ("audio", "audio_url", "input_audio"):
        source = part.get(kind, part.get("audio", part.get("path")))
        if kind == "audio_url" and isinstance(source, Mapping):
            source = source.get("url")
        if source is None:
            if not audios:
                raise ValueError(f"message {index} has an audio part with no audio and 'audios' is used up")
            return [{"type": "audio", "audio": audios.pop(0)}]
        return [{"type": "audio", "audio": resolve_audio(source, Path(".")) if isinstance(source, Mapping)
                 else source}]
    raise ValueError(f"message {index} has a part of type {kind!r}; use text, audio, audio_url or input_audio")


def _answer(value: Any, what: str) -> str:
    """A chosen/rejected answer: a string, an assistant message, or a list whose last message is the answer."""
    if isinstance(value, list) and value:
        value = value[-1]
    if isinstance(value, Mapping):
        role = ROLES.get(value.get("role", value.get("from", "assistant")))
        if role != "assistant":
            raise ValueError(f"'{what}' must be an assistant message, got role {role!r}")
        value = value.get("content", value.get("value"))
    if not isinstance(value, str):
        raise ValueError(f"'{what}' must be a string or an assistant message, got {value!r}")
    return value


def _preference(row: Mapping[str, Any], conversation: Any, audios: list) -> Preference:
    if conversation is None and isinstance(row.get("chosen"), list) and len(row["chosen"]) > 1:
        conversation = row["chosen"][:-1]  # TRL's implicit prompt: the conversation up to the answer
    messages = _messages(conversation, audios)
    if "rejected_response" in row:
        if messages[-1]["role"] != "assistant":
            raise ValueError("a row with 'rejected_response' must end with the chosen assistant turn")
        chosen, messages = messages[-1]["content"], messages[:-1]
        rejected = _answer(row["rejected_response"], "rejected_response")
    else:
        if "chosen" not in row:
            raise ValueError("a row with 'rejected' needs 'chosen' too")
        chosen, rejected = _answer(row["chosen"], "chosen"), _answer(row["rejected"], "rejected")
    if not messages or messages[-1]["role"] != "user":
        raise ValueError("the prompt of a preference row must end with a user turn")
    if not isinstance(chosen, str):
        raise ValueError("the chosen answer must be text")
    return Preference(messages, chosen, rejected)


def _task(row: Mapping[str, Any], base_dir: Path) -> TaskRow:
    if "audio" not in row:
        raise ValueError("a task row needs 'audio' (a path)")
    text = row.get("text", row.get("answer"))
    if text is not None and not isinstance(text, str):
        raise ValueError(f"'text' must be a string, got {text!r}")
    fields = {k: v for k, v in row.items() if k not in ("audio", "task", "text", "answer", "prompt")}
    prompt = row.get("prompt")
    if prompt is not None and not isinstance(prompt, str):
        raise ValueError(f"'prompt' must be a string, got {prompt!r}")
    return TaskRow(task=str(row["task"]), audio=resolve_audio(row["audio"], base_dir), text=text, fields=fields,
                   prompt=prompt)
