"""Evaluation sets as data: a `Benchmark` preset names its layout (how the files its users download are read), its
task (which official prompt), its metric and the report's published numbers. Loaders turn a data path into
`EvalItem`s; the same preset also reads the official `{audio, source, prompt, gt}` JSONL manifests and the
Hugging Face `datasets` parquet exports, chosen by what the path is. The synthetic corpus' test split
(`qwen2audio synth` → `CORPUS/eval/`) is a preset too: each of its rows names its own metric."""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterator

from ..data.rows import AUDIO_TAG, Chat, parse_row
from ..processor import audios_in_conversation
from ..tokenizer import AUDIO_PLACEHOLDER, AUDIO_TOKEN, base_prompt
from .metrics import ROW_METRICS

MELD_LABELS = ("neutral", "joy", "sadness", "anger", "surprise", "fear", "disgust")
VOCALSOUND_LABELS = ("Laughter", "Sigh", "Cough", "Throat clearing", "Sneeze", "Sniff")
# file-name label → the label the model answers (VocalSound file names: f0003_0_cough.wav)
VOCALSOUND_FILE_LABELS = {"laughter": "Laughter", "sigh": "Sigh", "cough": "Cough",
                          "throatclearing": "Throat clearing", "sneeze": "Sneeze", "sniff": "Sniff"}
# Common Voice locales → the report's language codes
CV_LOCALES = {"zh-CN": "zh", "zh-HK": "yue", "yue": "yue", "en": "en", "fr": "fr", "de": "de", "es": "es",
              "it": "it", "ja": "ja"}


@dataclass(frozen=True)
class EvalItem:
    """One utterance: `audio` is a path, file bytes or a 16 kHz array; `prompt` is the full base-model prompt
    (`<|audio_bos|><|AUDIO|><|audio_eos|>` + task text, one placeholder per audio). The chat form of the item is
    `conversation()`: its own `messages` where it has them, else one user turn holding its audio(s) and `text`."""

    id: str
    audio: Any
    source: str
    prompt: str
    gt: str
    language: str | None = None
    target: str | None = None
    text: str | None = None  # the text of a chat turn after the audio (API requests; None: the prompt's task text)
    extra: dict = field(default_factory=dict)  # what a metric needs besides gt (AIR-Bench: question, choices ...)
    # the conversation up to the last user turn, audio parts {"type": "audio", "audio": source} in place (multi-turn,
    # several audios); None: built by conversation(). Items that have one follow the model's prompt style.
    messages: list[dict] | None = None
    audios: tuple = ()  # every audio in prompt order when there are several (`audio` is then the first)

    def all_audios(self) -> list:
        return list(self.audios) or [self.audio]

    def conversation(self) -> list[dict]:
        """The item as a chat: its `messages`, else one user turn with its audio part(s) and then its text (the
        prompt's task text when `text` is None; no text part when that is empty: voice chat)."""
        if self.messages is not None:
            return self.messages
        text = self.text if self.text is not None else self.prompt.replace(AUDIO_PLACEHOLDER, "")
        parts = [{"type": "audio", "audio": a} for a in self.all_audios()]
        return [{"role": "user", "content": parts + ([{"type": "text", "text": text}] if text else [])}]


@dataclass(frozen=True)
class Benchmark:
    """A preset. layout: the loader of the users' download; task: the official base prompt (`base_prompt`);
    metric: a name in `metrics.METRICS`; language/target: of the speech and of the answer; labels: the label set of
    a classification task; columns: the text column(s) of the Hugging Face parquet export, first found wins;
    published: the report's numbers per source (paper, and after the HF conversion where it gives both)."""

    name: str
    layout: str
    task: str
    metric: str
    language: str | None = "en"
    target: str = "en"
    labels: tuple[str, ...] = ()
    columns: tuple[str, ...] = ("text", "sentence", "transcription", "raw_transcription")
    source: str = ""  # the source name when the layout does not give one
    published: dict[str, Any] = field(default_factory=dict)

    def prompt(self, language: str | None = None, target: str | None = None) -> str:
        if self.task == "chat":
            raise ValueError(f"{self.name}: chat items carry their own prompt")
        return base_prompt(self.task, language or self.language, target or self.target)


