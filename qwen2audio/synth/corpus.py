"""The corpus writer: items of the chosen task families, each rendered from its own seed (seed, split, index), so the
output is the same bytes whatever the worker count or order, and a rerun resumes where it stopped.

Layout of `out/`:
  synth.json                  the settings (a rerun with other settings refuses to mix corpora)
  {split}/audio/NNNNNNN.flac  16 kHz 16-bit FLAC (multi-audio items: NNNNNNN_1.flac ... too), and beside it
                              NNNNNNN.json: the item's record (written last)
  {split}/pretrain.jsonl      task rows  {"audio", "task", "text", "language"?, "question"? ...} (single-audio items)
  {split}/sft.jsonl           chat rows  {"messages": [user "<audio>instruction", assistant answer], "audios"};
                              voice-chat items: the user turn is the audio alone (the question is spoken);
                              multi-turn items: earlier (user, assistant) turns first; multi-audio: "<audio><audio>..."
  {split}/dpo.jsonl           preference rows {"messages", "audios", "chosen", "rejected"}
  train/text.jsonl            text-only chat rows: what the LM must know for some families' answers (arithmetic's
                              facts), absent when no chosen family needs any
  Where a family says so, an SFT answer is written as text parts, those out of the loss marked "loss": false
  (data.rows), with more SFT rows on the same audio (decoys), and its stage-1 row is another task (a transcript).
  eval/SOURCE.jsonl           every test item as a scorable row (eval_row): synth_TASK, or synth_TASK_LANG for the
                              ASR tasks (per spoken language) and s2tt (per target language)
  dataset_info.json           counts, hours, voices and label sets per split and task
Every file is written atomically; manifests and dataset_info only once all items exist.
"""

from __future__ import annotations

import io
import json
import math
import multiprocessing
import os
import random
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import soundfile as sf

from ..audio import SAMPLE_RATE
from ..data.prompts import draw_instruction
from ..data.rows import AUDIO_TAG
from ..files import atomic_write, atomic_write_json
from ..tokenizer import AUDIO_PLACEHOLDER, base_prompt
from .speech import FLITE, VOICE_SETS, require_engine
from .tasks import LANGUAGES, TASKS, Draw, Item

SPLITS = ("train", "test")
FORMAT_VERSION = 3  # bump when the same settings would render different items
FLAC_SUBTYPE = "PCM_16"
ID_DIGITS = 7
EVAL_LANGUAGES = {"cmn": "zh"}  # the language tags (and text normalisers) of the evaluation, where they differ
CHARACTER_LANGUAGES = ("zh", "yue", "ja")  # ASR scored by character error rate (no spaces between words)


@dataclass(frozen=True)
class SynthConfig:
    """What a corpus is made of; `out` and `workers` do not change its contents."""

    clips: int
    tasks: tuple[str, ...]
    languages: tuple[str, ...]
    seed: int = 0
    test_fraction: float = 0.1
    weights: tuple[int, ...] = ()  # one per task (empty: all 1)
    voices: str = "core"  # speech.VOICE_SETS

    def __post_init__(self) -> None:
        if not self.weights:
            object.__setattr__(self, "weights", (1,) * len(self.tasks))
        object.__setattr__(self, "schedule", weighted_schedule(self.tasks, self.weights))

    def counts(self) -> dict[str, int]:
        test = round(self.clips * self.test_fraction)
        return {"train": self.clips - test, "test": test}

    def settings(self) -> dict[str, Any]:
        settings = {"version": FORMAT_VERSION, **asdict(self), "tasks": list(self.tasks),
                    "languages": list(self.languages), "weights": list(self.weights)}
        if self.voices == "core":  # the default is left out, so corpora made before the option resume as they were
            del settings["voices"]
        return settings


def weighted_schedule(tasks: tuple[str, ...], weights: tuple[int, ...]) -> tuple[str, ...]:
    """One cycle of a smooth weighted round-robin: each task appears `weight` times, spread out (asr:2,lid gives
    asr lid asr); with all weights 1 it is the tasks in order. Item i gets schedule[i % len(schedule)]."""
    credit = [0] * len(tasks)
    out = []
    for _ in range(sum(weights)):
        credit = [c + w for c, w in zip(credit, weights)]
        best = max(range(len(tasks)), key=lambda i: (credit[i], -i))
        credit[best] -= sum(weights)
        out.append(tasks[best])
    return tuple(out)


