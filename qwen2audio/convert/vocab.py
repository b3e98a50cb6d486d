"""Vocabulary trimming: a checkpoint whose tokenizer and embeddings keep only the tokens a corpus needs.

Qwen2's 151,936-row embedding is most of a tiny model's weights and training time. `trim_vocabulary` keeps
- the 256 byte-level tokens, so that any text still tokenizes (at worst byte by byte);
- every special (added) token;
- every token the full tokenizer produces on the corpus: the rows of pre-training, SFT and DPO JSONL files, encoded
  by the training pipeline itself (`data.encode.Encoder`) with every instruction of the task's pool
  (`data.prompts.INSTRUCTIONS`) the row can fill, plus the chat template's own text and the inference prompts;
- closed under the BPE merges: the two parts of each kept token, recursively.

Why the closure makes the trimmed tokenizer exact: BPE merges, at each step, the adjacent pair of lowest rank among
the merges it knows. Every merge the full tokenizer applies to a corpus text produces an ancestor of one of the
text's final tokens, so it is kept; the trimmed merges (those whose parts and result are all kept, in their original
order) are a subset of the full ones. So at each step the full run's choice is also the lowest-ranked applicable
trimmed merge, and both runs are the same: corpus texts tokenize into the same token strings. Other text falls back
to shorter tokens, down to bytes.

Ids are renumbered densely in their old order (ordinary tokens, then the special ones); the embedding (and an untied
head) keeps the matching rows, padded with zero rows to a multiple of PAD_MULTIPLE; config.json (vocab_size,
audio_token_index, any *_token_id), generation_config.json (eos/pad/bos) and the tokenizer files follow.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import tokenizers
import torch

from ..api import Qwen2AudioForConditionalGeneration, load
from ..checkpoint import CheckpointError
from ..data.encode import Encoder
from ..data.prompts import INSTRUCTIONS, canonical_task, placeholders, prompt_fields
from ..data.rows import Chat, Preference, TaskRow, parse_row
from ..processor import Processor
from ..tokenizer import (BASE_TASK_PROMPTS, CHAT_TASK_PROMPTS, DEFAULT_SYSTEM_PROMPT, LANGUAGE_NAMES, Tokenizer,
                         base_prompt, byte_to_unicode, chat_task_prompt, render_default_chat)
from .build import check_out_dir
from .lm import padded_rows
from .source import Log

PAD_MULTIPLE = 64  # embedding rows are padded to a multiple of 64: tensor-core and SIMD friendly, < 64 rows wasted
# config/generation keys that hold token ids (an int or a list of ints): renumbered with the vocabulary
TOKEN_ID_KEYS = ("bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id", "audio_token_index",
                 "audio_token_id", "sep_token_id", "unk_token_id")
TEMPLATE_AUDIOS = 9  # "Audio 1:" .. "Audio 9:" (digits are byte-level tokens: more audios need nothing new)


# -- what the corpus uses ---------------------------------------------------------------------------------------------

class RecordingTokenizer:
    """Stands in for the Tokenizer inside the training pipeline's Encoder: the same ids (each distinct text encoded
    once), and every id it handed out collected in `used`."""

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer
        self.used: set[int] = set()
        self._seen: dict[str, tuple[list[int], list[tuple[int, int]]]] = {}

    def encode(self, text: str) -> list[int]:
        return self.encode_with_offsets(text)[0]

    def encode_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        found = self._seen.get(text)
        if found is None:
            found = self._seen[text] = self.tokenizer.encode_with_offsets(text)
            self.used.update(found[0])
        return found

    @property
    def texts(self) -> list[str]:
        """Every distinct text encoded so far, in the order first seen."""
        return list(self._seen)

    def __getattr__(self, name: str):
        return getattr(self.tokenizer, name)


def read_jsonl(path: Path) -> Iterator[tuple[int, Any]]:
    """(line number, decoded row) of a JSONL file; blank lines skipped; a bad line is a ValueError naming file:line."""
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield number, json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{number}: not a JSON row ({e})") from None


def instruction_choices(row: TaskRow) -> list[str]:
    """Every instruction a task row may be given in training: its own prompt, or each paraphrase of its task's pool
    whose placeholders the row fills (the draw of `prompts.draw_instruction` picks one of these)."""
    if row.prompt is not None:
        return [row.prompt]
    values = prompt_fields(canonical_task(row.task), row.fields)
    return [t.format(**values) for t in INSTRUCTIONS[canonical_task(row.task)] if placeholders(t) <= values.keys()]


def encode_sample(recorder: RecordingTokenizer, sample) -> None:
    """Encode `sample` as every training form would (chat and base prompts, SFT and DPO), and the whole conversation
    as inference renders it."""
    chat, base = Encoder(recorder), Encoder(recorder, prompt_format="base")
    if isinstance(sample, TaskRow):
        for instruction in instruction_choices(sample):
            row = dataclasses.replace(sample, prompt=instruction)
            chat.task(row, None)
            base.task(row, None)
        return
    if isinstance(sample, Preference):
        Encoder(recorder, preference=True).pair(sample, None)
        conversations = [sample.prompt + [{"role": "assistant", "content": answer}]
                         for answer in (sample.chosen, sample.rejected)]
    else:
        conversations = [sample.messages]
        if any(m["role"] == "assistant" for m in sample.messages[1:]):
            chat(Chat(sample.messages), None)
    for messages in conversations:  # as one string: how chat/generation tokenizes a prompt
        recorder.encode(recorder.apply_chat_template(messages))
        if messages[-1]["role"] != "assistant":
            recorder.encode(recorder.apply_chat_template(messages, add_generation_prompt=True))


def fixed_texts() -> list[str]:
    """Texts every trimmed checkpoint needs whatever its corpus: the chat template's literal text (default system
    prompt, role names, "Audio N:", newlines), the instruction pools' paraphrases that need no row fields, and the
    prompts of `chat`/`transcribe`/eval (tokenizer.BASE_TASK_PROMPTS, CHAT_TASK_PROMPTS) in every named language."""
    audio = [{"type": "audio", "audio": "a.wav"}]
    conversation = [{"role": "user", "content": audio * TEMPLATE_AUDIOS + [{"type": "text", "text": "?"}]},
                    {"role": "assistant", "content": "."}]
    texts = [render_default_chat(conversation), render_default_chat(conversation[:1], add_generation_prompt=True),
             render_default_chat([{"role": "system", "content": DEFAULT_SYSTEM_PROMPT}] + conversation)]
    texts += [t for pool in INSTRUCTIONS.values() for t in pool if not placeholders(t)]
    languages = [None, *LANGUAGE_NAMES]
    for task in BASE_TASK_PROMPTS:
        texts += [base_prompt(task, language, target) for language in languages for target in LANGUAGE_NAMES]
    for task in CHAT_TASK_PROMPTS:
        texts += [chat_task_prompt(task, language, target) for language in languages for target in LANGUAGE_NAMES]
    return list(dict.fromkeys(texts))


def corpus_token_ids(tokenizer: Tokenizer, corpus: Iterable[str | Path], log: Log = lambda line: None) -> set[int]:
    """Ids the full tokenizer produces on the corpus files and on `fixed_texts()`."""
    recorder = RecordingTokenizer(tokenizer)
    for path in map(Path, corpus):
        if not path.is_file():
            raise FileNotFoundError(f"corpus file {path} does not exist")
        rows = 0
        for number, raw in read_jsonl(path):
            try:
                encode_sample(recorder, parse_row(raw, path.parent))
            except ValueError as e:
                raise ValueError(f"{path}:{number}: {e}") from None
            rows += 1
        log(f"corpus     {path}: {rows} rows")
    for text in fixed_texts():
        recorder.encode(text)
    return recorder.used


# -- the trimmed tokenizer --------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Trim:
    """The kept tokens, old ids in new-id order: `old_ids[new] = old`."""

    old_ids: list[int]
    n_ordinary: int  # new ids [0, n_ordinary) are BPE tokens, the rest special (added) tokens
    n_merges: int
    counts: dict[str, int]  # bytes, special, corpus, closure: how many tokens each reason added


def _merge_pairs(model: dict[str, Any]) -> list[tuple[str, str]]:
    """tokenizer.json's merges as pairs (tokenizers writes "a b" strings or [a, b] lists, by version)."""
    return [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in model["merges"]]