PRESETS: dict[str, Benchmark] = {b.name: b for b in [
    Benchmark("librispeech", "librispeech", "asr", "wer", published={
        "librispeech_dev_clean": (1.3, 1.7), "librispeech_dev_other": (3.4, 3.6),
        "librispeech_test_clean": (1.6, 1.7), "librispeech_test_other": (3.6, 4.0)}),
    Benchmark("aishell2", "aishell2", "asr", "wer", language="zh", source="aishell2",
              published={"aishell2_mic": 3.0, "aishell2_ios": 3.0, "aishell2_android": 2.9}),
    Benchmark("commonvoice", "commonvoice", "asr", "wer", language=None,
              published={"cv15_en": 8.6, "cv15_zh": 6.9, "cv15_yue": 5.9, "cv15_fr": 9.6}),
    Benchmark("fleurs", "fleurs", "asr", "wer", language="zh", source="fleurs_zh",
              columns=("raw_transcription", "transcription"), published={"fleurs_zh": (7.5, 7.0)}),
    Benchmark("covost2", "covost2", "translate", "bleu", language=None, columns=("translation",), published={
        "covost2_en_de": 29.9, "covost2_de_en": 35.2, "covost2_en_zh": 45.2, "covost2_zh_en": 24.4,
        "covost2_es_en": 40.0, "covost2_fr_en": 38.5, "covost2_it_en": 36.3}),
    Benchmark("meld", "meld", "emotion", "accuracy", labels=MELD_LABELS, source="meld",
              columns=("Emotion", "emotion", "label"), published={"meld": 0.553}),
    Benchmark("vocalsound", "vocalsound", "vocal_sound", "accuracy", labels=VOCALSOUND_LABELS,
              source="vocalsound", columns=("label", "answer"), published={"vocalsound": 0.9392}),
    # any official-form JSONL manifest (e.g. the project's own synthetic test splits); rows may add
    # "language" / "target", else the language comes from the source name
    Benchmark("asr", "manifest", "asr", "wer", language=None),
    Benchmark("s2tt", "manifest", "translate", "bleu", language=None),
    Benchmark("airbench_chat", "airbench_chat", "chat", "judge", published={
        "speech": 7.18, "sound": 6.99, "music": 6.79, "mixed": 6.77, "average": 6.93}),
    Benchmark("airbench_foundation", "airbench_foundation", "chat", "choice"),
    # the synthetic corpus' test split: CORPUS/eval/*.jsonl, each row naming its metric (metrics.ROW_METRICS),
    # scored per source and per task; items carry their chat form, so they follow the model's prompt style
    Benchmark("synth", "synth", "synth", "row", language=None),
    # preference pairs (CORPUS/test/dpo.jsonl): log-probabilities of chosen vs rejected, and the greedy answers
    # (eval/preference.py; a local model only)
    Benchmark("preference", "preference", "dpo", "preference", language=None),
]}
# The report's language of each official ASR / S2TT source, for manifests whose items carry no language.
SOURCE_LANGUAGE = [(r"librispeech|_en$|^cv15_en", "en"), (r"aishell|fleurs_zh|cv15_zh|wenetspeech", "zh"),
                   (r"yue", "yue"), (r"_fr$", "fr")]


def get_benchmark(name: str) -> Benchmark:
    if name not in PRESETS:
        raise ValueError(f"unknown benchmark {name!r}; available: {', '.join(PRESETS)}")
    return PRESETS[name]


# -- loaders of the users' downloads -----------------------------------------------------------------------------
def _item(b: Benchmark, id: str, audio, source: str, gt: str, language=None, target=None) -> EvalItem:
    language, target = language or b.language, target or b.target
    return EvalItem(id, audio, source, b.prompt(language, target), gt, language, target)


def load_librispeech(b: Benchmark, root: Path) -> Iterator[EvalItem]:
    """LibriSpeech/{split}/{speaker}/{chapter}/{speaker}-{chapter}.trans.txt + {utterance}.flac."""
    for trans in sorted(root.rglob("*.trans.txt")):
        split = trans.parents[2].name.replace("-", "_")
        for line in trans.read_text(encoding="utf-8").splitlines():
            if line.strip():
                utt, text = line.split(" ", 1)
                yield _item(b, utt, trans.parent / f"{utt}.flac", f"librispeech_{split}", text)


def _two_columns(path: Path) -> dict[str, str]:
    rows = (line.split(maxsplit=1) for line in path.read_text(encoding="utf-8").splitlines() if line.strip())
    return {row[0]: row[1] if len(row) > 1 else "" for row in rows}


