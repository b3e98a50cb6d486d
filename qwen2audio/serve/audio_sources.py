"""Where a request's audio may come from, and how much of it: the server's policy in front of `chat.load_messages`.

A local library call may read any path; a server must not. Here every audio part of a request is resolved under
the operator's rules and decoded once (`audio.load_audio`: anything soundfile or ffmpeg reads), and the part is
replaced by the 16 kHz waveform, so that the chat parser downstream never sees a path or a URL:

- `input_audio` {data: base64, format}: always allowed;
- `audio_url` / `audio` with a `data:` URL: always allowed;
- `file:` URLs: only for files inside the `--allow-file-dir` directories (symlinks resolved first);
- `http(s):` URLs: only with `--allow-http-audio`, fetched with a timeout and a size cap;
- anything else (a bare path, another scheme): refused.
Limits: the number of audio parts (counted before anything is decoded) and their total duration.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import numpy as np

from ..audio import SAMPLE_RATE, AudioError, load_audio
from ..chat import AUDIO_PART_TYPES
from .config import ServeConfig
from .errors import ApiError, bad_request


def resolve_audio(messages: Sequence[Mapping[str, Any]], config: ServeConfig) -> tuple[list[dict], float]:
    """Messages with every audio part replaced by {"type": "audio", "audio": <16 kHz waveform>} -> (messages,
    seconds of audio in all). ApiError (4xx) for a source the policy refuses or a limit passed."""
    parts = [(i, j) for i, m in enumerate(messages) if isinstance(m.get("content"), list)
             for j, p in enumerate(m["content"]) if isinstance(p, Mapping) and p.get("type") in AUDIO_PART_TYPES]
    if len(parts) > config.max_audios:
        raise bad_request(f"the request holds {len(parts)} audios; this server takes at most {config.max_audios} "
                          "per request (--max-audios)", "too_many_audios", "messages")
    out = [dict(m, content=list(m["content"])) if isinstance(m.get("content"), list) else dict(m) for m in messages]
    total = 0.0
    for i, j in parts:
        where = f"messages[{i}].content[{j}]"
        wave = _load(out[i]["content"][j], where, config)
        total += len(wave) / SAMPLE_RATE
        if total > config.max_audio_seconds:
            raise bad_request(f"{where}: the request's audio adds up to {total:.1f} s so far, over this server's "
                              f"limit of {config.max_audio_seconds:g} s per request (--max-audio-seconds); for long "
                              "recordings use /v1/audio/transcriptions", "audio_too_long", where)
        out[i]["content"][j] = {"type": "audio", "audio": wave, "sampling_rate": SAMPLE_RATE}
    return out, total


def _load(part: Mapping[str, Any], where: str, config: ServeConfig) -> np.ndarray:
    kind = part["type"]
    try:
        if kind == "input_audio":
            body = part.get("input_audio")
            if not isinstance(body, Mapping) or not isinstance(body.get("data"), str):
                raise bad_request(f"{where}: input_audio needs {{'data': <base64 string>, 'format': 'wav'}}",
                                  "invalid_audio", where)
            return load_audio(decode_base64(body["data"], where))
        url = part.get("audio_url") if kind == "audio_url" else part.get("audio")
        url = url.get("url") if isinstance(url, Mapping) else url
        if not isinstance(url, str):
            raise bad_request(f"{where}: {kind} needs {{'url': 'data:audio/wav;base64,...'}}", "invalid_audio", where)
        return load_audio(fetch(url, where, config))
    except AudioError as e:
        raise bad_request(f"{where}: {e}", "invalid_audio", where) from None


def decode_base64(data: str, where: str) -> bytes:
    try:
        raw = base64.b64decode("".join(data.split()), validate=True)
    except (binascii.Error, ValueError) as e:
        raise bad_request(f"{where}: input_audio data is not valid base64 ({e})", "invalid_audio", where) from None
    if not raw:
        raise bad_request(f"{where}: input_audio data is empty: send the base64 of an audio file", "invalid_audio",
                          where)
    return raw


def fetch(url: str, where: str, config: ServeConfig) -> bytes | str:
    """The audio behind a URL, under the policy: a data: URL as it is, a file's or an http(s) resource's bytes."""
    scheme = urlparse(url).scheme.lower()
    if scheme == "data":
        return url
    if scheme == "file":
        return read_allowed_file(url, where, config)
    if scheme in ("http", "https"):
        return download(url, where, config)
    raise bad_request(f"{where}: audio URLs must be data:, file: or http(s): URLs, got "
                      f"{url[:40]!r}{'...' if len(url) > 40 else ''}; send the audio itself as input_audio (base64)",
                      "invalid_audio_url", where)


def read_allowed_file(url: str, where: str, config: ServeConfig) -> bytes:
    if not config.allow_file_dirs:
        raise ApiError(403, f"{where}: file: audio URLs are disabled on this server (start it with "
                            "--allow-file-dir DIR to allow files below DIR)", "file_urls_disabled", where)
    parsed = urlparse(url)
    if parsed.netloc not in ("", "localhost"):
        raise ApiError(403, f"{where}: file: URLs must name a local path (file:///path), not host {parsed.netloc!r}",
                       "file_not_allowed", where)
    path = Path(unquote(parsed.path))
    try:
        resolved = path.resolve(strict=False)
    except (OSError, RuntimeError):  # a symlink loop
        resolved = None
    if not path.is_absolute() or resolved is None or not any(resolved.is_relative_to(d)
                                                             for d in config.allow_file_dirs):
        raise ApiError(403, f"{where}: {path} is outside the directories this server reads audio from "
                            f"(--allow-file-dir)", "file_not_allowed", where)
    if not resolved.is_file():
        raise bad_request(f"{where}: no audio file at {path}", "file_not_found", where)
    if resolved.stat().st_size > config.max_body_bytes:
        raise bad_request(f"{where}: {path} is larger than {config.max_body_bytes} bytes", "audio_too_large", where)
    return resolved.read_bytes()


def download(url: str, where: str, config: ServeConfig) -> bytes:
    import time

    import httpx

    if not config.allow_http_audio:
        raise ApiError(403, f"{where}: http(s) audio URLs are disabled on this server (start it with "
                            "--allow-http-audio); send the audio as input_audio (base64) instead",
                       "http_urls_disabled", where)
    cap, give_up = config.http_audio_max_bytes, time.monotonic() + config.http_audio_timeout_s
    try:
        with httpx.stream("GET", url, timeout=config.http_audio_timeout_s, follow_redirects=True) as response:
            if response.status_code != 200:
                raise bad_request(f"{where}: fetching {url} gave HTTP {response.status_code}", "audio_fetch_failed",
                                  where)
            if int(response.headers.get("content-length") or 0) > cap:
                raise _too_large(url, where, cap)
            data = bytearray()
            for chunk in response.iter_bytes():
                data += chunk
                if len(data) > cap:
                    raise _too_large(url, where, cap)
                if time.monotonic() > give_up:  # httpx's timeout is per read: a slow drip must end too
                    raise httpx.ReadTimeout("total time")
            return bytes(data)
    except httpx.TimeoutException:
        raise bad_request(f"{where}: fetching {url} took over {config.http_audio_timeout_s:g} s "
                          "(--http-audio-timeout)", "audio_fetch_timeout", where) from None
    except httpx.HTTPError as e:
        raise bad_request(f"{where}: could not fetch {url}: {e}", "audio_fetch_failed", where) from None


def _too_large(url: str, where: str, cap: int) -> ApiError:
    return bad_request(f"{where}: {url} is larger than this server's cap of {cap} bytes (--http-audio-max-mb)",
                       "audio_too_large", where)