def plan_trim(tokenizer: Tokenizer, used_ids: Iterable[int]) -> tuple[Trim, dict[str, Any]]:
    """Which tokens to keep (bytes, specials, `used_ids`, closed under merges) and the trimmed tokenizer.json."""
    data = json.loads(tokenizer.backend.to_str())
    model = data["model"]
    if model.get("type") != "BPE":
        raise CheckpointError(f"the tokenizer's model is {model.get('type')}, not BPE: only a BPE can be trimmed")
    vocab: dict[str, int] = model["vocab"]
    token_of = {i: t for t, i in vocab.items()}
    added = {t["id"]: t for t in data["added_tokens"]}
    pairs = _merge_pairs(model)
    parts: dict[str, list[tuple[str, str]]] = {}
    for a, b in pairs:
        parts.setdefault(a + b, []).append((a, b))

    bytes_ = set(byte_to_unicode().values())
    if missing := sorted(bytes_ - vocab.keys()):
        raise CheckpointError(f"the BPE lacks byte-level tokens {missing[:4]}: not a byte-level BPE, cannot trim")
    corpus = {token_of[i] for i in used_ids if i in token_of} - bytes_
    kept, stack = set(bytes_) | corpus, list(corpus)
    while stack:  # the closure: every merge that makes a kept token, and its parts
        for a, b in parts.get(stack.pop(), ()):
            for part in (a, b):
                if part not in kept:
                    kept.add(part)
                    stack.append(part)
    ordinary = sorted(kept, key=vocab.__getitem__)
    new_id = {t: i for i, t in enumerate(ordinary)}
    old_ids = [vocab[t] for t in ordinary] + sorted(added)
    merges = [m for m, (a, b) in zip(model["merges"], pairs) if a in new_id and b in new_id and a + b in new_id]

    model["vocab"] = new_id
    model["merges"] = merges
    renumber = {old: new for new, old in enumerate(old_ids)}
    data["added_tokens"] = [{**t, "id": renumber[t["id"]]} for t in data["added_tokens"]]
    counts = {"bytes": len(bytes_), "special": len(added), "corpus": len(corpus),
              "closure": len(kept) - len(bytes_) - len(corpus)}
    return Trim(old_ids, len(ordinary), len(merges), counts), data


