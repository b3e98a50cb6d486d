"""Token ids -> text as it is generated: UTF-8 safe pieces, special tokens skipped, stop strings.

    stream = TextStream(model.generator.stream(inputs, config), tokenizer, config.eos_token_id, stop=["\\n\\n"])
    for pieces in stream:               # one piece per row at every step ("" while a row has nothing to show)
        print(pieces[0], end="", flush=True)
    stream.texts, stream.finish_reasons  # the whole text of each row; "stop" (eos or a stop string) or "length"

The pieces of a row join to exactly `tokenizer.decode(new_ids, skip_special_tokens=True)` (cut before the first stop
string). Qwen's BPE is byte-level: a token may end inside a multi-byte character (Chinese, emoji), so each token's
bytes go through an incremental UTF-8 decoder, which holds a partial character back until its last byte arrives.
Text that could be the start of a stop string is held back until the next tokens tell whether it is one.
"""

from __future__ import annotations

import codecs
import functools
from collections.abc import Iterable, Iterator, Sequence

import torch
from tokenizers import decoders

from .tokenizer import Tokenizer, byte_to_unicode

FINISH_STOP = "stop"  # the model ended its turn (eos) or a stop string appeared, as OpenAI reports it
FINISH_LENGTH = "length"  # max_new_tokens reached


@functools.lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    """The byte-level BPE alphabet inverted: token character -> byte."""
    return {c: b for b, c in byte_to_unicode().items()}


class TokenBytes:
    """Token id -> the bytes it stands for in decoded text (b"" for special tokens and ids past the vocabulary)."""

    def __init__(self, tokenizer: Tokenizer):
        if not isinstance(tokenizer.backend.decoder, decoders.ByteLevel):
            raise ValueError(f"streaming needs a byte-level BPE tokenizer (Qwen's); this one decodes with "
                             f"{type(tokenizer.backend.decoder).__name__}")
        self.tokenizer = tokenizer
        added = tokenizer.backend.get_added_tokens_decoder()
        self.added = {i: b"" if t.special else t.content.encode() for i, t in added.items()}
        self.cache: dict[int, bytes] = {}

    def __call__(self, token_id: int) -> bytes:
        if token_id in self.added:
            return self.added[token_id]
        if token_id not in self.cache:
            token = self.tokenizer.id_to_token(token_id)
            table = _byte_decoder()
            self.cache[token_id] = b"" if token is None else bytes(table[c] for c in token)
        return self.cache[token_id]


class IncrementalDecoder:
    """One sequence: `push(token_id)` returns the text that became final, `finish(reason)` the rest."""

    def __init__(self, tokenizer: Tokenizer | TokenBytes, stop: Sequence[str] = ()):
        self.token_bytes = tokenizer if isinstance(tokenizer, TokenBytes) else TokenBytes(tokenizer)
        self.stop = check_stop(stop)
        self.utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.held = ""  # decoded text that may be the start of a stop string
        self.text = ""  # everything emitted
        self.n_tokens = 0
        self.finish_reason: str | None = None

    @property
    def done(self) -> bool:
        return self.finish_reason is not None

    def push(self, token_id: int) -> str:
        if self.done:
            return ""
        self.n_tokens += 1
        return self._release(self.utf8.decode(self.token_bytes(token_id)))

    def finish(self, reason: str = FINISH_LENGTH) -> str:
        """End the sequence: the held-back text and any incomplete character (as U+FFFD, like `decode`)."""
        if self.done:
            return ""
        piece = self._release(self.utf8.decode(b"", final=True), final=True)
        self.finish_reason = self.finish_reason or reason
        return piece

    def _release(self, new: str, final: bool = False) -> str:
        text = self.held + new
        hits = [i for i in (text.find(s) for s in self.stop) if i >= 0]
        if hits:
            out, self.held, self.finish_reason = text[: min(hits)], "", FINISH_STOP
        else:
            keep = 0 if final else _partial_stop_length(text, self.stop)
            out, self.held = text[: len(text) - keep], text[len(text) - keep:]
        self.text += out
        return out


def _partial_stop_length(text: str, stop: Sequence[str]) -> int:
    """Length of the longest end of `text` that is the beginning of a stop string."""
    return max((k for s in stop for k in range(min(len(s) - 1, len(text)), 0, -1) if text.endswith(s[:k])),
               default=0)


def check_stop(stop: str | Sequence[str] | None) -> tuple[str, ...]:
    if stop is None:
        return ()
    stop = (stop,) if isinstance(stop, str) else tuple(stop)
    if not all(isinstance(s, str) and s for s in stop):
        raise ValueError(f"stop strings must be non-empty strings, got {stop!r}")
    return stop


class TextStream:
    """Text pieces of every row from the token steps of `Generator.stream` ([B] ids per step).

    A row ends at an eos id (not shown), at a stop string (not shown) or when the steps run out; the token stream
    is closed as soon as every row has ended, which stops generation.
    """

    def __init__(self, token_steps: Iterable[torch.Tensor], tokenizer: Tokenizer,
                 eos_token_id: Sequence[int] | int = (), stop: str | Sequence[str] | None = None):
        self.token_steps = token_steps
        self.token_bytes = TokenBytes(tokenizer)
        self.eos = {eos_token_id} if isinstance(eos_token_id, int) else set(eos_token_id or ())
        self.stop = check_stop(stop)
        self.rows: list[IncrementalDecoder] = []

    def __iter__(self) -> Iterator[list[str]]:
        steps = iter(self.token_steps)
        try:
            for step in steps:
                ids = step.tolist()
                if not self.rows:
                    self.rows = [IncrementalDecoder(self.token_bytes, self.stop) for _ in ids]
                yield [row.finish(FINISH_STOP) if t in self.eos else row.push(t) for row, t in zip(self.rows, ids)]
                if all(row.done for row in self.rows):
                    return
            yield [row.finish(FINISH_LENGTH) for row in self.rows]
        finally:
            close = getattr(steps, "close", None)
            if close is not None:
                close()

    @property
    def texts(self) -> list[str]:
        return [row.text for row in self.rows]

    @property
    def finish_reasons(self) -> list[str | None]:
        return [row.finish_reason for row in self.rows]


def text_pieces(stream: TextStream) -> Iterator[str]:
    """The non-empty pieces of a one-row stream."""
    for pieces in stream:
        if len(pieces) != 1:
            raise ValueError(f"text_pieces takes a stream of one row, got {len(pieces)}")
        if pieces[0]:
            yield pieces[0]
