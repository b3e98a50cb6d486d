"""The embedded demo model (qwen2audio/assets/demo-model, made by `make demo-model`): what the package ships works
as shipped — it is small, transformers loads it (trimmed tokenizer and all) with greedy output equal to ours, the
commands default to it, and it answers the bundled demo clips as clips.json records."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

import qwen2audio
from qwen2audio.audio import SAMPLE_RATE
from qwen2audio.api import DEMO_CLIPS_DIR, DEMO_MODEL_DIR, default_model_path

CLIPS = DEMO_CLIPS_DIR
MAX_BYTES = 50 * 10**6  # the size budget for the committed model


@pytest.fixture(scope="module")
def demo():
    return qwen2audio.load(default_model_path())


@pytest.fixture(scope="module")
def examples():
    return json.loads((CLIPS / "clips.json").read_text(encoding="utf-8"))


def test_the_shipped_model_is_small_and_built_from_tiny_en(demo):
    size = sum(f.stat().st_size for f in DEMO_MODEL_DIR.iterdir())
    assert size <= MAX_BYTES, f"{size / 1e6:.1f} MB"
    audio = demo.config.audio
    assert (audio.n_mels, audio.dim, audio.n_layers, audio.n_heads) == (80, 384, 4, 6)  # Whisper tiny.en
    assert demo.dtype == torch.bfloat16
    vocab = demo.config.text.vocab_size
    assert vocab < 20_000 and len(demo.processor.tokenizer) <= vocab  # trimmed
    # special ids come from the checkpoint, not from Qwen's full vocabulary
    assert demo.config.audio_token_id == demo.processor.tokenizer.audio_token_id < vocab


def _clip_inputs(model, examples):
    first = [e for e in examples if len(e["audios"]) == 1][:3]
    conversations = [[{"role": "user", "content": [{"type": "audio", "audio": str(CLIPS / e["audios"][0])}]
                       + ([{"type": "text", "text": e["turns"][0]["text"]}] if e["turns"][0]["text"] else [])}]
                     for e in first]
    prompts = [model.processor.apply_chat_template(c, add_generation_prompt=True) for c in conversations]
    audios = [qwen2audio.load_audio(str(CLIPS / e["audios"][0])) for e in first]
    return prompts, audios


def test_transformers_loads_it_and_greedy_output_is_ours(demo, examples):
    from transformers import AutoProcessor, Qwen2AudioForConditionalGeneration

    prompts, audios = _clip_inputs(demo, examples)
    hf, info = Qwen2AudioForConditionalGeneration.from_pretrained(DEMO_MODEL_DIR, output_loading_info=True,
                                                                  dtype=torch.float32)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    hf_processor = AutoProcessor.from_pretrained(DEMO_MODEL_DIR)
    ours = qwen2audio.load(DEMO_MODEL_DIR, dtype="float32")
    for prompt, audio in zip(prompts, audios):
        theirs = hf_processor(text=prompt, audio=[audio], sampling_rate=SAMPLE_RATE, return_tensors="pt")
        inputs = ours.processor(text=prompt, audio=[audio], sampling_rate=SAMPLE_RATE)
        assert torch.equal(theirs["input_ids"], inputs["input_ids"])
        with torch.no_grad():
            reference = hf.eval().generate(**theirs, max_new_tokens=24, do_sample=False)
        got = ours.generate(**inputs, max_new_tokens=24)
        assert torch.equal(got, reference), (ours.processor.decode(got[0].tolist()),
                                             ours.processor.decode(reference[0].tolist()))


def test_it_answers_the_bundled_clips_as_recorded(demo, examples):
    """The showcase `make demo` prints: every answer equals the reference clips.json stores beside it."""
    assert len(examples) >= 8 and {e["mode"] for e in examples} == {"voice chat", "audio analysis"}
    for example in examples:
        messages = []
        for i, turn in enumerate(example["turns"]):
            parts = [{"type": "audio", "audio": str(CLIPS / a)} for a in (example["audios"] if i == 0 else [])]
            messages.append({"role": "user", "content": parts + ([{"type": "text", "text": turn["text"]}]
                                                                 if turn["text"] else [])})
            answer = demo.chat(messages, max_new_tokens=64)
            messages.append({"role": "assistant", "content": answer})
            if example.get("answered_right", True):
                assert answer.strip().rstrip(".").lower() == turn["reference"].strip().rstrip(".").lower(), \
                    (example["title"], answer, turn["reference"])


def test_commands_default_to_the_demo_model(examples):
    clip = CLIPS / examples[0]["audios"][0]
    run = subprocess.run([sys.executable, "-m", "qwen2audio", "run", "--audio", str(clip), "--max-new-tokens", "24",
                          examples[0]["turns"][0]["text"]], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip()
    info = subprocess.run([sys.executable, "-m", "qwen2audio", "info"], capture_output=True, text=True, timeout=120)
    assert info.returncode == 0 and str(DEMO_MODEL_DIR) in info.stdout, info.stderr
