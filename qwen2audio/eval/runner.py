"""Run a benchmark: predictions from a local model or an OpenAI-compatible API, appended to a JSONL as they come
(a rerun skips what is done), then scored per source by the benchmark's metric beside the published numbers (the
synthetic corpus: by the metric each row names, per source and per task).

Prompt style of a local model (`LocalPredictor(style=)`): "base", the item's base prompt; "chat", its conversation
rendered by the chat template with the generation prompt; "auto", the model's own style (`transcribe.prompt_style`)
for items that carry a conversation (the synthetic corpus), and the prompt as given for the others (the official
benchmarks' base prompts, AIR-Bench's chat prompts). An API always gets the conversation as OpenAI messages."""

from __future__ import annotations

import base64
import io
import time
from pathlib import Path
from typing import Callable, Sequence

import soundfile as sf
import torch
from tqdm import tqdm

from ..audio import SAMPLE_RATE, load_audio
from ..chat import load_messages, model_processor
from ..transcribe import STYLES, prompt_style
from .airbench import judge_scores
from .benchmark import Benchmark, EvalItem
from .datasets import get_benchmark, load_items
from .metrics import METRICS
from .results import Results, Score, append_rows, predictions_path, read_predictions, write_results
from .synthetic import score_synth, source_scores

MAX_NEW_TOKENS = 256  # the official scripts' limit
Predictor = Callable[[Sequence[EvalItem]], list[str]]


class ApiError(ValueError):
    """An OpenAI-compatible endpoint failed after its retries (a ValueError, so the CLI prints one line)."""


# -- predictors ----------------------------------------------------------------------------------------------------
class LocalPredictor:
    """Batched greedy generation, left padding, special tokens skipped; `style`: "auto", "base" or "chat" (the
    prompt style, see the module docstring)."""

    def __init__(self, model, max_new_tokens: int = MAX_NEW_TOKENS, style: str = "auto"):
        if style not in STYLES:
            raise ValueError(f"prompt style must be one of {', '.join(STYLES)}, not {style!r}")
        self.model, self.max_new_tokens, self.style = model, max_new_tokens, style
        self.model_style = prompt_style(model)

    def item_style(self, item: EvalItem) -> str:
        if self.style != "auto":
            return self.style
        return self.model_style if item.messages is not None else "base"

    def inputs(self, items: Sequence[EvalItem]):
        """The left-padded model inputs of a batch, each item in its prompt style."""
        processor = model_processor(self.model)
        prompts, audios = [], []
        for item in items:
            if self.item_style(item) == "chat":
                conversation, waves = load_messages(item.conversation())
                prompts.append(processor.apply_chat_template(conversation, add_generation_prompt=True))
            else:
                waves = [load_audio(a, SAMPLE_RATE) for a in item.all_audios()]
                prompts.append(item.prompt)
            audios += waves
        return processor(text=prompts, audio=audios or None, sampling_rate=SAMPLE_RATE, padding_side="left")

    def __call__(self, items: Sequence[EvalItem]) -> list[str]:
        inputs = self.inputs(items)
        with torch.no_grad():
            sequences = self.model.generate(**inputs.to(self.model.device), max_new_tokens=self.max_new_tokens,
                                            do_sample=False)
        new = sequences[:, inputs["input_ids"].shape[1]:]
        return self.model.processor.batch_decode(new.tolist(), skip_special_tokens=True)


def wav_bytes(audio) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, load_audio(audio), SAMPLE_RATE, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def input_audio(source) -> dict:
    """OpenAI's audio part: the audio as a base64 16 kHz wav."""
    return {"type": "input_audio", "input_audio": {"data": base64.b64encode(wav_bytes(source)).decode(),
                                                   "format": "wav"}}


def openai_messages(conversation: Sequence[dict]) -> list[dict]:
    """A conversation with audio parts ({"type": "audio", "audio": source}) → OpenAI chat messages."""
    out = []
    for message in conversation:
        content = message["content"]
        if not isinstance(content, str):
            content = [input_audio(p["audio"]) if p.get("type") == "audio" else p for p in content]
        out.append({"role": message["role"], "content": content})
    return out


class ApiPredictor:
    """An OpenAI-compatible server (vLLM, ours ...): one chat completion per item, its conversation as OpenAI
    messages (by default the audio as an `input_audio` part followed by the task prompt's text), temperature 0,
    max_tokens 256."""

    def __init__(self, url: str, model: str = "default", api_key: str | None = None,
                 max_new_tokens: int = MAX_NEW_TOKENS, timeout: float = 600.0, retries: int = 3):
        self.url = url.rstrip("/")
        self.model, self.max_new_tokens, self.timeout, self.retries = model, max_new_tokens, timeout, retries
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}

    def complete(self, messages: list[dict], max_tokens: int, temperature: float = 0.0) -> str:
        import httpx

        body = {"model": self.model, "messages": messages, "max_tokens": max_tokens, "temperature": temperature}
        url = self.url if self.url.endswith("/chat/completions") else f"{self.url}/chat/completions"
        for attempt in range(self.retries):
            try:
                response = httpx.post(url, json=body, headers=self.headers, timeout=self.timeout)
                response.raise_for_status()
                return response.json()["choices"][0]["message"]["content"] or ""
            except (httpx.HTTPError, KeyError, IndexError, TypeError, ValueError) as e:
                if attempt == self.retries - 1:
                    raise ApiError(f"{url}: no usable reply after {self.retries} tries: {e}") from e
                time.sleep(0.5 * 2 ** attempt)
        raise AssertionError("unreachable")

    def __call__(self, items: Sequence[EvalItem]) -> list[str]:
        return [self.complete(openai_messages(item.conversation()), self.max_new_tokens) for item in items]


