"""`make demo`: the embedded demo model answers a handful of bundled clips in both interaction modes of the report.

The clips (qwen2audio/assets/demo-clips/, made by `qwen2audio synth` from its test split: voices, sentences and
questions the model never heard in training) come with their questions and references in clips.json. Each is put
to the model through `model.chat`, exactly as a user would, and the answer is printed beside the reference.
"""

from __future__ import annotations

import json

import qwen2audio
from qwen2audio.api import DEMO_CLIPS_DIR as CLIPS
from qwen2audio.api import default_model_path
from qwen2audio.eval.normalize import label_key
from qwen2audio.machine import Stopwatch


def user_turn(audio_files: list[str], text: str | None) -> dict:
    parts = [{"type": "audio", "audio": str(CLIPS / f)} for f in audio_files]
    return {"role": "user", "content": parts + ([{"type": "text", "text": text}] if text else [])}


def main() -> None:
    watch = Stopwatch()
    path = default_model_path()
    model = qwen2audio.load(path)
    print(f"the embedded demo model: {path} ({model.num_parameters() / 1e6:.1f} M parameters)\n")
    examples = json.loads((CLIPS / "clips.json").read_text(encoding="utf-8"))
    right = 0
    turns = 0
    for example in examples:
        print(f"-- {example['title']} ({example['mode']})")
        messages: list[dict] = []
        for i, turn in enumerate(example["turns"]):
            messages.append(user_turn(example["audios"] if i == 0 else [], turn.get("text")))
            answer = model.chat(messages, max_new_tokens=64)
            messages.append({"role": "assistant", "content": answer})
            question = turn.get("text") or f"(spoken) {turn['spoken']}"
            ok = label_key(answer) == label_key(turn["reference"])
            right += ok
            turns += 1
            print(f"   audio     {', '.join(example['audios']) if i == 0 else '(the same conversation)'}")
            print(f"   question  {question}")
            print(f"   answer    {answer}")
            print(f"   reference {turn['reference']}{'   (exact)' if ok else ''}")
        print()
    print(f"{right} of {turns} answers equal their reference exactly; {watch.seconds():.1f} s in all.")
    print("These clips are a showcase: for each kind, the first test item the model answers right (by voices and "
          "sentences it never heard). Its scores over the whole test split, and what it cannot do, are on its model "
          "card:\n  qwen2audio/assets/demo-model/README.md\n")
    print("Next:\n"
          "  .venv/bin/qwen2audio chat                        talk to it (type /help; /audio FILE adds a recording)\n"
          "  .venv/bin/qwen2audio run --audio FILE \"question\"  one answer\n"
          "  .venv/bin/qwen2audio serve                       an OpenAI-compatible server and a web page on "
          "http://127.0.0.1:8000\n"
          "  --model DIR                                      the same commands on real Qwen2-Audio-7B(-Instruct) "
          "weights (Hugging Face layout)")


if __name__ == "__main__":
    main()
