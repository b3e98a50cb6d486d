"""Samples -> token ids and the mask of supervised tokens, before the audio is decoded.

Each `<|AUDIO|>` stays a single token here; the worker that decodes the audio expands it to
`audio_token_count(frames)` copies (`expand_audio`). Prompts and answers are tokenized as the pieces inference sees:
the prompt up to the generation prompt (`<|im_start|>assistant\\n`), then the answer, so the trained answer tokens are
exactly the ones the model will generate. Supervised: each assistant answer up to and including the `<|im_end|>`
that closes it (not the newline after it); in the base format, the answer and its end-of-text token.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

from ..processor import audios_in_conversation
from ..tokenizer import AUDIO_PLACEHOLDER, Tokenizer
from .prompts import draw_instruction, sample_rng, task_answer
from .rows import Chat, Preference, RowRef, Sample, TaskRow


@dataclass
class Encoded:
    """One sequence: ids with one <|AUDIO|> per audio, which of them carry loss, and the audios in order."""

    ids: list[int]
    supervised: list[bool]
    audios: list[Any]
    ref: RowRef | None = None

    def __len__(self) -> int:
        return len(self.ids)


@dataclass
class EncodedPair:
    """A preference pair: two sequences sharing their prompt (and so their audios)."""

    chosen: Encoded
    rejected: Encoded
    prompt_length: int  # tokens of the shared prompt
    ref: RowRef | None = None

    @property
    def audios(self) -> list[Any]:
        return self.chosen.audios

    def __len__(self) -> int:
        return max(len(self.chosen), len(self.rejected))


@dataclass
class Encoder:
    tokenizer: Tokenizer
    prompt_format: str = "chat"  # task rows: "base" (audio + instruction, no template) or "chat"
    train_on: str = "all"  # chat rows: "all" assistant turns or the "last" one
    answer_suffix: str = "<|endoftext|>"
    seed: int = 0
    preference: bool = False  # DPO: rows must be preference rows
    _eos: int = field(init=False, repr=False)

    def __post_init__(self):
        self._eos = self.tokenizer.eos_id

    def __call__(self, sample: Sample, ref: RowRef) -> Encoded | EncodedPair:
        if self.preference:
            if not isinstance(sample, Preference):
                raise ValueError("a DPO row needs a rejected answer: 'rejected_response', or 'chosen' and 'rejected'")
            return self.pair(sample, ref)
        if isinstance(sample, Preference):  # SFT on preference data: train on the chosen answer
            sample = Chat(sample.prompt + [{"role": "assistant", "content": sample.chosen}])
        if isinstance(sample, TaskRow):
            return self.task(sample, ref)
        ids, supervised = self.chat(sample.messages, "all" if self.train_on == "all" else "last")
        return Encoded(ids, supervised, audios_in_conversation(sample.messages), ref)

    # -- the forms ----------------------------------------------------------------------------------------------
    def task(self, row: TaskRow, ref: RowRef) -> Encoded:
        instruction = row.prompt if row.prompt is not None else \
            draw_instruction(row.task, row.fields, sample_rng(self.seed, ref.source, ref.epoch, ref.line))
        answer = task_answer(row.task, row.text, row.fields)
        if self.prompt_format == "base":
            prompt = self.tokenizer.encode(AUDIO_PLACEHOLDER + instruction)
            reply = self.tokenizer.encode(answer + self.answer_suffix)
            return Encoded(prompt + reply, [False] * len(prompt) + [True] * len(reply), [row.audio], ref)
        messages = [{"role": "user", "content": [{"type": "audio", "audio": row.audio},
                                                 {"type": "text", "text": instruction}]},
                    {"role": "assistant", "content": answer}]
        ids, supervised = self.chat(messages, "all")
        return Encoded(ids, supervised, [row.audio], ref)

    def pair(self, sample: Preference, ref: RowRef) -> EncodedPair:
        audios = audios_in_conversation(sample.prompt)
        chosen = self.chat(sample.prompt + [{"role": "assistant", "content": sample.chosen}], "last")
        rejected = self.chat(sample.prompt + [{"role": "assistant", "content": sample.rejected}], "last")
        prompt_length = chosen[1].index(True) if True in chosen[1] else len(chosen[0])
        if chosen[0][:prompt_length] != rejected[0][:prompt_length]:
            raise ValueError("chosen and rejected tokenize to different prompts")  # cannot happen with a sane template
        return EncodedPair(Encoded(*chosen, audios, ref), Encoded(*rejected, audios, ref), prompt_length, ref)

    def chat(self, messages: Sequence[dict], supervise: str) -> tuple[list[int], list[bool]]:
        """ChatML ids of `messages` and the supervised mask: the assistant turns ("all" or the "last"), each from the
        first token after its generation prompt to its closing eos, less the tokens inside text parts marked
        `"loss": false` (data.rows)."""
        render = self.tokenizer.apply_chat_template
        text = render(messages)
        targets = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
        if supervise == "last":
            targets = targets[-1:]
        if not targets:
            raise ValueError("the conversation has no assistant turn to train on")
        pieces: list[tuple[str, bool, list[tuple[int, int]]]] = []  # (text, is an answer, its no-loss spans)
        done = 0
        for i in targets:
            if i == 0:
                raise ValueError("the conversation starts with an assistant turn: it needs a user turn first")
            start, end = render(messages[:i], add_generation_prompt=True), render(messages[: i + 1])
            if not (text.startswith(start) and text.startswith(end) and len(start) <= len(end)):
                raise ValueError("the chat template does not render conversations as a prefix of their extensions; "
                                 "the answer spans cannot be found")
            answer = text[len(start):len(end)]
            pieces += [(text[done:len(start)], False, []), (answer, True, no_loss_spans(messages[i], answer))]
            done = len(end)
        pieces.append((text[done:], False, []))
        ids: list[int] = []
        supervised: list[bool] = []
        for piece, is_answer, no_loss in pieces:
            piece_ids, offsets = self.tokenizer.encode_with_offsets(piece) if piece else ([], [])
            ids += piece_ids
            n = piece_ids.index(self._eos) + 1 if is_answer and self._eos in piece_ids else len(piece_ids)
            # the answer and its <|im_end|>, not the newline after it; a token inside a no-loss span carries none
            supervised += [is_answer and k < n and not any(a <= lo and hi <= b for a, b in no_loss)
                           for k, (lo, hi) in enumerate(offsets)]
        return ids, supervised


def no_loss_spans(message: dict, rendered: str) -> list[tuple[int, int]]:
    """Character spans, in the rendered answer, of the message's text parts marked `"loss": false`; a turn with no
    part left in the loss is out of it with its end token (ms-swift's per-message flag)."""
    content = message["content"]
    if isinstance(content, str) or all(p.get("loss", True) for p in content):
        return []
    if not any(p.get("loss", True) for p in content):
        return [(0, len(rendered))]
    text = "".join(p["text"] for p in content)
    if not rendered.startswith(text):
        raise ValueError("the chat template changes an assistant turn's text, so its 'loss': false parts cannot be "
                         "found in it; use the default template or drop the per-part loss flags")
    spans, at = [], 0
    for part in content:
        if not part.get("loss", True):
            spans.append((at, at + len(part["text"])))
        at += len(part["text"])
    return spans


# -- audio expansion and truncation (run where the audio is decoded) ----------------------------------------------
def expand_audio(ids: list[int], supervised: list[bool], counts: Sequence[int], audio_id: int):
    """Replace the i-th <|AUDIO|> by counts[i] copies; returns ids, supervised."""
    out_ids: list[int] = []
    out_sup: list[bool] = []
    it = iter(counts)
    for token, sup in zip(ids, supervised):
        n = next(it) if token == audio_id else 1
        out_ids += [token] * n
        out_sup += [sup] * n
    if next(it, None) is not None:
        raise ValueError("more audios than <|AUDIO|> tokens")
    return out_ids, out_sup


def safe_cut(ids: list[int], limit: int, bos: int, audio: int, eos: int) -> int:
    """The longest prefix length <= limit that does not end inside an audio span (<|audio_bos|>, the <|AUDIO|>
    frames, <|audio_eos|>): a cut that would fall inside one moves back to where the span starts."""
    if len(ids) <= limit:
        return len(ids)
    cut = limit
    while cut > 0 and ids[cut] == audio and ids[cut - 1] == audio:  # inside a bare run of frames
        cut -= 1
    opened = max((i for i in range(cut) if ids[i] == bos), default=-1)
    if opened >= 0 and eos not in ids[opened:cut]:  # a span opened before the cut and not closed
        cut = opened
    return cut
