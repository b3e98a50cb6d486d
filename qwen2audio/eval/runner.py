"""Run a benchmark: predictions from a local model or an OpenAI-compatible API, appended to a JSONL as they come
(a rerun skips what is done), then scored per source by the benchmark's metric beside the published numbers."""

from __future__ import annotations

import base64
import io
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from ..files import atomic_write, atomic_write_json
from ..tokenizer import AUDIO_PLACEHOLDER
from .datasets import Benchmark, EvalItem, get_benchmark, load_items
from .metrics import METRICS, Score

MAX_NEW_TOKENS = 256  # the official scripts' limit
Predictor = Callable[[Sequence[EvalItem]], list[str]]


class ApiError(ValueError):
    """An OpenAI-compatible endpoint failed after its retries (a ValueError, so the CLI prints one line)."""


# -- predictors ----------------------------------------------------------------------------------------------------
class LocalPredictor:
    """Batched greedy generation with the official base prompts, left padding, special tokens skipped."""

    def __init__(self, model, max_new_tokens: int = MAX_NEW_TOKENS):
        self.model, self.max_new_tokens = model, max_new_tokens

    def __call__(self, items: Sequence[EvalItem]) -> list[str]:
        import torch

        from ..audio import SAMPLE_RATE, load_audio

        processor = self.model.processor
        inputs = processor(text=[i.prompt for i in items], audio=[load_audio(i.audio) for i in items],
                           sampling_rate=SAMPLE_RATE, padding_side="left")
        with torch.no_grad():
            sequences = self.model.generate(**inputs.to(self.model.device), max_new_tokens=self.max_new_tokens,
                                            do_sample=False)
        new = sequences[:, inputs["input_ids"].shape[1]:]
        return processor.batch_decode(new.tolist(), skip_special_tokens=True)


def wav_bytes(audio) -> bytes:
    import soundfile as sf

    from ..audio import SAMPLE_RATE, load_audio

    buffer = io.BytesIO()
    sf.write(buffer, load_audio(audio), SAMPLE_RATE, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


class ApiPredictor:
    """An OpenAI-compatible server (vLLM, ours ...): one chat completion per item, the audio as an `input_audio`
    part (16 kHz wav) followed by the task prompt's text, temperature 0, max_tokens 256."""

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
        out = []
        for item in items:
            audio = base64.b64encode(wav_bytes(item.audio)).decode()
            text = item.text if item.text is not None else item.prompt.replace(AUDIO_PLACEHOLDER, "", 1)
            content = [{"type": "input_audio", "input_audio": {"data": audio, "format": "wav"}}]
            content += [{"type": "text", "text": text}] if text else []
            out.append(self.complete([{"role": "user", "content": content}], self.max_new_tokens))
        return out


# -- the predictions file ----------------------------------------------------------------------------------------------
def read_predictions(path: Path) -> dict[str, dict]:
    """Finished rows by id; a torn last line (a killed run) is ignored and later rewritten."""
    done = {}
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            done[row["id"]] = row
    return done


def append_rows(path: Path, rows: list[dict]) -> None:
    """Append whole lines and fsync: after a crash the file holds every finished batch."""
    if path.exists() and path.stat().st_size:
        with open(path, "rb") as f:
            f.seek(-1, os.SEEK_END)
            torn = f.read(1) != b"\n"
    else:
        torn = False
    with open(path, "a", encoding="utf-8") as f:
        f.write("\n" if torn else "")
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        f.flush()
        os.fsync(f.fileno())


def predict(items: Sequence[EvalItem], predictor: Predictor, path: Path, batch_size: int = 8,
            progress: bool = True, desc: str = "eval") -> dict[str, dict]:
    """Predictions for `items`, computing only those not already in `path`."""
    done = read_predictions(path)
    todo = [i for i in items if i.id not in done]
    from tqdm import tqdm

    bar = tqdm(total=len(items), initial=len(items) - len(todo), desc=desc, unit="item", disable=not progress,
               dynamic_ncols=True)
    for start in range(0, len(todo), batch_size):
        batch = todo[start:start + batch_size]
        rows = [{"id": i.id, "source": i.source, "prediction": p, "gt": i.gt, "language": i.language,
                 "target": i.target, **({"extra": i.extra} if i.extra else {})}
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
    if b.metric == "judge":
        from .airbench import judge_scores

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


@dataclass
class Results:
    benchmark: str
    scores: dict[str, Score]
    computed: int  # items predicted by this call (the rest came from the predictions file)
    markdown: str
    published: dict  # the report's numbers per source (paper, or (paper, after the HF conversion))

    def as_dict(self) -> dict:
        return {"benchmark": self.benchmark, "scores": {k: s.as_dict() for k, s in self.scores.items()},
                "published": {k: list(v) if isinstance(v, tuple) else v for k, v in self.published.items()}}


def evaluate(benchmark: str | Benchmark, data: str | Path, predictor: Predictor, out_dir: str | Path,
             limit: int | None = None, batch_size: int = 8, progress: bool = True, judge=None) -> Results:
    """Predict what is missing in `out_dir/{name}.predictions.jsonl`, then write `{name}.results.json` and `.md`."""
    b = get_benchmark(benchmark) if isinstance(benchmark, str) else benchmark
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    items = load_items(b, data, limit)
    path = out_dir / f"{b.name}.predictions.jsonl"
    before = len(read_predictions(path).keys() & {i.id for i in items})
    done = predict(items, predictor, path, batch_size=batch_size, progress=progress, desc=b.name)
    scores = score_rows(b, [done[i.id] for i in items], judge=judge, out_dir=out_dir)
    results = Results(b.name, scores, len(items) - before, markdown_table(b, scores), b.published)
    atomic_write_json(out_dir / f"{b.name}.results.json", results.as_dict())
    atomic_write(out_dir / f"{b.name}.results.md", results.markdown.encode())
    return results
