"""Preference pairs measured on a local model (`--benchmark preference`, e.g. the corpus' held-out
CORPUS/test/dpo.jsonl): did DPO move the model towards the chosen answers?

- Log-probabilities: each pair is encoded exactly as the DPO stage encodes it (`data.Encoder`, the chat template,
  the answer up to and including its `<|im_end|>`), collated by the training loader (chosen rows then rejected rows,
  audio encoded once) and scored by the training forward (`logprobs.TokenLogProbs`, summed by
  `logprobs.sequence_logps`). Reported: preference accuracy (the share of pairs whose chosen answer has the higher
  summed log-probability), and the mean margin log π(chosen) - log π(rejected), summed and per token.
- Outputs: the greedy answer to the same conversation (chat template, generation prompt) compared with both
  answers after `normalize.answer_key` (lower case, punctuation gone): the share equal to the chosen one, equal to
  the rejected one, closer (character edit distance) to the rejected than to the chosen one, and mean lengths in words.

Rows are `{"messages": [... user turn with <audio> tags], "audios": [...], "chosen", "rejected"}` (any DPO row form
`data.rows` reads), audios relative to the file's folder; an optional "source" (or "task") groups them in the table.
Per-pair results are appended to `preference.predictions.jsonl` (a rerun computes only what is missing)."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

import torch
from tqdm import tqdm

from ..chat import model_processor
from ..data import Batch, BatchLoader, Encoder, EncodedPair, Plan, Preference, RowRef, parse_row
from ..logprobs import TokenLogProbs, batch_token_logps, sequence_logps, supervised_tokens
from .benchmark import EvalItem
from .datasets import get_benchmark
from .metrics import edit_distance
from .normalize import answer_key
from .results import Results, Score, append_rows, predictions_path, read_predictions, write_results
from .runner import MAX_NEW_TOKENS, LocalPredictor

NAME = "preference"
DEFAULT_GROUP = "dpo"
ALL_GROUPS = "all"


@dataclass(frozen=True)
class Pair:
    id: str
    group: str
    sample: Preference
    encoded: EncodedPair


def _data_file(data: str | Path) -> Path:
    path = Path(data)
    if path.is_dir():
        path = path / "dpo.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{NAME}: no preference rows at {path} (a .jsonl file, or a folder holding dpo.jsonl)")
    return path


def load_pairs(data: str | Path, tokenizer, limit: int | None = None) -> list[Pair]:
    """The pairs of a DPO JSONL, encoded as the DPO stage encodes them; a bad row is one error naming file:line."""
    path = _data_file(data)
    encoder = Encoder(tokenizer, preference=True)
    pairs: list[Pair] = []
    ids: set[str] = set()
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        if limit is not None and len(pairs) >= limit:
            break
        try:
            row = json.loads(line)
            sample = parse_row(row, path.parent)
            encoded = encoder(sample, RowRef(str(path), n))
        except ValueError as e:  # json.JSONDecodeError is one
            raise ValueError(f"{path}:{n}: {e}") from None
        pair_id = str(row.get("id", f"{path.name}:{n}"))
        pair_id = pair_id if pair_id not in ids else f"{pair_id}@{n}"
        ids.add(pair_id)
        pairs.append(Pair(pair_id, str(row.get("source") or row.get("task") or DEFAULT_GROUP), sample, encoded))
    if not pairs:
        raise ValueError(f"{NAME}: found no preference rows in {path}")
    return pairs


# -- log-probabilities --------------------------------------------------------------------------------------------
def pair_loader(model) -> BatchLoader:
    """The training collator, with nothing cut: a pair longer than the model's positions is refused."""
    return BatchLoader.from_tokenizer(model.processor.tokenizer, n_mels=model.config.audio.n_mels,
                                      max_length=model.config.text.max_positions, long_audio="truncate")


def pair_logps(model, loader: BatchLoader, pairs: Sequence[Pair]) -> list[dict]:
    """Summed log-probabilities and token counts of the chosen and rejected answers of each pair."""
    batch: Batch = loader.load(Plan(0, [p.encoded for p in pairs]))
    dropped = [str(p.encoded.ref) for p in pairs if str(p.encoded.ref) not in batch.rows]
    if dropped:
        raise ValueError(f"{dropped[0]}: the pair is longer than the model's {loader.max_length} positions")
    if batch.input_features is not None:
        batch = replace(batch, input_features=batch.input_features.to(model.dtype))
    batch = batch.to(model.device)
    with torch.no_grad():
        token_logps = batch_token_logps(TokenLogProbs(model), batch)
    chosen, rejected = sequence_logps(token_logps, batch, average=False)
    tokens = supervised_tokens(batch.labels, batch.attention_mask).sum(-1).tolist()
    n = len(pairs)
    return [{"logp_chosen": c, "logp_rejected": r, "tokens_chosen": tc, "tokens_rejected": tr}
            for c, r, tc, tr in zip(chosen.tolist(), rejected.tolist(), tokens[:n], tokens[n:2 * n])]


