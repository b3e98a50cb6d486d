"""Evaluation sets as data: a `Benchmark` preset names its layout (how the files its users download are read), its
task (which official prompt), its metric and the report's published numbers. `LOADERS` maps each layout to the
function that turns a data path into `EvalItem`s (AIR-Bench's live in `airbench`, the synthetic corpus' in
`synthetic`); the same preset also reads the official `{audio, source, prompt, gt}` JSONL manifests and the
Hugging Face `datasets` parquet exports, chosen by what the path is. The synthetic corpus' test split
(`qwen2audio synth` → `CORPUS/eval/`) is a preset too: each of its rows names its own metric."""

from __future__ import annotations

import csv
import json
import re
from dataclasses import replace
from pathlib import Path
from typing import Callable, Iterable, Iterator

from ..tokenizer import AUDIO_PLACEHOLDER
from .airbench import load_chat, load_foundation
from .benchmark import Benchmark, EvalItem, source_language
from .synthetic import load_synth

MELD_LABELS = ("neutral", "joy", "sadness", "anger", "surprise", "fear", "disgust")
VOCALSOUND_LABELS = ("Laughter", "Sigh", "Cough", "Throat clearing", "Sneeze", "Sniff")
# file-name label → the label the model answers (VocalSound file names: f0003_0_cough.wav)
VOCALSOUND_FILE_LABELS = {"laughter": "Laughter", "sigh": "Sigh", "cough": "Cough",
                          "throatclearing": "Throat clearing", "sneeze": "Sneeze", "sniff": "Sniff"}
# Common Voice locales → the report's language codes
CV_LOCALES = {"zh-CN": "zh", "zh-HK": "yue", "yue": "yue", "en": "en", "fr": "fr", "de": "de", "es": "es",
              "it": "it", "ja": "ja"}


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


# -- the official manifests and the Hugging Face exports -------------------------------------------------------------
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


def load_manifests(b: Benchmark, root: Path) -> Iterator[EvalItem]:
    """Every official JSONL manifest under a folder (the `manifest` layout of the `asr` and `s2tt` presets)."""
    for path in sorted(root.rglob("*.jsonl")):
        yield from load_manifest(b, path)


# A preset's layout names its loader: (preset, the data path) -> items.
LOADERS: dict[str, Callable[[Benchmark, Path], Iterable[EvalItem]]] = {
    "librispeech": load_librispeech, "aishell2": load_aishell2, "commonvoice": load_commonvoice,
    "fleurs": load_fleurs, "covost2": load_covost2, "meld": load_meld, "vocalsound": load_vocalsound,
    "manifest": load_manifests, "airbench_chat": load_chat, "airbench_foundation": load_foundation,
    "synth": load_synth}
OWN_JSONL = ("synth",)  # layouts whose loader reads .jsonl files itself (not as official manifests)
PER_SOURCE_LIMIT = ("synth",)  # layouts where --limit N means the first N items of each source


def _first_per_source(items: Iterable[EvalItem], limit: int) -> Iterator[EvalItem]:
    seen: dict[str, int] = {}
    for item in items:
        seen[item.source] = seen.get(item.source, 0) + 1
        if seen[item.source] <= limit:
            yield item


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
        items = LOADERS[b.layout](b, path)
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