def parse_tasks(specs: list[str] | None) -> dict[str, int]:
    """`["asr:6,lid", "sound:2"]` -> {"asr": 6, "lid": 1, "sound": 2}: NAME[:WEIGHT] items, split on commas too;
    None -> every family with weight 1."""
    if not specs:
        return dict.fromkeys(TASKS, 1)
    weights: dict[str, int] = {}
    for spec in (s.strip() for arg in specs for s in arg.split(",")):
        name, colon, weight = spec.partition(":")
        if name not in TASKS:
            raise ValueError(f"unknown task {name!r}; known: {', '.join(TASKS)}")
        if colon and not (weight.isdigit() and int(weight) > 0):
            raise ValueError(f"bad task weight {spec!r}: write NAME or NAME:N with N a positive whole number")
        if name in weights:
            raise ValueError(f"task {name!r} is given twice")
        weights[name] = int(weight) if colon else 1
    return weights


def resolve(tasks: list[str] | None, languages: list[str] | None, clips: int | None = None,
            hours: float | None = None, seed: int = 0, test_fraction: float = 0.1,
            voices: str = "core") -> SynthConfig:
    """Check the arguments (one ValueError naming the bad value and the choices) and the engines the tasks need.
    tasks: NAME or NAME:WEIGHT items (see parse_tasks); a family of weight w gets w shares of every split."""
    for language in languages or ():
        if language not in LANGUAGES:
            raise ValueError(f"unknown language {language!r}; known: {', '.join(LANGUAGES)}")
    weights = parse_tasks(tasks)
    langs = tuple(dict.fromkeys(languages)) if languages else LANGUAGES
    chosen = list(weights)
    speakable = [t for t in chosen if TASKS[t].languages is None or set(TASKS[t].languages) & set(langs)]
    if tasks and len(speakable) < len(chosen):
        bad = next(t for t in chosen if t not in speakable)
        raise ValueError(f"task {bad!r} speaks only {', '.join(TASKS[bad].languages)}; none is in --languages")
    if not speakable:
        raise ValueError("no task can be made in the chosen languages")
    if "lid" in speakable and len(langs) < 2:  # its answer is one of the corpus' languages: one is no question
        raise ValueError(f"task 'lid' tells languages apart: give at least two --languages, not {langs[0]!r} alone "
                         "(or leave lid out)")
    if voices not in VOICE_SETS:
        raise ValueError(f"unknown voice set {voices!r}; known: {', '.join(VOICE_SETS)}")
    if not 0 <= test_fraction < 1:
        raise ValueError(f"test fraction must lie in [0, 1), got {test_fraction}")
    if (clips is None) == (hours is None):
        raise ValueError("give either clips or hours")
    if hours is not None:
        if hours <= 0:
            raise ValueError(f"hours must be positive, got {hours}")
        mean = sum(TASKS[t].mean_seconds * weights[t] for t in speakable) / sum(weights[t] for t in speakable)
        clips = math.ceil(hours * 3600 / mean)
    if clips <= 0:
        raise ValueError(f"clips must be positive, got {clips}")
    for engine in sorted({e for t in speakable for e in TASKS[t].engines}):
        require_engine(engine)
    for t in speakable:
        if TASKS[t].prepare:
            TASKS[t].prepare(langs)
    return SynthConfig(clips, tuple(speakable), langs, seed, test_fraction, tuple(weights[t] for t in speakable),
                       voices)


# -- one item ---------------------------------------------------------------------------------------------------------
def item_draw(config: SynthConfig, split: str, index: int, task: str) -> Draw:
    """The item's randomness, fixed by (seed, split, index) alone."""
    key = (config.seed, SPLITS.index(split), index)
    family = TASKS[task]
    languages = tuple(l for l in config.languages if family.languages is None or l in family.languages)
    return Draw(np.random.default_rng(key), random.Random(":".join(map(str, key))), split, languages, config.voices)