def load_aishell2(b: Benchmark, root: Path) -> Iterator[EvalItem]:
    """AISHELL-2 test sets: {device}/test/wav.scp ("ID relative/path.wav") + trans.txt ("ID text"); the device
    folder (iOS, Android, Mic) names the source."""
    scps = sorted(root.rglob("wav.scp"))
    tests = [s for s in scps if any(p.name.lower() == "test" for p in s.relative_to(root).parents)]
    for scp in tests or scps:  # the test sets when dev sets lie beside them
        texts = _two_columns(scp.with_name("trans.txt"))
        device = next((p.name.lower() for p in scp.parents if p.name.lower() in ("ios", "android", "mic")), "")
        source = f"{b.source}_{device}" if device else b.source
        for utt, wav in _two_columns(scp).items():
            yield _item(b, utt, scp.parent / wav, source, texts[utt])


def _tsv(path: Path, fieldnames=None) -> list[dict]:
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f, fieldnames=fieldnames, delimiter="\t", quoting=csv.QUOTE_NONE))


def load_commonvoice(b: Benchmark, root: Path) -> Iterator[EvalItem]:
    """Common Voice: {locale}/test.tsv (path, sentence, ...) + {locale}/clips/*.mp3; the locale folder gives the
    language (zh-CN → zh, zh-HK → yue)."""
    tsvs = [root] if root.is_file() else sorted(root.rglob("test.tsv"))
    for tsv in tsvs:
        locale = tsv.parent.name
        language = b.language or CV_LOCALES.get(locale, locale)
        for row in _tsv(tsv):
            yield _item(b, Path(row["path"]).stem, tsv.parent / "clips" / row["path"], f"cv15_{language}",
                        row["sentence"], language)


FLEURS_COLUMNS = ["id", "file_name", "raw_transcription", "transcription", "words", "num_samples", "gender"]


def load_fleurs(b: Benchmark, root: Path) -> Iterator[EvalItem]:
    """FLEURS: {lang}/test.tsv (no header: id, file name, raw transcription, ...) + {lang}/audio/test/*.wav."""
    for tsv in sorted(root.rglob("test.tsv")):
        for row in _tsv(tsv, FLEURS_COLUMNS):
            audio = tsv.parent / "audio" / "test" / row["file_name"]
            yield _item(b, Path(row["file_name"]).stem, audio, b.source, row["raw_transcription"])


def load_covost2(b: Benchmark, root: Path) -> Iterator[EvalItem]:
    """CoVoST 2: covost_v2.{src}_{tgt}.test.tsv (path, sentence, translation, client_id) beside the Common Voice
    `clips/` folder of the source language."""
    for tsv in sorted(root.rglob("covost_v2.*.test.tsv")):
        src, tgt = re.match(r"covost_v2\.(\w+?)_(\w+?)\.test\.tsv", tsv.name).groups()
        src, tgt = src.split("-")[0], tgt.split("-")[0]  # zh-CN → zh
        for row in _tsv(tsv):
            yield _item(b, Path(row["path"]).stem, tsv.parent / "clips" / row["path"], f"covost2_{src}_{tgt}",
                        row["translation"], src, tgt)


def load_meld(b: Benchmark, root: Path) -> Iterator[EvalItem]:
    """MELD: test_sent_emo.csv (Utterance, Emotion, Dialogue_ID, Utterance_ID, ...) + the test media folder
    (output_repeated_splits_test/dia{D}_utt{U}.mp4); the audio track is decoded by ffmpeg (`load_audio`)."""
    for table in sorted(root.rglob("test_sent_emo.csv")):
        media = next((p for p in table.parent.rglob("*") if p.is_dir() and "test" in p.name), table.parent)
        with open(table, encoding="utf-8", newline="") as f:
            for row in csv.DictReader(f):
                name = f"dia{row['Dialogue_ID']}_utt{row['Utterance_ID']}"
                yield _item(b, name, media / f"{name}.mp4", b.source, row["Emotion"])


def load_vocalsound(b: Benchmark, root: Path) -> Iterator[EvalItem]:
    """VocalSound: audio_16k/{speaker}_{n}_{label}.wav; the label is the last part of the file name."""
    for wav in sorted(root.rglob("*.wav")):
        label = wav.stem.rsplit("_", 1)[-1].lower()
        if label in VOCALSOUND_FILE_LABELS:
            yield _item(b, wav.stem, wav, b.source, VOCALSOUND_FILE_LABELS[label])


# -- the synthetic corpus (qwen2audio synth) ---------------------------------------------------------------------------
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


def _first_per_source(items: Iterator[EvalItem], limit: int) -> Iterator[EvalItem]:
    seen: dict[str, int] = {}
    for item in items:
        seen[item.source] = seen.get(item.source, 0) + 1
        if seen[item.source] <= limit:
            yield item


def _airbench_loaders():
    from .airbench import load_chat, load_foundation

    return {"airbench_chat": load_chat, "airbench_foundation": load_foundation,
            "manifest": lambda b, root: (i for m in sorted(root.rglob("*.jsonl")) for i in load_manifest(b, m))}


