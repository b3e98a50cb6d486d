"""`qwen2audio trim-vocab` (convert/vocab.py): a random tiny checkpoint trimmed to a small corpus tokenizes the
corpus into the same token strings as the full tokenizer, still round-trips any text, loads in transformers with
equal tokenization, logits and greedy output, and its logits are the full model's at the kept rows."""

import dataclasses
import json

import numpy as np
import pytest
import torch

from conftest import make_hf_model
from qwen2audio import load
from qwen2audio.checkpoint import CheckpointError
from qwen2audio.convert.vocab import (PAD_MULTIPLE, RecordingTokenizer, encode_sample, fixed_texts, instruction_choices,
                                      trim_vocabulary)
from qwen2audio.data.rows import TaskRow, parse_row
from qwen2audio.tokenizer import AUDIO_PLACEHOLDER, SPECIAL_TOKENS
from test_convert_build import run_cli

TOL = 1e-4
PRETRAIN = [
    {"audio": "a.wav", "task": "asr", "text": "The quick brown fox jumps over the lazy dog.", "language": "en"},
    {"audio": "b.wav", "task": "s2tt", "text": "Le renard brun saute par-dessus le chien paresseux.",
     "source_language": "en", "target_language": "fr"},
    {"audio": "c.wav", "task": "s2tt", "text": "Der schnelle braune Fuchs springt über den faulen Hund.",
     "source_language": "en", "target_language": "de"},
    {"audio": "d.wav", "task": "s2tt", "text": "敏捷的棕色狐狸跳过了懒狗。", "source_language": "en",
     "target_language": "zh"},
    {"audio": "e.wav", "task": "lid", "language": "de"},
    {"audio": "f.wav", "task": "aqa", "question": "How many dogs bark?", "text": "Three dogs, 17 times."},
    {"audio": "g.wav", "task": "sound", "text": "dog barking", "prompt": "What made this noise?\n\n"},
]
SFT = [{"messages": [{"role": "user", "content": "<audio>What is said?"},
                     {"role": "assistant", "content": "Hello there, how are you doing today?"}], "audios": ["a.wav"]},
       {"messages": [{"role": "system", "content": "Answer briefly."},
                     {"role": "user", "content": [{"type": "audio", "audio": "b.wav"}, {"type": "text",
                                                                                        "text": "Count them."}]},
                     {"role": "assistant", "content": "Four."}, {"role": "user", "content": "And now?"},
                     {"role": "assistant", "content": "Five beeps, then silence."}]}]
DPO = [{"messages": [{"role": "user", "content": "<audio>How many beeps?"}], "audios": ["a.wav"],
        "chosen": "Three.", "rejected": "Seven beeps, I think."},
       {"messages": [{"role": "user", "content": "<audio>Sound?"},
                     {"role": "assistant", "content": "A dog barking."}],
        "audios": ["a.wav"], "rejected_response": "A cat meowing loudly."}]
OTHER_TEXTS = ["def f(x):\n    return {'a': x ** 2}  # ✓", "机器学习很有趣，我们明天见！",
               "emoji 🎉🙂👍🏽 ok",
               "Ünïcödé naïve façade — “quotes”", "\t\ttabs  and   spaces\r\n", "Zebra xylophone quizzically."]


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    return [_write_jsonl(root / "pretrain.jsonl", PRETRAIN), _write_jsonl(root / "sft.jsonl", SFT),
            _write_jsonl(root / "dpo.jsonl", DPO)]


@pytest.fixture(scope="module")
def untied_checkpoint(tmp_path_factory):
    """transformers' own save of a random tiny Qwen2-Audio: untied head, 80 mels, 151655 rows."""
    directory = tmp_path_factory.mktemp("untied")
    make_hf_model("odd-80mel").save_pretrained(directory)
    from qwen2audio import Processor
    Processor(n_mels=80).save_pretrained(directory)
    return directory


@pytest.fixture(scope="module", params=["tied", "untied"])
def trimmed(request, tiny_checkpoint, untied_checkpoint, corpus, tmp_path_factory):
    source = tiny_checkpoint if request.param == "tied" else untied_checkpoint
    out = tmp_path_factory.mktemp("trimmed") / "out"
    rc, printed, err = run_cli("trim-vocab", "--model", source, "--corpus", *corpus, "--out", out)
    assert rc == 0, err
    return source, out, printed


def corpus_texts(tokenizer, corpus):
    """Every text the training pipeline encodes for the corpus (and the fixed texts)."""
    recorder = RecordingTokenizer(tokenizer)
    for path in corpus:
        for line in path.read_text().splitlines():
            encode_sample(recorder, parse_row(json.loads(line), path.parent))
    return recorder.texts + fixed_texts()