def item_task(config: SynthConfig, index: int) -> str:
    """Weighted round-robin over the chosen families: each gets its weight's share of every split."""
    return config.schedule[index % len(config.schedule)]


def flac_bytes(audio: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, np.clip(audio, -1.0, 1.0), SAMPLE_RATE, format="FLAC", subtype=FLAC_SUBTYPE)
    return buffer.getvalue()


RAMBLING = ("Well, after listening to the whole recording quite carefully, I would say it is probably {answer}, "
            "although it is honestly hard to be sure, and there may also be {other} somewhere in the background.")
HALLUCINATION = "The audio contains {wrong}, recorded outdoors on a windy day with people talking nearby."


def rejected_answer(item: Item, rng: random.Random) -> str:
    """A worse answer for DPO: for a label, another label, a hallucinated description or a rambling one; for text,
    the transcript with a word dropped or swapped."""
    if item.wrong:
        return rng.choice(item.wrong)
    if item.labels:
        wrong = rng.choice([label for label in item.labels if label != item.answer])
        return rng.choice((wrong, HALLUCINATION.format(wrong=wrong), RAMBLING.format(answer=item.answer, other=wrong)))
    words = item.answer.split()
    i = rng.randrange(len(words))
    if len(words) > 3 and rng.random() < 0.5:
        return " ".join(words[:i] + words[i + 1:])
    others = [w for w in ("yesterday", "music", "orange", "quickly", "mountain") if w != words[i]]
    return " ".join(words[:i] + [rng.choice(others)] + words[i + 1:])


def record_path(out: Path, split: str, index: int) -> Path:
    return out / split / "audio" / f"{index:0{ID_DIGITS}d}.json"


def make_item(config: SynthConfig, out: Path, split: str, index: int) -> dict[str, Any]:
    """Render item (split, index), write its FLAC(s) then its record (all atomically); return the record."""
    task = item_task(config, index)
    draw = item_draw(config, split, index, task)
    item = TASKS[task].make(draw)
    base = record_path(out, split, index).with_suffix("")
    paths = [base.with_suffix(".flac")] + [base.with_name(f"{base.name}_{k}.flac")
                                           for k in range(1, 1 + len(item.extra_audios))]
    for path, audio in zip(paths, (item.audio, *item.extra_audios)):
        atomic_write(path, flac_bytes(audio))
    fields = {k: v for k, v in item.fields.items() if k != "params"}
    if item.instruction is not None:
        instruction = item.instruction
    else:
        instruction = "" if item.voice_chat else draw_instruction(item.kind, fields, draw.py)
    audios = [path.relative_to(out / split).as_posix() for path in paths]
    record = {"id": f"{split}-{index:0{ID_DIGITS}d}", "split": split, "task": task, "kind": item.kind,
              "audio": audios[0], "seconds": sum(len(a) for a in (item.audio, *item.extra_audios)) / SAMPLE_RATE,
              "answer": item.answer, "labels": list(item.labels), "fields": fields, "voice": item.voice,
              "instruction": instruction, "rejected": rejected_answer(item, draw.py),
              "params": item.fields.get("params")}
    if item.extra_audios:
        record["audios"] = audios
    if item.turns:
        record["turns"] = [list(turn) for turn in item.turns]
    if item.answer_parts:
        record["answer_parts"] = [list(part) for part in item.answer_parts]
    if item.decoys:
        record["decoys"] = [[list(part) for part in decoy] for decoy in item.decoys]
    if item.pretrain:
        record["pretrain"] = list(item.pretrain)
    if item.sft_answer:
        record["sft_answer"] = item.sft_answer
    atomic_write_json(record_path(out, split, index), record)
    return record


def _make(args) -> dict[str, Any]:
    return make_item(*args)


# -- the corpus -------------------------------------------------------------------------------------------------------
def _check_settings(config: SynthConfig, out: Path) -> None:
    path = out / "synth.json"
    if path.exists():
        old = json.loads(path.read_text(encoding="utf-8"))
        if old != config.settings():
            changed = ", ".join(k for k in config.settings() if old.get(k) != config.settings()[k])
            raise ValueError(f"{out} holds a corpus made with other settings ({changed}); use another --out")
    else:
        atomic_write_json(path, config.settings())


