"""Scores of the synthetic corpus' test split (`--benchmark synth`): each row names its metric (`metrics.ROW_METRICS`:
wer, cer, bleu, accuracy, exact); rows are scored per source and pooled per task (corpus WER/CER/BLEU over the
task's items; the mean of its sources' BLEU where their targets need different sacrebleu tokenizers), and both go
into one table."""

from __future__ import annotations

from typing import Sequence

from .metrics import ROW_METRICS, Score, bleu, bleu_tokenizer

ALL_SOURCES = "all"  # the source column of a task's pooled row
NOTE_KEYS = ("outside_label_set", "tokenize", "note")


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
