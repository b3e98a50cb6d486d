"""An on-disk cache of a frozen audio encoder's output frames: one entry per clip, reused every epoch and stage.

    cache = FeatureCache.open(root, fingerprint, dim=384, dtype=torch.bfloat16, meta={...})
    entry = cache.lookup(cache.key_of(source))       # None: not computed yet
    with cache.writer() as w:
        w.add(key, frames, samples)                  # frames [audio_token_count(mel frames), dim]
    frames = cache.read(entry)

An entry holds the encoder's valid output frames of one clip (after the 2x pooling and the final LayerNorm: what
the projector takes). Under Qwen2-Audio's padding mask they depend on that clip's valid mel frames only,
never on what it was batched with, so caching them is exact. Keys: the audio's content (`content_key`: a hash of
the file's bytes, of inline bytes, or of the samples of an array); the folder: a fingerprint of the encoder weights,
the feature extractor settings and the stored dtype, so new weights or settings start an empty folder.

Layout, root/<fingerprint[:16]>/:
    meta.json            what the fingerprint covers (for people; the folder name is the check)
    shard-<id>.bin       the frames of many clips back to back, raw, in the cache's dtype
    shard-<id>.json      its index {key: [byte offset, frames, samples]}, written after the .bin is complete

Both files of a shard are written once (temporary file, fsync, rename) and never changed, so readers in any number of
processes see whole shards or none; a killed writer loses only its unfinished shard. An index whose .bin is missing or
shorter than the index says is ignored (its clips are computed again).
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
import warnings
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from ..audio import AudioError
from ..files import atomic_write, atomic_write_json
from ..processor import audios_in_conversation
from .config import SourceConfig
from .manifest import Mixture, decode_json
from .rows import Chat, Preference, RowError, RowRef, TaskRow, parse_row

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
SHARD_BYTES = 256 * 2**20  # a shard is written once it holds this much (a kill loses at most one shard's work)
KEY_BYTES = 16  # blake2b digest size: 128 bits, no collision among billions of clips
FOLDER_CHARS = 16  # hex characters of the fingerprint that name its folder


class Entry(NamedTuple):
    shard: str  # shard file name (without .bin)
    offset: int  # byte offset in the .bin
    frames: int  # rows: audio_token_count(valid mel frames)
    samples: int  # the clip's length at 16 kHz before any cut to 30 s (the long-audio policy needs it)


def content_key(source: Any) -> str:
    """The hash that names a clip: of a file's bytes, of inline bytes or a data URL, or of an array's samples."""
    h = hashlib.blake2b(digest_size=KEY_BYTES)
    if isinstance(source, (bytes, bytearray, memoryview)):
        h.update(b"bytes:")
        h.update(source)
    elif isinstance(source, (np.ndarray, torch.Tensor)):
        samples = source.detach().cpu().float().numpy() if isinstance(source, torch.Tensor) else source
        h.update(f"array:{samples.shape}:".encode())
        h.update(np.ascontiguousarray(samples, dtype=np.float32).tobytes())
    elif isinstance(source, str) and source.startswith(("data:", "http://", "https://")):
        h.update(b"inline:")
        h.update(source.encode())
    elif isinstance(source, (str, os.PathLike)):
        h.update(b"bytes:")  # a file and the same bytes inline are the same clip
        try:
            with open(source, "rb") as f:
                while chunk := f.read(1 << 20):
                    h.update(chunk)
        except OSError as e:
            raise AudioError(f"audio file '{source}' cannot be read ({e.strerror or e}): check the path") from None
    else:
        raise AudioError(f"cannot key an audio given as a {type(source).__name__}")
    return h.hexdigest()


def folder_name(fingerprint: str) -> str:
    return fingerprint[:FOLDER_CHARS]


class FeatureCache:
    """Read access to one fingerprint's folder (an index in memory, files opened lazily in each process), and
    `writer()` to add entries. Picklable: DataLoader workers get the index, not the open files."""

    def __init__(self, directory: Path, dim: int, dtype: torch.dtype):
        self.directory, self.dim, self.dtype = Path(directory), dim, dtype
        self.index: dict[str, Entry] = {}
        self.damaged: list[str] = []  # shards whose data is shorter than their index (see reload)
        self.known_keys: dict[str, str] = {}  # audio path -> key, filled by the pass that checked the files
        self._fds: dict[str, int] = {}
        self._pid = os.getpid()
        self.reload()

    @classmethod
    def open(cls, root: str | Path, fingerprint: str, dim: int, dtype: torch.dtype, meta: dict,
             create: bool = True) -> "FeatureCache":
        directory = Path(root) / folder_name(fingerprint)
        if create and not (directory / "meta.json").exists():
            directory.mkdir(parents=True, exist_ok=True)
            atomic_write_json(directory / "meta.json", {"fingerprint": fingerprint, "dim": dim,
                                                        "dtype": str(dtype).removeprefix("torch."), **meta})
        return cls(directory, dim, dtype)

    @property
    def row_bytes(self) -> int:
        return self.dim * torch.tensor([], dtype=self.dtype).element_size()

    def reload(self) -> None:
        """Read every complete shard's index (a new pass may have added shards)."""
        index: dict[str, Entry] = {}
        self.damaged = []
        for path in sorted(self.directory.glob("shard-*.json")):
            name = path.stem
            try:
                table = json.loads(path.read_text())
                size = (self.directory / f"{name}.bin").stat().st_size
            except (OSError, ValueError):
                warnings.warn(f"encoder cache: ignoring shard {name} (unreadable index or missing data)", stacklevel=2)
                self.damaged.append(name)
                continue
            end = max((o + n * self.row_bytes for o, n, _ in table.values()), default=0)
            if end > size:
                warnings.warn(f"encoder cache: ignoring shard {name} ({size} bytes, its index needs {end})",
                              stacklevel=2)
                self.damaged.append(name)
                continue
            index.update({k: Entry(name, o, n, s) for k, (o, n, s) in table.items()})
        self.index = index

    def remove_damaged(self) -> None:
        """Delete the shards `reload` ignored (after their clips were computed again)."""
        for name in self.damaged:
            for suffix in (".json", ".bin"):
                (self.directory / f"{name}{suffix}").unlink(missing_ok=True)
        self.damaged = []

    def __len__(self) -> int:
        return len(self.index)

    def key_of(self, source: Any) -> str:
        if isinstance(source, str) and source in self.known_keys:
            return self.known_keys[source]
        return content_key(source)

    def lookup(self, key: str) -> Entry | None:
        return self.index.get(key)

    def read(self, entry: Entry) -> torch.Tensor:
        """The frames [entry.frames, dim] of an entry, in the cache's dtype."""
        n = entry.frames * self.row_bytes
        data = os.pread(self._fd(entry.shard), n, entry.offset)  # pread: no shared file position between workers
        if len(data) != n:
            raise OSError(f"encoder cache shard {entry.shard} is shorter than its index says")
        return torch.frombuffer(bytearray(data), dtype=self.dtype).reshape(entry.frames, self.dim)

    def _fd(self, shard: str) -> int:
        if self._pid != os.getpid():  # a forked worker: descriptors are per process
            self._fds, self._pid = {}, os.getpid()
        if shard not in self._fds:
            self._fds[shard] = os.open(self.directory / f"{shard}.bin", os.O_RDONLY)
        return self._fds[shard]

    def writer(self) -> "ShardWriter":
        return ShardWriter(self)

    def __getstate__(self):
        return {**self.__dict__, "_fds": {}}

    def __del__(self):
        if getattr(self, "_pid", None) == os.getpid():
            for fd in getattr(self, "_fds", {}).values():
                os.close(fd)