def _remove_partial(out: Path) -> None:
    """Temporary files a killed run left behind (atomic_write's `.NAME.XXXX.tmp`)."""
    for split in SPLITS:
        for tmp in (out / split / "audio").glob(".*.tmp"):
            tmp.unlink(missing_ok=True)


def pending_items(config: SynthConfig, out: Path) -> list[tuple[str, int]]:
    return [(split, i) for split, n in config.counts().items() for i in range(n)
            if not record_path(out, split, i).exists()]


def generate(config: SynthConfig, out: Path, workers: int = 1, progress: bool = False) -> dict[str, Any]:
    """Make every missing item (in `workers` processes), then the manifests and dataset_info; returns the info."""
    out = Path(out)
    for split in SPLITS:
        (out / split / "audio").mkdir(parents=True, exist_ok=True)
    _check_settings(config, out)
    _remove_partial(out)
    todo = pending_items(config, out)
    jobs = [(config, out, split, i) for split, i in todo]
    from tqdm import tqdm

    with tqdm(total=len(jobs), unit="clip", disable=not progress, desc="synth") as bar:
        if workers <= 1 or len(jobs) < 2:
            for job in jobs:
                _make(job)
                bar.update()
        else:
            with multiprocessing.get_context("fork").Pool(workers) as pool:
                for _ in pool.imap_unordered(_make, jobs, chunksize=4):
                    bar.update()
    return write_manifests(config, out)


def read_records(config: SynthConfig, out: Path, split: str) -> Iterator[dict[str, Any]]:
    for i in range(config.counts()[split]):
        yield json.loads(record_path(out, split, i).read_text(encoding="utf-8"))


def _jsonl(rows: list[dict]) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode()


def record_audios(record: dict[str, Any]) -> list[str]:
    return record.get("audios") or [record["audio"]]


def conversation(record: dict[str, Any]) -> list[dict[str, str]]:
    """The chat up to the last user turn: the audio tags open the first user turn, earlier turns come first."""
    tags = AUDIO_TAG * len(record_audios(record))
    users = [turn[0] for turn in record.get("turns", [])] + [record["instruction"]]
    answers = [turn[1] for turn in record.get("turns", [])]
    messages = []
    for i, text in enumerate(users):
        messages.append({"role": "user", "content": (tags if i == 0 else "") + text})
        if i < len(answers):
            messages.append({"role": "assistant", "content": answers[i]})
    return messages


def answer_content(parts: list[list]) -> list[dict[str, Any]]:
    """(text, trained on) parts -> an assistant turn's text parts, those out of the loss marked "loss": false."""
    return [{"type": "text", "text": text, **({} if trained else {"loss": False})} for text, trained in parts]