# -- predicting ----------------------------------------------------------------------------------------------------
DEFAULT_STYLE = "base"  # a prediction row without "prompt_style" was made with the base prompt


def pending(items: Sequence[EvalItem], done: dict[str, dict], predictor: Predictor) -> list[EvalItem]:
    """The items to predict: those not done, or done in another prompt style than the predictor's now (a local
    model's rows record a style other than the base one)."""
    style = getattr(predictor, "item_style", None)
    return [i for i in items if i.id not in done
            or (style is not None and done[i.id].get("prompt_style", DEFAULT_STYLE) != style(i))]


def predict(items: Sequence[EvalItem], predictor: Predictor, path: Path, batch_size: int = 8,
            progress: bool = True, desc: str = "eval") -> dict[str, dict]:
    """Predictions for `items`, computing only those not already in `path` (a row's later line wins)."""
    done = read_predictions(path)
    todo = pending(items, done, predictor)
    style = getattr(predictor, "item_style", None)
    bar = tqdm(total=len(items), initial=len(items) - len(todo), desc=desc, unit="item", disable=not progress,
               dynamic_ncols=True)
    for start in range(0, len(todo), batch_size):
        batch = todo[start:start + batch_size]
        rows = [{"id": i.id, "source": i.source, "prediction": p, "gt": i.gt, "language": i.language,
                 "target": i.target, **({"extra": i.extra} if i.extra else {}),
                 **({"prompt_style": style(i)} if style and style(i) != DEFAULT_STYLE else {})}
                for i, p in zip(batch, predictor(batch), strict=True)]
        append_rows(path, rows)
        done.update((r["id"], r) for r in rows)
        bar.update(len(batch))
    bar.close()
    return done


# -- scoring -------------------------------------------------------------------------------------------------------
def score_rows(b: Benchmark, rows: Sequence[dict], judge=None, out_dir: Path | None = None) -> dict[str, Score]:
    """One score per source, with the benchmark's metric (`judge`: a `complete(messages, max_tokens)` for
    AIR-Bench chat; its verdicts go to `out_dir`)."""
    if b.metric == "row":
        return source_scores(rows)
    if b.metric == "judge":
        if judge is None:
            raise ValueError(f"{b.name} is scored by a judge: give one (CLI: --judge-api URL)")
        return judge_scores(rows, judge, Path(out_dir) / f"{b.name}.judge.jsonl")
    by_source: dict[str, list[dict]] = {}
    for row in rows:
        by_source.setdefault(row["source"], []).append(row)
    metric = METRICS[b.metric]
    scores = {}
    for source, group in sorted(by_source.items()):
        refs, preds = [r["gt"] for r in group], [r["prediction"] for r in group]
        if b.metric == "wer":
            scores[source] = metric(refs, preds, language=group[0]["language"] or "en")
        elif b.metric == "bleu":
            scores[source] = metric(refs, preds, target_language=group[0]["target"] or "en")
        elif b.metric == "choice":
            scores[source] = metric(group)
        else:
            scores[source] = metric(refs, preds, labels=b.labels)
    return scores


def _published(b: Benchmark, source: str) -> str:
    value = b.published.get(source)
    if value is None:
        return "–"
    return " / ".join(f"{v}" for v in value) if isinstance(value, tuple) else f"{value}"


def markdown_table(b: Benchmark, scores: dict[str, Score]) -> str:
    lines = [f"| {b.name} source | n | {b.metric} | published (paper / HF) | notes |", "|---|---:|---:|---:|---|"]
    for source, s in scores.items():
        value = f"{s.value:.4f}" if s.metric == "accuracy" else f"{s.value:.2f}"
        notes = ", ".join(f"{k} {v}" for k, v in s.details.items()
                          if k in ("outside_label_set", "unparseable", "judge_failures", "tokenize", "note"))
        lines.append(f"| {source} | {s.count} | {value} | {_published(b, source)} | {notes} |")
    return "\n".join(lines) + "\n"


def evaluate(benchmark: str | Benchmark, data: str | Path, predictor: Predictor, out_dir: str | Path,
             limit: int | None = None, batch_size: int = 8, progress: bool = True, judge=None) -> Results:
    """Predict what is missing in `out_dir/{name}.predictions.jsonl`, then write `{name}.results.json` and `.md`."""
    b = get_benchmark(benchmark) if isinstance(benchmark, str) else benchmark
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    items = load_items(b, data, limit)
    path = predictions_path(out_dir, b.name)
    computed = len(pending(items, read_predictions(path), predictor))
    done = predict(items, predictor, path, batch_size=batch_size, progress=progress, desc=b.name)
    rows = [done[i.id] for i in items]
    if b.metric == "row":
        style = getattr(predictor, "item_style", None)
        styles = sorted({style(i) for i in items}) if style else []
        scores, tasks, markdown = score_synth(rows, styles)
        results = Results(b.name, scores, computed, markdown, b.published, tasks, styles)
    else:
        scores = score_rows(b, rows, judge=judge, out_dir=out_dir)
        results = Results(b.name, scores, computed, markdown_table(b, scores), b.published)
    write_results(out_dir, results)
    return results