def test_corpus_tokenizes_into_the_same_strings(trimmed, corpus):
    source, out, printed = trimmed
    full, small = load(source).processor.tokenizer, load(out).processor.tokenizer
    texts = corpus_texts(full, corpus)
    assert len(texts) > 100 and any("brun saute" in t for t in texts) and any("Translate" in t for t in texts)
    for text in texts:
        assert [small.id_to_token(i) for i in small.encode(text)] == [full.id_to_token(i) for i in full.encode(text)]
    # the chat template's text is there as whole tokens, not bytes
    for word in ("system", "You", " helpful", " assistant", "Audio", "Translate", " German"):
        assert len(small.encode(word)) == len(full.encode(word)) == 1, word
    assert "kept" in printed and f"a multiple of {PAD_MULTIPLE}" in printed


def test_any_text_still_round_trips(trimmed):
    _, out, _ = trimmed
    small = load(out).processor.tokenizer
    n = small.backend.get_vocab_size(with_added_tokens=False)
    assert 256 < n < 3000  # bytes + corpus + closure, not Qwen2's 151643
    for text in OTHER_TEXTS + [t + AUDIO_PLACEHOLDER for t in OTHER_TEXTS[:2]]:
        ids = small.encode(text)
        assert small.decode(ids) == text and max(ids) < len(small)
    assert len(small.encode("xylophone")) > 1  # a word the corpus never used: spelled with smaller pieces


def test_files_carry_the_new_ids(trimmed):
    source, out, _ = trimmed
    config = json.loads((out / "config.json").read_text())
    tok = load(out).processor.tokenizer
    n = len(tok)
    specials = {t: tok.token_to_id(t) for t in SPECIAL_TOKENS}
    assert sorted(specials.values()) == list(range(n - 6, n))  # renumbered densely, after the BPE tokens
    assert config["audio_token_index"] == specials["<|AUDIO|>"]
    rows = config["text_config"]["vocab_size"]
    assert rows % PAD_MULTIPLE == 0 and rows - PAD_MULTIPLE < n <= rows
    generation = json.loads((out / "generation_config.json").read_text())
    before = json.loads((source / "generation_config.json").read_text())
    if "eos_token_id" in before:  # ours; transformers' save of a random model declares none
        assert generation["eos_token_id"] == [specials["<|endoftext|>"], specials["<|im_end|>"]]
        assert generation["pad_token_id"] == specials["<|endoftext|>"]
    else:
        assert generation == before
    decoder = json.loads((out / "tokenizer_config.json").read_text())["added_tokens_decoder"]
    assert {v["content"]: int(k) for k, v in decoder.items()} == specials
    model = load(out)
    assert model.decoder.embed_tokens.weight[n:].abs().max() == 0  # padding rows are zero
    assert (out / "preprocessor_config.json").read_text() == (source / "preprocessor_config.json").read_text()


def _inputs(processor, texts, seed=0):
    g = np.random.default_rng(seed)
    waves = [0.1 * g.standard_normal(int(s * 16000)).astype(np.float32) for s in (1.3, 2.9)]
    prompts = [processor.apply_chat_template([{"role": "user", "content": [{"type": "audio", "audio": "x"},
                                                                            {"type": "text", "text": t}]}],
                                             add_generation_prompt=True) for t in texts]
    return prompts, waves, processor(prompts, audio=waves, sampling_rate=16000)


def test_transformers_loads_the_trimmed_checkpoint(trimmed, corpus):
    from transformers import AutoProcessor, AutoTokenizer, Qwen2AudioForConditionalGeneration
    _, out, _ = trimmed
    ours = load(out)
    tok = AutoTokenizer.from_pretrained(out)
    for text in corpus_texts(ours.processor.tokenizer, corpus)[:200] + OTHER_TEXTS:
        assert tok(text, add_special_tokens=False).input_ids == ours.processor.tokenizer.encode(text), text
    prompts, waves, inputs = _inputs(ours.processor, ["Translate the speech into German.", "机器 🎉"])
    hf_inputs = AutoProcessor.from_pretrained(out)(text=prompts, audio=waves, sampling_rate=16000,
                                                   return_tensors="pt", padding=True)
    for i in range(len(prompts)):  # transformers pads on the right, ours on the left: compare the tokens
        theirs = hf_inputs["input_ids"][i][hf_inputs["attention_mask"][i].bool()]
        assert torch.equal(theirs, inputs["input_ids"][i][inputs["attention_mask"][i].bool()])
    hf, info = Qwen2AudioForConditionalGeneration.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    with torch.no_grad():
        expected = hf.eval()(**inputs).logits
        got = ours(**inputs).logits
    valid = inputs["attention_mask"].bool()
    assert got.shape == expected.shape and (got[valid] - expected[valid]).abs().max() < TOL

    # greedy generation equals transformers' (eos and pad from the trimmed generation_config)
    with torch.no_grad():
        reference = hf.generate(**inputs, max_new_tokens=12, do_sample=False)
    assert torch.equal(ours.generate(**inputs, max_new_tokens=12), reference)