def greedy_answers(predictor: LocalPredictor, pairs: Sequence[Pair]) -> list[str]:
    items = [EvalItem(p.id, None, p.group, "", p.sample.chosen, messages=p.sample.prompt) for p in pairs]
    return predictor(items)


# -- summary ----------------------------------------------------------------------------------------------------------
def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def _words(text: str) -> int:
    return len(text.split())


def summarize(rows: Sequence[dict]) -> Score:
    """Preference accuracy (a fraction) with the margins and the output-level measures as details."""
    keys = [(answer_key(r["answer"], None), answer_key(r["chosen"], None), answer_key(r["rejected"], None))
            for r in rows]
    closer = [(edit_distance(a, rj), edit_distance(a, c)) for a, c, rj in keys]
    details = {
        "margin_sum": _mean([r["logp_chosen"] - r["logp_rejected"] for r in rows]),
        "margin_per_token": _mean([r["logp_chosen"] / max(r["tokens_chosen"], 1)
                                   - r["logp_rejected"] / max(r["tokens_rejected"], 1) for r in rows]),
        "logp_chosen": _mean([r["logp_chosen"] for r in rows]),
        "logp_rejected": _mean([r["logp_rejected"] for r in rows]),
        "answer_is_chosen": _mean([a == c for a, c, _ in keys]),
        "answer_is_rejected": _mean([a == rj for a, _, rj in keys]),
        "closer_to_rejected": _mean([to_rejected < to_chosen for to_rejected, to_chosen in closer]),
        "answer_words": _mean([_words(r["answer"]) for r in rows]),
        "chosen_words": _mean([_words(r["chosen"]) for r in rows]),
        "rejected_words": _mean([_words(r["rejected"]) for r in rows]),
    }
    accuracy = _mean([r["logp_chosen"] > r["logp_rejected"] for r in rows])
    return Score("preference_accuracy", accuracy, "", len(rows), details)


def preference_scores(rows: Sequence[dict]) -> dict[str, Score]:
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(r["group"], []).append(r)
    scores = {g: summarize(group) for g, group in sorted(groups.items())}
    if len(groups) > 1:
        scores[ALL_GROUPS] = summarize(rows)
    return scores


def preference_table(scores: dict[str, Score]) -> str:
    lines = ["| preference set | n | accuracy | margin (sum) | margin (per token) | answer = chosen "
             "| answer = rejected | closer to rejected | answer words | chosen / rejected words |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for group, s in scores.items():
        d = s.details
        lines.append(f"| {group} | {s.count} | {s.value:.4f} | {d['margin_sum']:.3f} | {d['margin_per_token']:.4f} "
                     f"| {d['answer_is_chosen']:.4f} | {d['answer_is_rejected']:.4f} | {d['closer_to_rejected']:.4f} "
                     f"| {d['answer_words']:.1f} | {d['chosen_words']:.1f} / {d['rejected_words']:.1f} |")
    return "\n".join(lines) + "\n"


def evaluate_preference(model, data: str | Path, out_dir: str | Path, limit: int | None = None, batch_size: int = 8,
                        max_new_tokens: int = MAX_NEW_TOKENS, progress: bool = True) -> Results:
    """Score the pairs missing in `out_dir/preference.predictions.jsonl`, then write `preference.results.json` and
    `.md`."""
    model_processor(model)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    pairs = load_pairs(data, model.processor.tokenizer, limit)
    path = predictions_path(out_dir, NAME)
    done = read_predictions(path)
    todo = [p for p in pairs if p.id not in done]
    loader, predictor = pair_loader(model), LocalPredictor(model, max_new_tokens, style="chat")
    with tqdm(total=len(pairs), initial=len(pairs) - len(todo), desc=NAME, unit="pair", disable=not progress,
              dynamic_ncols=True) as bar:
        for start in range(0, len(todo), batch_size):
            batch = todo[start:start + batch_size]
            rows = [{"id": p.id, "group": p.group, **logps, "answer": answer, "chosen": p.sample.chosen,
                     "rejected": p.sample.rejected}
                    for p, logps, answer in zip(batch, pair_logps(model, loader, batch),
                                                greedy_answers(predictor, batch), strict=True)]
            append_rows(path, rows)
            done.update((r["id"], r) for r in rows)
            bar.update(len(batch))
    scores = preference_scores([done[p.id] for p in pairs])
    results = Results(NAME, scores, len(todo), preference_table(scores), get_benchmark(NAME).published)
    write_results(out_dir, results)
    return results