class ShardWriter:
    """Adds entries, in new shards of about SHARD_BYTES; each shard is published (and indexed) when full and at the
    end. Use as a context manager: a shard is written only if the block ends normally or is interrupted by an
    exception after some work (what was computed is kept)."""

    def __init__(self, cache: FeatureCache):
        self.cache = cache
        self._chunks: list[bytes] = []
        self._table: dict[str, list[int]] = {}
        self._size = 0
        self.written = 0

    def add(self, key: str, frames: torch.Tensor, samples: int) -> None:
        if frames.ndim != 2 or frames.shape[1] != self.cache.dim:
            raise ValueError(f"encoder cache entries are [frames, {self.cache.dim}], got {tuple(frames.shape)}")
        data = frames.detach().to("cpu", self.cache.dtype).contiguous().view(torch.uint8).numpy().tobytes()
        self._table[key] = [self._size, int(frames.shape[0]), int(samples)]
        self._chunks.append(data)
        self._size += len(data)
        if self._size >= SHARD_BYTES:
            self.flush()

    def flush(self) -> None:
        if not self._table:
            return
        name = f"shard-{uuid.uuid4().hex}"
        directory = self.cache.directory
        atomic_write(directory / f"{name}.bin", b"".join(self._chunks))
        atomic_write(directory / f"{name}.json", json.dumps(self._table).encode())
        self.cache.index.update({k: Entry(name, o, n, s) for k, (o, n, s) in self._table.items()})
        self.written += len(self._table)
        self._chunks, self._table, self._size = [], {}, 0

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, kind, value, tb) -> None:
        if kind is None or issubclass(kind, Exception):
            self.flush()


# -- which clips a corpus holds -----------------------------------------------------------------------------------
def sample_audios(sample) -> list[Any]:
    """The audio sources of a parsed row, in order."""
    if isinstance(sample, TaskRow):
        return [sample.audio]
    if isinstance(sample, Preference):
        return audios_in_conversation(sample.prompt)
    if isinstance(sample, Chat):
        return audios_in_conversation(sample.messages)
    raise TypeError(f"not a parsed row: {type(sample).__name__}")


def corpus_audios(sources: list[SourceConfig], on_bad_row: str = "raise") -> dict[Any, RowRef]:
    """Every distinct audio source of the manifests (one pass, no audio read), with the first row that uses it.
    A malformed row raises RowError (`on_bad_row: raise`) or is passed over (the planner counts it later)."""
    found: dict[Any, RowRef] = {}
    if not sources:
        return found
    mixture = Mixture(sources, cycle=False)
    try:
        for raw in mixture:
            s = sources[raw.ref.source]
            base = Path(s.audio_dir) if s.audio_dir else Path(s.path).parent
            try:
                audios = sample_audios(parse_row(decode_json(raw), base))
            except ValueError as e:
                if on_bad_row == "raise":
                    raise RowError(str(raw.ref), str(e)) from None
                continue
            for a in audios:
                found.setdefault(a, raw.ref)
    finally:
        mixture.close()
    return found
