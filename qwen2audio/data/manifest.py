"""Streaming JSONL manifests and their weighted mix.

`ManifestReader` reads one line at a time and knows its position (epoch, byte offset, line), so a run can stop and
resume at the same row without reading the file again. `Mixture` interleaves several readers by weight with no
randomness, as ultravox's InterleaveDataset does: the next row always comes from the source furthest behind its
weighted share.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

from .config import SourceConfig
from .rows import RowRef


@dataclass
class ReaderState:
    epoch: int = 0
    offset: int = 0  # byte offset of the next line
    line: int = 0  # lines read so far in this epoch


@dataclass
class RawRow:
    text: bytes
    ref: RowRef


class ManifestReader:
    """Lines of one JSONL file, as (raw bytes, file:line), forever (cycling epochs) or once."""

    def __init__(self, source: SourceConfig, index: int, cycle: bool, state: ReaderState | None = None):
        self.source, self.index, self.cycle = source, index, cycle
        self.path = Path(source.path)
        if not self.path.is_file():
            raise FileNotFoundError(f"manifest {self.path} does not exist")
        self.state = ReaderState(**asdict(state)) if state else ReaderState()
        self._file = None
        self._rows_this_epoch = 0
        self._whole_epoch = self.state.offset == 0  # this epoch was read from its first line

    def __iter__(self) -> Iterator[RawRow]:
        return self

    def __next__(self) -> RawRow:
        while True:
            if self._file is None:
                self._file = open(self.path, "rb")
                self._file.seek(self.state.offset)
                if self.state.offset == 0:
                    self._check_not_array()
            text = self._file.readline()
            if not text:  # end of file
                self._file.close()
                self._file = None
                if not self.cycle:
                    raise StopIteration
                if self._rows_this_epoch == 0 and self._whole_epoch:
                    raise ValueError(f"manifest {self.path} has no rows")
                self.state = ReaderState(epoch=self.state.epoch + 1)
                self._rows_this_epoch, self._whole_epoch = 0, True
                continue
            self.state.offset += len(text)
            self.state.line += 1
            if text.strip():
                self._rows_this_epoch += 1
                return RawRow(text, RowRef(str(self.path), self.state.line, self.index, self.state.epoch))

    def _check_not_array(self) -> None:
        head = self._file.read(64).lstrip()
        self._file.seek(0)
        if head.startswith(b"["):
            raise ValueError(f"{self.path}:1: a JSON array, not JSON Lines (one object per line); convert it with "
                             f"jq -c '.[]' {self.path.name} > {self.path.stem}.jsonl")

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class Mixture:
    """Rows of several readers interleaved by weight, deterministically; state = rows taken per source."""

    def __init__(self, sources: list[SourceConfig], cycle: bool, state: dict | None = None):
        if not sources:
            raise ValueError("no data sources: give data.train (a list of {path, weight})")
        state = state or {}
        reader_states = state.get("readers") or [None] * len(sources)
        self.readers = [ManifestReader(s, i, cycle, ReaderState(**r) if r else None)
                        for i, (s, r) in enumerate(zip(sources, reader_states))]
        self.weights = [s.weight for s in sources]
        self.taken = list(state.get("taken") or [0] * len(sources))
        self.live = [True] * len(sources)

    def state(self) -> dict:
        return {"taken": list(self.taken), "readers": [asdict(r.state) for r in self.readers]}

    def __iter__(self) -> Iterator[RawRow]:
        return self

    def __next__(self) -> RawRow:
        while any(self.live):
            i = min((i for i, live in enumerate(self.live) if live), key=lambda i: (self.taken[i] / self.weights[i], i))
            try:
                row = next(self.readers[i])
            except StopIteration:
                self.live[i] = False
                continue
            self.taken[i] += 1
            return row
        raise StopIteration

    def close(self) -> None:
        for r in self.readers:
            r.close()


def decode_json(raw: RawRow):
    try:
        return json.loads(raw.text)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"invalid JSON ({e})") from None
