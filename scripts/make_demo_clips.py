"""The clips `make demo` plays to the demo model, taken from the synthetic corpus' test split (voices, sentences
and questions never heard in training): one example per kind below, the first in the split's order that the model
answers exactly right — a showcase, said as such in clips.json; the scores over the whole split are in the model card.

    python scripts/make_demo_clips.py [--corpus runs/demo/corpus] [--model qwen2audio/assets/demo-model]
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import qwen2audio
from qwen2audio.api import DEMO_CLIPS_DIR as OUT
from qwen2audio.api import DEMO_MODEL_DIR
from qwen2audio.eval.normalize import label_key
from qwen2audio.files import atomic_write_json

ROOT = Path(__file__).resolve().parents[1]
# (title, task, mode, a test on the record) in the order the demo plays them
EXAMPLES = [
    ("English transcription", "asr", "audio analysis", lambda r: True),
    ("speech translation", "s2tt", "audio analysis", lambda r: True),
    ("language identification", "lid", "audio analysis", lambda r: True),
    ("sound classification", "sound", "audio analysis", lambda r: True),
    ("counting", "count", "audio analysis", lambda r: True),
    ("a spoken question", "voice_chat", "voice chat", lambda r: "background" not in r["fields"]),
    ("a question spoken over background noise", "facts", "voice chat", lambda r: "background" in r["fields"]),
    ("a two-turn conversation", "dialog", "audio analysis", lambda r: True),
]
TRIES = 60  # records looked at per example before giving up


def turns_of(record: dict) -> list[dict]:
    """The user turns of a record with their references: earlier turns of a dialog, then the last one."""
    earlier = [{"text": q, "reference": a} for q, a in record.get("turns", [])]
    last = {"text": record["instruction"] or None, "reference": record["answer"]}
    if not record["instruction"]:
        last["spoken"] = record["fields"].get("spoken", "")
    return earlier + [last]


def answers(model, audios: list[Path], turns: list[dict]) -> list[str]:
    messages, out = [], []
    for i, turn in enumerate(turns):
        parts = [{"type": "audio", "audio": str(a)} for a in (audios if i == 0 else [])]
        if turn["text"]:
            parts.append({"type": "text", "text": turn["text"]})
        messages.append({"role": "user", "content": parts})
        out.append(model.chat(messages, max_new_tokens=64))
        messages.append({"role": "assistant", "content": out[-1]})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=ROOT / "runs" / "demo" / "corpus")
    parser.add_argument("--model", type=Path, default=DEMO_MODEL_DIR)
    args = parser.parse_args()
    model = qwen2audio.load(args.model)
    records = [json.loads(p.read_text()) for p in sorted((args.corpus / "test" / "audio").glob("*.json"))]
    shutil.rmtree(OUT, ignore_errors=True)
    OUT.mkdir(parents=True)
    chosen = []
    for title, task, mode, wanted in EXAMPLES:
        candidates = [r for r in records if r["task"] == task and wanted(r)][:TRIES]
        if not candidates:
            raise SystemExit(f"the corpus' test split has no {task} item for {title!r}")
        for record in candidates:
            audios = [args.corpus / "test" / a for a in record.get("audios", [record["audio"]])]
            turns = turns_of(record)
            if all(label_key(a) == label_key(t["reference"]) for a, t in zip(answers(model, audios, turns), turns)):
                break
        else:
            record = candidates[0]  # none right: show the first, wrong answer and all
            audios = [args.corpus / "test" / a for a in record.get("audios", [record["audio"]])]
            turns = turns_of(record)
            print(f"note: no {task} item among the first {len(candidates)} is answered right; showing the first")
        names = []
        for audio in audios:
            name = f"{len(chosen) + 1:02d}-{task}{audio.stem[7:]}.flac"
            shutil.copy(audio, OUT / name)
            names.append(name)
        chosen.append({"title": title, "mode": mode, "audios": names, "turns": turns, "id": record["id"],
                       "voice": record.get("voice")})
        print(f"{title}: {record['id']} {names}")
    atomic_write_json(OUT / "clips.json", chosen)
    size = sum(f.stat().st_size for f in OUT.iterdir())
    print(f"wrote {OUT} ({size / 1e3:.0f} KB)")


if __name__ == "__main__":
    main()