def trimmed_tokenizer(tokenizer: Tokenizer, data: dict[str, Any]) -> Tokenizer:
    backend = tokenizers.Tokenizer.from_str(json.dumps(data))
    config = {k: v for k, v in tokenizer.config.items() if k != "added_tokens_decoder"}
    return Tokenizer(backend, chat_template=tokenizer.chat_template, eos_token=tokenizer.eos_token,
                     pad_token=tokenizer.pad_token, config=config)


# -- the trimmed model ------------------------------------------------------------------------------------------------

def remap_ids(d: dict[str, Any], renumber: dict[int, int], where: str) -> dict[str, Any]:
    """`d` with the token ids under TOKEN_ID_KEYS (also in nested dicts) renumbered; an id not kept is an error."""
    def one(key: str, value: int) -> int:
        if value not in renumber:
            raise CheckpointError(f"{where}: {key} = {value} is not a kept token id")
        return renumber[value]

    out = {}
    for key, value in d.items():
        if isinstance(value, dict):
            value = remap_ids(value, renumber, f"{where} {key}")
        elif key in TOKEN_ID_KEYS and isinstance(value, int) and not isinstance(value, bool):
            value = one(key, value)
        elif key in TOKEN_ID_KEYS and isinstance(value, list) and all(isinstance(v, int) for v in value):
            value = [one(key, v) for v in value]
        out[key] = value
    return out