def test_logits_are_the_full_models_at_the_kept_rows(trimmed, corpus):
    source, out, _ = trimmed
    full, small = load(source), load(out)
    text = next(t for t in corpus_texts(full.processor.tokenizer, corpus) if "renard" in t)
    full_ids, small_ids = full.processor.tokenizer.encode(text), small.processor.tokenizer.encode(text)
    kept = [full.processor.tokenizer.token_to_id(small.processor.tokenizer.id_to_token(i))
            for i in range(len(small.processor.tokenizer))]
    assert [kept[i] for i in small_ids] == full_ids
    with torch.no_grad():
        a = full(torch.tensor([full_ids])).logits[..., kept]
        b = small(torch.tensor([small_ids])).logits[..., :len(kept)]
    assert (a - b).abs().max() < 1e-5


def test_bad_inputs_are_named(tiny_checkpoint, corpus, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"audio": "a.wav", "task": "asr", "text": "hi"}\n{"messages": 3}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: 'messages' must be"):
        trim_vocabulary(tiny_checkpoint, [bad], tmp_path / "o", log=lambda line: None)
    bad.write_text("{not json\n")
    rc, _, err = run_cli("trim-vocab", "--model", tiny_checkpoint, "--corpus", bad, "--out", tmp_path / "o2")
    assert rc == 1 and "bad.jsonl:1: not a JSON row" in err
    with pytest.raises(FileNotFoundError, match="corpus file .*missing.jsonl does not exist"):
        trim_vocabulary(tiny_checkpoint, [tmp_path / "missing.jsonl"], tmp_path / "o3", log=lambda line: None)
    with pytest.raises(CheckpointError, match="is one of the source checkpoints"):
        trim_vocabulary(tiny_checkpoint, corpus, tiny_checkpoint, force=True, log=lambda line: None)


def test_chat_transcribe_and_training_use_the_trimmed_ids(tiny_checkpoint, tmp_path):
    """Nothing reads Qwen2-Audio's constant ids. On a trimmed checkpoint (its <|im_end|> is no
    longer 151645) chat and transcription stop where transformers stops, the prompt style is found from the new eos
    ids, and a training run's loss falls."""
    from conftest import pitch_rows, write_jsonl
    from transformers import Qwen2AudioForConditionalGeneration as HF
    from qwen2audio.chat import chat_inputs
    from qwen2audio.train import load_config, train
    from qwen2audio.transcribe import clean_transcript, prompt_style, transcription_prompt

    sft = write_jsonl(tmp_path / "sft.jsonl", pitch_rows(tmp_path, 8, "sft"))
    out = trim_vocabulary(tiny_checkpoint, [sft], tmp_path / "trimmed", log=lambda line: None)
    model, hf = load(out), HF.from_pretrained(out).eval()
    tok = model.processor.tokenizer
    assert tok.im_end_id < 1000 and model.generation_defaults()["eos_token_id"] == [tok.pad_id, tok.im_end_id]

    audio = str(tmp_path / "audio" / "0.wav")
    messages = [{"role": "user", "content": [{"type": "audio", "audio": audio},
                                             {"type": "text", "text": "What pitch is this?"}]}]
    inputs, _ = chat_inputs(model.processor, [messages])
    with torch.no_grad():
        reference = hf.generate(**inputs, max_new_tokens=10, do_sample=False)[0, inputs["input_ids"].shape[1]:]
    assert model.chat(messages, max_new_tokens=10) == tok.decode(reference.tolist(), skip_special_tokens=True)

    assert prompt_style(model) == "chat"  # <|im_end|> found among the eos ids by its new id
    from qwen2audio.audio import load_audio
    inputs = model.processor(text=[transcription_prompt(model.processor, "chat", None)], audio=[load_audio(audio)],
                             sampling_rate=16000)
    with torch.no_grad():
        reference = hf.generate(**inputs, max_new_tokens=10, do_sample=False)[0, inputs["input_ids"].shape[1]:]
    expected, _ = clean_transcript(tok.decode(reference.tolist(), skip_special_tokens=True))
    assert model.transcribe(audio, max_new_tokens=10).text == expected

    run = train(load_config(None, [f"model.path={out}", f"out_dir={tmp_path / 'run'}", f"data.train={sft}",
                                   "data.batch_size=4", "data.num_workers=0", "model.precision=32-true",
                                   "logging.progress=false", "checkpoint.save_final=false", "model.lm=full",
                                   "optim.lr=1e-2", "train.max_steps=6"], stage="sft"))
    curve = [line["loss"] for line in run.history]
    assert len(curve) == 6 and all(np.isfinite(curve)) and curve[-1] < curve[0] - 1.0, curve


def test_a_task_row_is_encoded_with_every_instruction_it_can_fill():
    both = TaskRow(task="s2tt", audio="a.wav", text="Hallo.", fields={"source_language": "en", "target_language": "de"})
    target_only = dataclasses.replace(both, fields={"target_language": "de"})
    assert len(instruction_choices(both)) > len(instruction_choices(target_only)) > 0
    assert all("German" in c and "English" not in c for c in instruction_choices(target_only))
    assert instruction_choices(dataclasses.replace(both, prompt="Say it.")) == ["Say it."]
