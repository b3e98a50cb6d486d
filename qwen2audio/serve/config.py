"""What an operator sets when serving: capacity, limits and the audio sources allowed. Every limit is checked once,
at the edge of the server, and answered with a 4xx in OpenAI's error JSON (see `errors.py`)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path

LOOPBACK = "127.0.0.1"
MB = 1_000_000


@dataclass(frozen=True)
class ServeConfig:
    # capacity
    max_batch: int = 8  # KV cache rows: requests decoded together in each step
    max_queue: int = 64  # requests waiting for a row; one more is answered 429 with Retry-After
    max_model_len: int | None = None  # tokens per row (prompt + reply); None: the model's positions, at most 8192
    request_timeout_s: float = 300.0  # deadline of a request from its arrival (queue wait included)
    # limits of one request
    max_body_bytes: int = 32 * MB
    max_audio_seconds: float = 300.0  # all audios of one chat request together
    max_audios: int = 16  # audio parts of one chat request
    max_tokens: int = 2048  # the largest max_tokens a request may ask for
    max_prompt_tokens: int | None = None  # None: max_model_len - 1
    max_n: int = 8  # choices per chat request
    max_transcription_seconds: float = 3600.0  # one transcription/translation upload
    # who may call, and where audio may come from
    api_key: str | None = None  # when set, every /v1 call and /metrics need `Authorization: Bearer <key>`
    allow_file_dirs: tuple[Path, ...] = ()  # `file:` audio URLs only below these directories
    allow_http_audio: bool = False  # http(s) audio URLs are fetched only when enabled
    http_audio_timeout_s: float = 10.0
    http_audio_max_bytes: int = 25 * MB
    served_model_name: str = "qwen2-audio"
    extra_model_names: tuple[str, ...] = field(default=("default",))  # accepted as `model` besides the served name

    def __post_init__(self):
        for name in ("max_batch", "max_queue", "max_body_bytes", "max_audios", "max_tokens", "max_n"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("request_timeout_s", "max_audio_seconds", "max_transcription_seconds", "http_audio_timeout_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        dirs = tuple(Path(d).expanduser().resolve() for d in self.allow_file_dirs)
        for d in dirs:
            if not d.is_dir():
                raise ValueError(f"--allow-file-dir {d} is not a directory")
        object.__setattr__(self, "allow_file_dirs", dirs)

    @property
    def model_names(self) -> tuple[str, ...]:
        return (self.served_model_name, *self.extra_model_names)


def is_loopback(host: str) -> bool:
    """Whether binding to `host` keeps the server on this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