def trim_model(model: Qwen2AudioForConditionalGeneration, trim: Trim, tokenizer: Tokenizer,
               multiple: int = PAD_MULTIPLE) -> Qwen2AudioForConditionalGeneration:
    """A copy of `model` whose embedding (and untied head) rows are `trim.old_ids` in new order, then zero rows up
    to a multiple of `multiple`; ids in its config and generation config renumbered."""
    rows = padded_rows(len(trim.old_ids), multiple)
    renumber = {old: new for new, old in enumerate(trim.old_ids)}
    index = torch.tensor(trim.old_ids)
    config = model.config
    if max(trim.old_ids) >= config.text.vocab_size:
        raise CheckpointError(f"the tokenizer has ids up to {max(trim.old_ids)}, the embedding only "
                              f"{config.text.vocab_size} rows: tokenizer and weights do not belong together")

    def rows_of(weight: torch.Tensor) -> torch.Tensor:
        out = weight.new_zeros(rows, weight.shape[1])
        out[:len(index)] = weight.detach()[index]
        return out

    text = dataclasses.replace(config.text, vocab_size=rows,
                               extra=remap_ids(config.text.extra, renumber, "config.json text_config"))
    text.extra.pop("vocab_size", None)
    new_config = dataclasses.replace(config, text=text, audio_token_id=renumber[config.audio_token_id],
                                     extra=remap_ids(config.extra, renumber, "config.json"))
    new_config.extra.pop("vocab_size", None)
    state = dict(model.state_dict())
    for name in ("decoder.embed_tokens.weight", "decoder.lm_head.weight"):
        if name in state:
            state[name] = rows_of(state[name])
    with torch.device("meta"):
        trimmed = Qwen2AudioForConditionalGeneration(new_config)
    trimmed.load_state_dict(state, assign=True)
    trimmed.audio_encoder.positional_embedding.requires_grad_(False)
    trimmed.hf_config = remap_ids({k: v for k, v in getattr(model, "hf_config", {}).items() if k != "vocab_size"},
                                  renumber, "config.json")
    trimmed.generation_config = remap_ids(dict(model.generation_defaults()), renumber, "generation_config.json")
    old = model.processor or Processor()
    trimmed.processor = Processor(tokenizer, n_mels=old.n_mels, padding_side=old.padding_side,
                                  feature_config=old.feature_config)
    return trimmed.eval()


def trim_vocabulary(model_path: str | Path, corpus: Iterable[str | Path], out: str | Path,
                    multiple: int = PAD_MULTIPLE, force: bool = False, log: Log = print) -> Path:
    """Write to `out` the checkpoint at `model_path` with its vocabulary trimmed to what `corpus` (JSONL files)
    needs. See the module docstring."""
    out, corpus = Path(out), [Path(c) for c in corpus]
    if not corpus:
        raise ValueError("give at least one corpus file (--corpus FILE ...)")
    if multiple < 1:
        raise ValueError(f"--multiple must be >= 1, got {multiple}")
    check_out_dir(out, [Path(model_path)], force)
    model = load(model_path)
    tokenizer = model.processor.tokenizer
    used = corpus_token_ids(tokenizer, corpus, log)
    trim, data = plan_trim(tokenizer, used)
    new_tokenizer = trimmed_tokenizer(tokenizer, data)
    trimmed = trim_model(model, trim, new_tokenizer, multiple)
    c, rows = trim.counts, trimmed.config.text.vocab_size
    log(f"vocab      kept {len(trim.old_ids)} of {len(tokenizer)} tokens: {c['bytes']} byte-level, {c['special']} "
        f"special, {c['corpus']} more used by the corpus, {c['closure']} more to close the merges; "
        f"{trim.n_merges} merges")
    head = "tied" if trimmed.config.text.tie_embeddings else "untied"
    specials = sorted(new_tokenizer.backend.get_added_tokens_decoder().items())
    log(f"weights    embedding rows {model.config.text.vocab_size} -> {rows} (a multiple of {multiple}; the "
        f"{rows - len(trim.old_ids)} padding rows are zero), {head} head; special ids: "
        + ", ".join(f"{t.content} {i}" for i, t in specials))
    trimmed.save_pretrained(out)
    log(f"wrote      {out}: {trimmed.num_parameters():,} parameters (was {model.num_parameters():,})")
    return out
