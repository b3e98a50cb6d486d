"""AIR-Bench: the loaders of both sets, and the Chat set scored by an LLM judge behind any OpenAI-compatible endpoint
(the official judge prompt, both answer orders, averaged, per category). The Foundation set's items are
single-choice questions, scored by `metrics.choice_accuracy` (unparseable answers count as wrong, and are counted).

Layout of the download: `Chat/Chat_meta.json` and `Foundation/Foundation_meta.json`, the audio of an item at
`{Chat|Foundation}/{task_name}_{dataset_name}/{path}`."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Callable, Sequence

from ..tokenizer import render_default_chat
from .benchmark import Benchmark, EvalItem
from .metrics import CHOICE_LETTERS
from .results import Score, append_rows, read_predictions

# The official judge prompt (AIR-Bench `score_chat.py`): Assistant 1 is the reference, Assistant 2 the model.
JUDGE_PROMPT = (
    "You are a helpful and precise assistant for checking the quality of the answer.\n"
    "[Detailed Audio Description]\nXAudioX\n[Question]\nXQuestionX\n"
    "[The Start of Assistant 1s Answer]\nXAssistant1X\n[The End of Assistant 1s Answer]\n"
    "[The Start of Assistant 2s Answer]\nXAssistant2X\n[The End of Assistant 2s Answer]\n[System]\n"
    "We would like to request your feedback on the performance of two AI assistants in response to the user question "
    "and audio description displayed above. AI assistants are provided with detailed audio descriptions and questions.\n"
    "Please rate the helpfulness, relevance, accuracy, and comprehensiveness of their responses. "
    "Each assistant receives an overall score on a scale of 1 to 10, where a higher score indicates better overall "
    "performance. Please output a single line containing only two values indicating the scores for Assistant 1 and "
    "2, respectively. The two scores are separated by a space.")
JUDGE_RETRIES = 3  # a malformed judge answer is asked again this many times in all, then counted as failed
CHAT_CATEGORIES = ("speech", "sound", "music", "speech_and_sound", "speech_and_music")
MIXED = ("speech_and_sound", "speech_and_music")  # the report's "mixed" is their mean
FOUNDATION_INSTRUCTION = ("Choose the most suitable answer from options A, B, C, and D to respond the question in "
                          "next line, you may only choose A or B or C or D.")


def chat_category(task_name: str) -> str:
    name = task_name.lower()
    return next((c for c in sorted(CHAT_CATEGORIES, key=len, reverse=True) if name.startswith(c)), name)


def _chat_prompt(question: str) -> str:
    return render_default_chat([{"role": "user", "content": [{"type": "audio"}, {"type": "text", "text": question}]}],
                               add_generation_prompt=True)


def _meta(root: Path, folder: str) -> tuple[Path, list[dict]]:
    base = root / folder if (root / folder).is_dir() else root
    return base, json.loads((base / f"{folder}_meta.json").read_text(encoding="utf-8"))


def load_chat(b: Benchmark, root: Path) -> list[EvalItem]:
    base, rows = _meta(root, "Chat")
    return [EvalItem(str(r["uniq_id"]), base / f"{r['task_name']}_{r['dataset_name']}" / r["path"],
                     chat_category(r["task_name"]), _chat_prompt(r["question"]), r["answer_gt"], text=r["question"],
                     extra={"question": r["question"], "meta_info": r.get("meta_info", "")}) for r in rows]


def load_foundation(b: Benchmark, root: Path) -> list[EvalItem]:
    base, rows = _meta(root, "Foundation")
    items = []
    for r in rows:
        choices = [r[f"choice_{c}"] for c in "abcd" if r.get(f"choice_{c}") not in (None, "")]
        text = FOUNDATION_INSTRUCTION + "\n" + r["question"] + "".join(
            f"\n{CHOICE_LETTERS[i]}. {c}" for i, c in enumerate(choices))
        items.append(EvalItem(str(r["uniq_id"]), base / f"{r['task_name']}_{r['dataset_name']}" / r["path"],
                              r["task_name"], _chat_prompt(text), r["answer_gt"], text=text,
                              extra={"choices": choices}))
    return items


# -- Chat: the judge -----------------------------------------------------------------------------------------------
def judge_prompt(meta_info: str, question: str, first: str, second: str) -> str:
    return (JUDGE_PROMPT.replace("XAudioX", meta_info).replace("XQuestionX", question)
            .replace("XAssistant1X", first).replace("XAssistant2X", second))


def parse_judge(answer: str) -> tuple[float, float] | None:
    """The two scores of the judge's first line ("8 7", "8.5, 7"), or None when it is malformed."""
    numbers = re.findall(r"\d+(?:\.\d+)?", (answer or "").strip().split("\n")[0])
    if len(numbers) != 2:
        return None
    scores = tuple(float(n) for n in numbers)
    return scores if all(1 <= s <= 10 for s in scores) else None


Complete = Callable[[list[dict], int], str]  # (messages, max_tokens) -> the judge's reply


def judge_row(row: dict, complete: Complete, retries: int = JUDGE_RETRIES) -> dict:
    """The model's score with the reference first and with it second; None for an order the judge never answered
    in the required form."""
    extra, out = row["extra"], {}
    for order, (first, second) in {"reference_first": (row["gt"], row["prediction"]),
                                   "model_first": (row["prediction"], row["gt"])}.items():
        prompt = judge_prompt(extra.get("meta_info", ""), extra["question"], first, second)
        out[order] = None
        for _ in range(retries):
            try:
                scores = parse_judge(complete([{"role": "user", "content": prompt}], 32))
            except Exception:  # noqa: BLE001 - a failed request counts as a malformed answer
                scores = None
            if scores is not None:
                out[order] = scores[1] if order == "reference_first" else scores[0]
                break
    return out


def judge_scores(rows: Sequence[dict], complete: Complete, path: Path) -> dict[str, Score]:
    """Judge every row (resumable: verdicts are appended to `path`), then the mean model score per category,
    `mixed` (mean of speech_and_sound and speech_and_music) and `average` (of speech, sound, music, mixed)."""
    verdicts = read_predictions(path)
    for row in rows:
        if row["id"] not in verdicts:
            verdict = {"id": row["id"], "source": row["source"], **judge_row(row, complete)}
            append_rows(path, [verdict])
            verdicts[row["id"]] = verdict
    by_category: dict[str, list[dict]] = {}
    for row in rows:
        by_category.setdefault(row["source"], []).append(verdicts[row["id"]])
    scores = {}
    for category, group in sorted(by_category.items()):
        per_item = [[v[o] for o in ("reference_first", "model_first") if v[o] is not None] for v in group]
        values = [sum(s) / len(s) for s in per_item if s]
        failed = sum(v[o] is None for v in group for o in ("reference_first", "model_first"))
        scores[category] = Score("judge", sum(values) / len(values) if values else 0.0, "/10", len(group),
                                 {"judged": len(values), "judge_failures": failed})
    if all(m in scores for m in MIXED):
        scores["mixed"] = Score("judge", sum(scores[m].value for m in MIXED) / 2, "/10",
                                sum(scores[m].count for m in MIXED))
    main = [scores[c] for c in ("speech", "sound", "music", "mixed") if c in scores]
    if main:
        scores["average"] = Score("judge", sum(s.value for s in main) / len(main), "/10", len(rows))
    return scores
