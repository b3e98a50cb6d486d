"""The synthetic corpus' test split (`qwen2audio synth` -> `CORPUS/eval/`, `--benchmark synth`): its rows read into
`EvalItem`s, and their scores. Each row names its metric (`metrics.ROW_METRICS`: wer, cer, bleu, accuracy, exact);
rows are scored per source and pooled per task (corpus WER/CER/BLEU over the task's items; the mean of its sources'
BLEU where their targets need different sacrebleu tokenizers), and both go into one table."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator, Sequence

from ..data.rows import AUDIO_TAG, Chat, parse_row
from ..processor import audios_in_conversation
from ..tokenizer import AUDIO_PLACEHOLDER, AUDIO_TOKEN
from .benchmark import Benchmark, EvalItem, source_language
from .metrics import ROW_METRICS, bleu, bleu_tokenizer
from .results import Score

ALL_SOURCES = "all"  # the source column of a task's pooled row
NOTE_KEYS = ("outside_label_set", "tokenize", "note")


# -- reading: CORPUS/eval/*.jsonl -> EvalItems ---------------------------------------------------------------------
def _jsonl(path: Path) -> Iterator[tuple[int, dict]]:
    """(line number, row) of a JSONL file; a line that is not a JSON object is a one-line error naming file:line."""
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{n}: not JSON ({e.msg})") from None
        if not isinstance(row, dict):
            raise ValueError(f"{path}:{n}: a row must be a JSON object")
        yield n, row


def _synth_task(source: str, language: str | None) -> str:
    """The task of a row that does not name it: its source without "synth_" and the language suffix."""
    task = source.removeprefix("synth_")
    return task.removesuffix(f"_{language}") if language else task


def synth_item(row: dict, base_dir: Path, default_id: str) -> EvalItem:
    """One row of CORPUS/eval/*.jsonl (schema in the README). Rows of the older official form (`audio`, `source`,
    `prompt`, `gt` only) are ASR rows scored by WER."""
    missing = [k for k in ("audio", "source", "prompt", "gt") if k not in row]
    if missing:
        raise ValueError(f"missing {', '.join(missing)}")
    metric = row.get("metric", "wer")
    if metric not in ROW_METRICS:
        raise ValueError(f"metric {metric!r}; use one of {', '.join(ROW_METRICS)}")
    source, language = str(row["source"]), row.get("language") or source_language(str(row["source"]))
    prompt = row["prompt"] if AUDIO_TOKEN in row["prompt"] else AUDIO_PLACEHOLDER + row["prompt"]
    instruction = row.get("instruction")
    if instruction is None:
        instruction = prompt.replace(AUDIO_PLACEHOLDER, "")
    messages = row.get("messages") or [{"role": "user", "content": AUDIO_TAG + instruction}]
    # the chat rows of training (`parse_row`) turn <audio> tags into audio parts and resolve the paths
    chat = parse_row({"messages": messages, "audios": row.get("audios") or [row["audio"]]}, base_dir)
    if not isinstance(chat, Chat) or chat.messages[-1]["role"] != "user":
        raise ValueError("'messages' must end with a user turn")
    audios = audios_in_conversation(chat.messages)
    if prompt.count(AUDIO_TOKEN) != len(audios):
        raise ValueError(f"the prompt holds {prompt.count(AUDIO_TOKEN)} {AUDIO_TOKEN} but the item has "
                         f"{len(audios)} audio(s)")
    labels = row.get("labels") or []
    extra = {"task": row.get("task") or _synth_task(source, language), "kind": row.get("kind"), "metric": metric,
             "labels": list(labels)}
    return EvalItem(str(row.get("id", default_id)), audios[0], source, prompt, str(row["gt"]), language,
                    row.get("target") or "en", instruction, extra, chat.messages,
                    tuple(audios) if len(audios) > 1 else ())


def load_synth(b: Benchmark, root: Path) -> Iterator[EvalItem]:
    """CORPUS/eval/: one JSONL per source (or one such file); audio paths relative to the file's folder."""
    for path in [root] if root.is_file() else sorted(root.glob("*.jsonl")):
        for n, row in _jsonl(path):
            try:
                item = synth_item(row, path.parent, f"{path.stem}:{n}")
            except ValueError as e:
                raise ValueError(f"{path}:{n}: {e}") from None
            yield item


# -- scoring -------------------------------------------------------------------------------------------------------
def row_score(rows: Sequence[dict]) -> Score:
    """One score over `rows` (prediction rows sharing one metric), with the metric they name."""
    metric = rows[0]["extra"]["metric"]
    refs, preds = [r["gt"] for r in rows], [r["prediction"] for r in rows]
    if metric in ("wer", "cer", "exact"):
        return ROW_METRICS[metric](refs, preds, language=[r["language"] or "en" for r in rows])
    if metric == "bleu":
        return _bleu(rows)
    labels = sorted({label for r in rows for label in r["extra"]["labels"]})
    return ROW_METRICS[metric](refs, preds, labels=labels)


def _bleu(rows: Sequence[dict]) -> Score:
    by_target: dict[str, list[dict]] = {}
    for r in rows:
        by_target.setdefault(r["target"] or "en", []).append(r)
    if len({bleu_tokenizer(t) for t in by_target}) == 1:
        return bleu([r["gt"] for r in rows], [r["prediction"] for r in rows], next(iter(by_target)))
    parts = [_bleu(group) for group in by_target.values()]
    return Score("bleu", sum(p.value for p in parts) / len(parts), "BLEU", len(rows),
                 {"tokenize": ",".join(sorted({p.details["tokenize"] for p in parts})),
                  "note": f"mean of {len(parts)} targets' BLEU"})


def _groups(rows: Sequence[dict], key) -> dict:
    out: dict = {}
    for r in rows:
        out.setdefault(key(r), []).append(r)
    return out


def source_scores(rows: Sequence[dict]) -> dict[str, Score]:
    """One score per source; a source whose rows name different metrics is an error in the corpus."""
    scores = {}
    for source, group in sorted(_groups(rows, lambda r: r["source"]).items()):
        metrics = {r["extra"]["metric"] for r in group}
        if len(metrics) > 1:
            raise ValueError(f"source {source} mixes metrics {', '.join(sorted(metrics))}: one metric per source")
        scores[source] = row_score(group)
    return scores


def _value(score: Score) -> str:
    return f"{score.value:.4f}" if score.unit == "" else f"{score.value:.2f}"


def _row(task: str, source: str, s: Score) -> str:
    notes = ", ".join(f"{k} {v}" for k, v in s.details.items() if k in NOTE_KEYS)
    unit = f" ({s.unit})" if s.unit == "%" else ""
    return f"| {task} | {source} | {s.count} | {s.metric}{unit} | {_value(s)} | {notes} |"


def score_synth(rows: Sequence[dict], prompt_styles: Sequence[str] = ()) -> tuple[dict, dict, str]:
    """(scores per source, pooled scores per task, the markdown table). Tasks are keyed "task", or "task (metric)"
    where a task's sources use several metrics. The table lists, for each task, its sources and then the task's
    pooled row (source "all"); accuracy and exact are fractions in [0, 1], WER/CER percent, BLEU 0-100."""
    sources = source_scores(rows)
    pooled = {key: row_score(group) for key, group in
              sorted(_groups(rows, lambda r: (r["extra"]["task"], r["extra"]["metric"])).items())}
    tasks = [task for task, _ in pooled]
    names = {(task, metric): task if tasks.count(task) == 1 else f"{task} ({metric})" for task, metric in pooled}
    source_task = {r["source"]: r["extra"]["task"] for r in rows}
    lines = ["| task | source | n | metric | score | notes |", "|---|---|---:|---|---:|---|"]
    for (task, metric), score in pooled.items():
        lines += [_row(names[task, metric], source, s) for source, s in sources.items()
                  if source_task[source] == task and s.metric == metric]
        lines.append(_row(names[task, metric], ALL_SOURCES, score))
    caption = f"\nprompt style: {', '.join(prompt_styles)}\n" if prompt_styles else ""
    return sources, {names[k]: s for k, s in pooled.items()}, "\n".join(lines) + "\n" + caption