LOADERS: dict[str, Callable[[Benchmark, Path], Iterator[EvalItem]]] = {
    "librispeech": load_librispeech, "aishell2": load_aishell2, "commonvoice": load_commonvoice,
    "fleurs": load_fleurs, "covost2": load_covost2, "meld": load_meld, "vocalsound": load_vocalsound,
    "synth": load_synth}
OWN_JSONL = ("synth",)  # layouts whose loader reads .jsonl files itself (not as official manifests)
PER_SOURCE_LIMIT = ("synth",)  # layouts where --limit N means the first N items of each source


# -- the official manifests and the Hugging Face exports -------------------------------------------------------------
def source_language(source: str) -> str | None:
    return next((language for pattern, language in SOURCE_LANGUAGE if re.search(pattern, source)), None)


def load_manifest(b: Benchmark, path: Path) -> Iterator[EvalItem]:
    """Official eval_audio JSONL: one `{"audio", "source", "prompt", "gt"}` per line; `prompt` is the text after
    the audio placeholder; relative audio paths resolve against the manifest's folder."""
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        row = json.loads(line)
        audio = Path(row["audio"])
        audio = audio if audio.is_absolute() else path.parent / audio
        source = row.get("source", b.source or b.name)
        language = row.get("language") or b.language or source_language(source)
        prompt = row["prompt"] if row["prompt"].startswith(AUDIO_PLACEHOLDER) else AUDIO_PLACEHOLDER + row["prompt"]
        yield EvalItem(str(row.get("id", f"{path.stem}:{n}")), audio, source, prompt, row["gt"], language,
                       row.get("target") or b.target)


def load_parquet(b: Benchmark, path: Path) -> Iterator[EvalItem]:
    """Hugging Face `datasets` parquet exports: an `audio` column of {bytes, path} structs and the text column of
    the set (`Benchmark.columns`); read with pyarrow, no hub access."""
    try:
        import pyarrow.parquet as pq
    except ImportError as e:  # pragma: no cover - the eval extra brings it
        raise ImportError("reading parquet exports needs pyarrow: pip install pyarrow (or qwen2audio[eval])") from e
    files = [path] if path.is_file() else sorted(path.rglob("*.parquet"))
    for file in files:
        table = pq.read_table(file)
        names = table.column_names
        text = next((c for c in b.columns if c in names), None)
        if text is None or "audio" not in names:
            raise ValueError(f"{file}: needs an 'audio' column and one of {', '.join(b.columns)}; has {names}")
        source = b.source or f"{b.name}_{file.stem.split('-')[0]}"
        for n, row in enumerate(table.to_pylist()):
            audio = row["audio"]
            data = audio.get("bytes") if isinstance(audio, dict) else audio
            gt = row[text]
            if b.labels and isinstance(gt, int):  # a ClassLabel column stores the index
                gt = b.labels[gt]
            item_id = str(row.get("id") or (audio.get("path") if isinstance(audio, dict) else None) or f"{file.stem}:{n}")
            yield _item(b, item_id, bytes(data), source, str(gt))


def load_items(benchmark: Benchmark | str, data: str | Path, limit: int | None = None) -> list[EvalItem]:
    """The items of `benchmark` under `data`: a `.jsonl` manifest, parquet file(s), or the download's folder.
    limit: the first N items (of each source for the synthetic corpus)."""
    b = get_benchmark(benchmark) if isinstance(benchmark, str) else benchmark
    path = Path(data)
    if not path.exists():
        raise FileNotFoundError(f"{b.name}: no data at {path}")
    if path.suffix == ".jsonl" and b.layout not in OWN_JSONL:
        items = load_manifest(b, path)
    elif path.suffix == ".parquet" or (path.is_dir() and next(path.rglob("*.parquet"), None)):
        items = load_parquet(b, path)
    else:
        items = {**LOADERS, **_airbench_loaders()}[b.layout](b, path)
    if limit is not None and b.layout in PER_SOURCE_LIMIT:
        items, limit = _first_per_source(items, limit), None
    out = []
    for item in items:
        if limit is not None and len(out) >= limit:
            break
        out.append(item)
    if not out:
        raise ValueError(f"{b.name}: found no items under {path} (expected the {b.layout} layout, a .jsonl "
                         f"manifest or parquet files)")
    ids = [i.id for i in out]
    if len(set(ids)) != len(ids):  # ids key the resumable predictions file
        out = [replace(i, id=f"{i.source}/{i.id}") for i in out]
    return out