def manifest_rows(record: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """The pretrain, sft and dpo rows of one record (audio paths relative to the split's folder); a multi-audio
    item has no pretrain row (a task row holds one audio)."""
    messages, audios = conversation(record), record_audios(record)
    answers = [answer_content(record["answer_parts"]) if "answer_parts" in record
               else record.get("sft_answer", record["answer"]),
               *(answer_content(decoy) for decoy in record.get("decoys", ()))]
    rows = {
        "sft": [{"messages": [*messages, {"role": "assistant", "content": answer}], "audios": audios}
                for answer in answers],
        "dpo": [{"messages": messages, "audios": audios, "chosen": record["answer"], "rejected": record["rejected"]}],
    }
    if len(audios) == 1:
        task, text = record.get("pretrain") or (record["kind"], record["answer"])
        rows["pretrain"] = [{"audio": record["audio"], "task": task, "text": text, **record["fields"],
                             "source": f"synth_{record['task']}", "id": record["id"]}]
    return rows


def text_rows(config: SynthConfig) -> list[dict[str, Any]]:
    """The text-only rows the chosen families need (train/text.jsonl), seeded by the corpus' seed."""
    rng = random.Random(f"{config.seed}:text")
    return [row for task in config.tasks if TASKS[task].text_rows for row in TASKS[task].text_rows(rng)]


def eval_metric(record: dict[str, Any], language: str | None) -> str:
    """How a test item is scored: error rates for transcripts, BLEU for translations and captions, label accuracy
    for closed answers, normalised exact match for the spoken questions' one-sentence answers."""
    if record["kind"] == "asr" and not record["labels"]:
        return "cer" if language in CHARACTER_LANGUAGES else "wer"
    if record["kind"] in ("s2tt", "caption"):
        return "bleu"
    return "accuracy" if record["labels"] else "exact"


def eval_row(record: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The scorable row of a test item (schema in the README; `qwen2audio eval --benchmark synth` reads it). ASR rows
    keep the official {audio, source, prompt, gt} form that `--benchmark asr` reads too."""
    spoken = record["fields"].get("language")
    language = EVAL_LANGUAGES.get(spoken, spoken) if spoken else None
    target = record["fields"].get("target_language")
    audios = [f"../test/{a}" for a in record_audios(record)]
    single_asr = record["kind"] == "asr" and not record.get("turns")
    if single_asr:
        source, prompt = f"synth_{record['task']}_{language}", base_prompt("asr", language)
        if (record.get("voice") or "").startswith(f"{FLITE}:"):  # the engine held out of training: scored apart
            source += f"_{FLITE}"
    elif record["kind"] == "s2tt":
        source, prompt = f"synth_{record['task']}_{target}", base_prompt("translate", language, target)
    else:
        source, prompt = f"synth_{record['task']}", AUDIO_PLACEHOLDER * len(audios) + record["instruction"]
        if record.get("turns"):  # a dialog's last question decides its metric: one source per kind (and language)
            source += f"_{record['kind']}" + (f"_{language}" if record["kind"] == "asr" else "")
    row = {"id": record["id"], "audio": audios[0], "source": source, "task": record["task"], "kind": record["kind"],
           "prompt": prompt, "instruction": record["instruction"], "gt": record["answer"],
           "labels": list(record["labels"]), "metric": eval_metric(record, language), "language": language,
           "voice": record.get("voice")}
    if target:
        row["target"] = target
    if len(audios) > 1:
        row["audios"] = audios
    if record.get("turns") or len(audios) > 1:
        row["messages"] = conversation(record)
    return source, row


def write_manifests(config: SynthConfig, out: Path) -> dict[str, Any]:
    info: dict[str, Any] = {"settings": config.settings(), "sample_rate": SAMPLE_RATE, "splits": {}}
    evals: dict[str, list] = defaultdict(list)
    for split in SPLITS:
        rows: dict[str, list] = defaultdict(list)
        tasks: dict[str, dict] = {}
        voices: Counter = Counter()
        seconds = 0.0
        for record in read_records(config, out, split):
            for kind, kind_rows in manifest_rows(record).items():
                rows[kind] += kind_rows
            if split == "test":
                source, row = eval_row(record)
                evals[source].append(row)
            t = tasks.setdefault(record["task"], {"clips": 0, "seconds": 0.0, "labels": record["labels"],
                                                  "answers": Counter()})
            t["clips"] += 1
            t["seconds"] += record["seconds"]
            t["answers"][record["answer"]] += 1
            seconds += record["seconds"]
            if record["voice"]:
                voices[record["voice"]] += 1
        for kind in ("pretrain", "sft", "dpo"):
            atomic_write(out / split / f"{kind}.jsonl", _jsonl(rows[kind]))
        text = text_rows(config) if split == "train" else []
        if text:
            atomic_write(out / split / "text.jsonl", _jsonl(text))
        info["splits"][split] = {
            "clips": config.counts()[split], "hours": round(seconds / 3600, 4), "voices": dict(sorted(voices.items())),
            "tasks": {name: {"clips": t["clips"], "hours": round(t["seconds"] / 3600, 4),
                             "labels": t["labels"] or None,
                             "answers": dict(sorted(t["answers"].items())) if t["labels"] else len(t["answers"])}
                      for name, t in sorted(tasks.items())}}
    if evals:
        (out / "eval").mkdir(exist_ok=True)
        for source, rows_ in sorted(evals.items()):
            atomic_write(out / "eval" / f"{source}.jsonl", _jsonl(rows_))
    atomic_write_json(out / "dataset_info.json", info)
    return info


def default_workers() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
