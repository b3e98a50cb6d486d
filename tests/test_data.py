"""Training data: manifest rows of every form -> supervised tokens, bad rows, mixing, bucketing, truncation.

Also holds the helpers the training tests share: a hand-made 262-token byte-level tokenizer (the six Qwen2-Audio
special tokens renumbered to 256..261, so nothing may hard-code their ids) and a tiny checkpoint using it.
"""

import base64
import re
import json
from pathlib import Path

import pytest
import torch

from conftest import audio_bytes, tone, write_jsonl, write_tone, write_trainable_checkpoint
from qwen2audio import Qwen2AudioForConditionalGeneration
from qwen2audio.data import (BatchLoader, DataConfig, Encoder, ManifestReader, Mixture, Planner, RowError,
                             SourceConfig, make_dataloader, parse_row)
from qwen2audio.data.prompts import INSTRUCTIONS
from qwen2audio.model import IGNORE_INDEX, audio_token_count
from qwen2audio.tokenizer import Tokenizer



# -- shared helpers -------------------------------------------------------------------------------------------
def supervised_spans(tokenizer: Tokenizer, labels: torch.Tensor) -> list[str]:
    """The decoded runs of supervised label tokens of one row."""
    spans, current = [], []
    for token in labels.tolist() + [IGNORE_INDEX]:
        if token == IGNORE_INDEX:
            if current:
                spans.append(tokenizer.decode(current))
            current = []
        else:
            current.append(token)
    return spans


def load_batches(sources, encoder, batch_loader, batch_size=8, bucket_batches=1, **planner_options):
    planner = Planner(sources, encoder, batch_size, bucket_batches, cycle=False, **planner_options)
    return list(make_dataloader(planner, batch_loader, num_workers=0))


@pytest.fixture(scope="module")
def qwen_tokenizer():
    return Tokenizer.from_pretrained()


# -- labels -----------------------------------------------------------------------------------------------------
def _wav_b64(seconds, freq):
    return base64.b64encode(audio_bytes(tone(seconds, freq, noise=0.01))).decode()


def chat_manifest(tmp_path: Path) -> Path:
    for i, (s, f) in enumerate([(0.6, 300), (1.3, 700), (0.9, 500), (2.1, 900)]):
        write_tone(tmp_path / "clips" / f"{i}.wav", s, f, noise=0.01, seed=i)
    rows = [
        # audio analysis, multi-turn, two audios (the second in a later user turn), a system prompt
        {"messages": [{"role": "system", "content": "You are terse."},
                      {"role": "user", "content": "<audio>What do you hear?"},
                      {"role": "assistant", "content": "A steady hum."},
                      {"role": "user", "content": "And here? <audio>"},
                      {"role": "assistant", "content": "A higher tone, twice as loud."}],
         "audios": ["clips/0.wav", "clips/1.wav"]},
        # voice chat: audio only
        {"messages": [{"role": "user", "content": "<audio>"}, {"role": "assistant", "content": "Hello to you too!"}],
         "audios": ["clips/2.wav"]},
        # ShareGPT roles, two audios in one turn
        {"conversations": [{"from": "human", "value": "<audio><audio>Which is longer?"},
                           {"from": "gpt", "value": "The second one."}],
         "audios": ["clips/3.wav", "clips/0.wav"]},
        # OpenAI-style parts with inline base64 audio
        {"messages": [{"role": "user", "content": [
            {"type": "input_audio", "input_audio": {"data": _wav_b64(0.4, 250), "format": "wav"}},
            {"type": "text", "text": "Name it."}]},
            {"role": "assistant", "content": "A low beep."}]},
    ]
    return write_jsonl(tmp_path / "chat.jsonl", rows)


ANSWERS = [["A steady hum.<|im_end|>", "A higher tone, twice as loud.<|im_end|>"], ["Hello to you too!<|im_end|>"],
           ["The second one.<|im_end|>"], ["A low beep.<|im_end|>"]]
DURATIONS = [[0.6, 1.3], [0.9], [2.1, 0.6], [0.4]]


@pytest.mark.parametrize("side", ["left", "right"])
def test_supervised_tokens_decode_to_exactly_the_assistant_answers(tmp_path, qwen_tokenizer, side):
    manifest = chat_manifest(tmp_path)
    loader = BatchLoader.from_tokenizer(qwen_tokenizer, padding_side=side)
    (batch,) = load_batches([SourceConfig(str(manifest))], Encoder(qwen_tokenizer), loader)
    assert batch.rows == [f"{manifest}:{i}" for i in range(1, 5)]
    assert [supervised_spans(qwen_tokenizer, row) for row in batch.labels] == ANSWERS
    # each <|AUDIO|> expanded to the encoder's frame count, audios in row order, padding on the chosen side
    audio_tokens = (batch.input_ids == qwen_tokenizer.audio_token_id).sum(-1).tolist()
    assert audio_tokens == [sum(int(audio_token_count(int(s * 100))) for s in d) for d in DURATIONS]
    assert batch.feature_attention_mask.sum(-1).tolist() == [int(s * 100) for d in DURATIONS for s in d]
    first_real = batch.attention_mask.argmax(-1) if side == "left" else torch.zeros(4, dtype=torch.long)
    assert (batch.input_ids[torch.arange(4), first_real] == qwen_tokenizer.im_start_id).all()
    # the supervised tokens are the ones the model would generate after the prompt (not the newline after eos)
    text = qwen_tokenizer.decode(batch.input_ids[1][batch.attention_mask[1].bool()].tolist())
    assert text.endswith("<|im_start|>assistant\nHello to you too!<|im_end|>\n")
    assert "Audio 1: <|audio_bos|><|AUDIO|>" in text


def test_loss_false_leaves_parts_and_turns_out_of_the_loss(tmp_path, qwen_tokenizer):
    # ms-swift's per-message "loss": false, and the same flag on a text part of an assistant turn: a voice-chat answer
    # trained on its restatement and its end, not on the result between them
    write_tone(tmp_path / "a.wav", 0.5, 300, noise=0.01)
    rows = [{"messages": [{"role": "user", "content": "<audio>"}, {"role": "assistant", "content": [
                {"type": "text", "text": "The answer to twelve plus two is"},
                {"type": "text", "text": " 14", "loss": False}, {"type": "text", "text": "."}]}], "audios": ["a.wav"]},
            {"messages": [{"role": "user", "content": "<audio>"}, {"role": "assistant", "content": [
                {"type": "text", "text": "The answer to nine times five is", "loss": False},
                {"type": "text", "text": " 45."}]}], "audios": ["a.wav"]},
            {"messages": [{"role": "user", "content": "Hi<audio>"}, {"role": "assistant", "content": "Hello!",
                                                                     "loss": False},
                          {"role": "user", "content": "Again"}, {"role": "assistant", "content": "Hello again!"}],
             "audios": ["a.wav"]}]
    manifest = write_jsonl(tmp_path / "parts.jsonl", rows)
    (batch,) = load_batches([SourceConfig(str(manifest))], Encoder(qwen_tokenizer), BatchLoader.from_tokenizer(
        qwen_tokenizer))
    assert [supervised_spans(qwen_tokenizer, labels) for labels in batch.labels] == [
        ["The answer to twelve plus two is", ".<|im_end|>"], [" 45.<|im_end|>"], ["Hello again!<|im_end|>"]]
    # the ids are those of the whole answer (the template renders the parts as one text)
    text = qwen_tokenizer.decode(batch.input_ids[0][batch.attention_mask[0].bool()].tolist())
    assert text.endswith("<|im_start|>assistant\nThe answer to twelve plus two is 14.<|im_end|>\n")
    with pytest.raises(ValueError, match="only assistant turns carry loss"):
        parse_row({"messages": [{"role": "user", "content": "x", "loss": False}]}, tmp_path)
    with pytest.raises(ValueError, match="use true or false"):
        parse_row({"messages": [{"role": "user", "content": "x"},
                                {"role": "assistant", "content": [{"text": "y", "loss": "no"}]}]}, tmp_path)


def test_left_and_right_padding_give_the_same_loss(tmp_path):
    from qwen2audio.logprobs import TokenLogProbs

    ckpt = write_trainable_checkpoint(tmp_path / "ckpt")
    model = Qwen2AudioForConditionalGeneration.from_pretrained(ckpt)
    manifest = chat_manifest(tmp_path)
    logps = []
    for side in ("left", "right"):
        loader = BatchLoader.from_tokenizer(model.processor.tokenizer, padding_side=side)
        (batch,) = load_batches([SourceConfig(str(manifest))], Encoder(model.processor.tokenizer), loader)
        with torch.no_grad():
            out = TokenLogProbs(model)(batch.input_ids, batch.attention_mask, batch.labels, batch.input_features,
                                       batch.feature_attention_mask)
        logps.append(out.sum(-1))
    torch.testing.assert_close(logps[0], logps[1], atol=1e-5, rtol=0)


def test_task_rows_draw_a_seeded_instruction_and_supervise_only_the_answer(tmp_path, qwen_tokenizer):
    write_tone(tmp_path / "a.wav", 0.5, 300, noise=0.01)
    rows = [{"audio": "a.wav", "task": "asr", "text": "hello world", "language": "en"},
            {"audio": "a.wav", "task": "speech_translation", "text": "bonjour", "language": "en",
             "target_language": "fr"},
            {"audio": "a.wav", "task": "lid", "language": "de"},
            {"audio": "a.wav", "task": "aqa", "question": "Is it loud?", "text": "No."},
            {"audio": "a.wav", "task": "asr", "text": "fixed", "prompt": "Say it:"}]
    manifest = write_jsonl(tmp_path / "tasks.jsonl", rows)
    loader = BatchLoader.from_tokenizer(qwen_tokenizer)

    def prompts_and_answers(seed, fmt="base"):
        (batch,) = load_batches([SourceConfig(str(manifest))], Encoder(qwen_tokenizer, fmt, seed=seed), loader)
        out = []
        for ids, labels, mask in zip(batch.input_ids, batch.labels, batch.attention_mask):
            text = qwen_tokenizer.decode(ids[mask.bool()].tolist())
            out.append((text, supervised_spans(qwen_tokenizer, labels)))
        return out

    base = prompts_and_answers(0)
    assert [a for _, a in base] == [["hello world<|endoftext|>"], ["bonjour<|endoftext|>"], ["German<|endoftext|>"],
                                    ["No.<|endoftext|>"], ["fixed<|endoftext|>"]]
    assert all(t.startswith("<|audio_bos|><|AUDIO|>") for t, _ in base)
    instructions = [t.split("<|audio_eos|>")[1].rsplit(a[0].replace("<|endoftext|>", ""), 1)[0] for t, a in base]
    pools = [INSTRUCTIONS["asr"], INSTRUCTIONS["s2tt"], INSTRUCTIONS["lid"], INSTRUCTIONS["aqa"]]
    fills = dict(language="English", source_language="English", target_language="French", question="Is it loud?")
    for instruction, pool in zip(instructions, pools):
        assert instruction in [p.format(**fills) for p in pool]
    assert instructions[4] == "Say it:"
    assert prompts_and_answers(0) == base  # seeded: the same draws again
    draws = {tuple(t for t, _ in prompts_and_answers(seed)) for seed in range(6)}
    assert len(draws) > 1  # ... and other seeds draw other paraphrases
    chat = prompts_and_answers(0, "chat")
    assert chat[0][1] == ["hello world<|im_end|>"] and chat[0][0].startswith("<|im_start|>system\n")


# -- bad rows ---------------------------------------------------------------------------------------------------
def test_bad_rows_raise_naming_file_and_line_or_are_skipped_and_counted(tmp_path, qwen_tokenizer):
    write_tone(tmp_path / "a.wav", 0.5, 300, noise=0.01)
    good = {"messages": [{"role": "user", "content": "<audio>Hi"}, {"role": "assistant", "content": "Yo."}],
            "audios": ["a.wav"]}
    bad_rows = [
        ('{"messages": [', "invalid JSON"),
        ({"messages": [{"role": "user", "content": "<audio><audio>x"}, {"role": "assistant", "content": "y"}],
          "audios": ["a.wav"]}, "more <audio> tags"),
        ({"messages": [{"role": "user", "content": "x"}], "audios": ["a.wav"]}, "0 <audio> tag(s) but 'audios' lists 1"),
        ({"messages": [{"role": "robot", "content": "x"}]}, "role 'robot'"),
        ({"foo": 1}, "no 'messages'"),
        ({"messages": [{"role": "user", "content": "x"}]}, "no assistant turn"),
    ]
    encoder, loader = Encoder(qwen_tokenizer), BatchLoader.from_tokenizer(qwen_tokenizer)
    for bad, message in bad_rows:
        manifest = write_jsonl(tmp_path / "m.jsonl", [good, good, bad, good])
        with pytest.raises(RowError, match=rf"^{manifest}:3: .*{re.escape(message)}") as e:
            load_batches([SourceConfig(str(manifest))], encoder, loader)
        assert e.value.where == f"{manifest}:3"
    # audio that does not exist fails where it is decoded (in a worker), still naming the row
    missing = dict(good, audios=["nowhere.wav"])
    manifest = write_jsonl(tmp_path / "m.jsonl", [good, missing])
    with pytest.raises(RowError, match=rf"{manifest}:2: audio: audio file '.*nowhere.wav' not found"):
        list(make_dataloader(Planner([SourceConfig(str(manifest))], encoder, 2, cycle=False),
                             loader, num_workers=1))
    # skip and count
    rows = [good, bad_rows[0][0], good, bad_rows[1][0], missing, good]
    manifest = write_jsonl(tmp_path / "m.jsonl", rows)
    with pytest.warns(UserWarning, match="skipped"):
        batches = load_batches([SourceConfig(str(manifest))], encoder,
                               BatchLoader.from_tokenizer(qwen_tokenizer, on_bad_row="skip"), on_bad_row="skip")
    assert [b.n_samples for b in batches] == [3]
    assert batches[0].stats == {"skipped_rows": 2, "skipped_audio": 1}
    array = tmp_path / "array.jsonl"
    array.write_text(json.dumps([good]))
    with pytest.raises(ValueError, match="a JSON array, not JSON Lines"):
        load_batches([SourceConfig(str(array))], encoder, loader)


def test_row_forms_parse_the_same(tmp_path):
    swift = {"messages": [{"role": "user", "content": "<audio>Q"}, {"role": "assistant", "content": "A"}],
             "rejected_response": "B", "audios": ["x.wav"]}
    factory = {"conversations": [{"from": "human", "value": "<audio>Q"}], "chosen": {"from": "gpt", "value": "A"},
               "rejected": {"from": "gpt", "value": "B"}, "audios": ["x.wav"]}
    trl = {"prompt": [{"role": "user", "content": [{"type": "audio", "audio": "x.wav"}, {"type": "text", "text": "Q"}]}],
           "chosen": [{"role": "assistant", "content": "A"}], "rejected": "B"}
    parsed = [parse_row(r, tmp_path) for r in (swift, factory, trl)]
    assert parsed[0] == parsed[1]
    assert parsed[0].chosen == parsed[2].chosen == "A" and parsed[2].rejected == "B"
    assert parsed[0].prompt[0]["content"][0] == {"type": "audio", "audio": str(tmp_path / "x.wav")}
    assert parsed[2].prompt[0]["content"][0]["audio"] == "x.wav"  # inline parts are taken as given


# -- mixing, bucketing, resuming ----------------------------------------------------------------------------------
def test_weighted_interleave_is_deterministic_and_resumes_mid_file(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", [{"i": f"a{i}"} for i in range(5)])
    b = write_jsonl(tmp_path / "b.jsonl", [{"i": f"b{i}"} for i in range(3)])
    sources = [SourceConfig(str(a), weight=2), SourceConfig(str(b), weight=1)]
    mix = Mixture(sources, cycle=True)
    got = [json.loads(next(mix).text)["i"] for _ in range(12)]
    assert got == ["a0", "b0", "a1", "a2", "b1", "a3", "a4", "b2", "a0", "a1", "b0", "a2"]  # 2:1, cycling epochs
    mix = Mixture(sources, cycle=True)
    for _ in range(7):
        next(mix)
    resumed = Mixture(sources, cycle=True, state=mix.state())
    assert [json.loads(next(resumed).text)["i"] for _ in range(5)] == got[7:]
    reader = ManifestReader(SourceConfig(str(b)), 0, cycle=False)
    assert [r.ref.line for r in reader] == [1, 2, 3]


def test_planner_buckets_by_length_and_resumes_at_any_micro_batch(tmp_path, qwen_tokenizer):
    rows = [{"messages": [{"role": "user", "content": "q" * (1 + 7 * i % 23)},
                          {"role": "assistant", "content": "a" * (1 + 5 * i % 17)}]} for i in range(40)]
    manifest = write_jsonl(tmp_path / "m.jsonl", rows)
    planner = Planner([SourceConfig(str(manifest))], Encoder(qwen_tokenizer), batch_size=4, bucket_batches=4, seed=3)
    plans = [p for _, p in zip(range(20), planner)]
    assert [p.index for p in plans] == list(range(20))
    spread = lambda p: max(map(len, p.samples)) - min(map(len, p.samples))  # noqa: E731
    unbucketed = Planner([SourceConfig(str(manifest))], Encoder(qwen_tokenizer), batch_size=4, bucket_batches=1)
    assert sum(map(spread, plans[:8])) < sum(spread(p) for _, p in zip(range(8), unbucketed))
    for at in (5, 8, 13):
        resumed = Planner([SourceConfig(str(manifest))], Encoder(qwen_tokenizer), batch_size=4, bucket_batches=4,
                          seed=3, start=planner.state_at(at))
        again = [p for _, p in zip(range(20 - at), resumed)]
        assert [[s.ids for s in p.samples] for p in again] == [[s.ids for s in p.samples] for p in plans[at:]]
    # process 1 of 2 takes the odd micro-batches
    second = Planner([SourceConfig(str(manifest))], Encoder(qwen_tokenizer), batch_size=4, bucket_batches=4, seed=3,
                     rank=1, world_size=2)
    assert [[s.ids for s in p.samples] for _, p in zip(range(5), second)] == \
        [[s.ids for s in p.samples] for p in plans[1:10:2]]


# -- lengths ------------------------------------------------------------------------------------------------------
def test_truncation_never_cuts_inside_an_audio_span(tmp_path, qwen_tokenizer):
    write_tone(tmp_path / "a.wav", 1.0, 300, noise=0.01)  # 25 audio tokens
    row = {"messages": [{"role": "user", "content": "Listen: <audio> and then <audio>"},
                        {"role": "assistant", "content": "Two tones, the same."}], "audios": ["a.wav", "a.wav"]}
    manifest = write_jsonl(tmp_path / "m.jsonl", [row])
    (full,) = load_batches([SourceConfig(str(manifest))], Encoder(qwen_tokenizer),
                           BatchLoader.from_tokenizer(qwen_tokenizer))
    ids = full.input_ids[0].tolist()
    second_bos = [i for i, t in enumerate(ids) if t == qwen_tokenizer.audio_bos_id][1]
    for limit in (second_bos + 3, second_bos + 20):  # both inside the second audio span
        loader = BatchLoader.from_tokenizer(qwen_tokenizer, max_length=limit, truncation="right")
        (batch,) = load_batches([SourceConfig(str(manifest))], Encoder(qwen_tokenizer), loader)
        assert batch.n_samples == 0 and batch.stats == {"dropped_too_long": 1}  # the answer would be gone
    # an answer that runs past max_length is shortened, keeping every audio whole
    long_answer = dict(row, messages=[row["messages"][0], {"role": "assistant", "content": "word " * 50}])
    manifest = write_jsonl(tmp_path / "m.jsonl", [long_answer])
    loader = BatchLoader.from_tokenizer(qwen_tokenizer, max_length=len(ids), truncation="right")
    (batch,) = load_batches([SourceConfig(str(manifest))], Encoder(qwen_tokenizer), loader)
    assert batch.input_ids.shape[1] == len(ids) and batch.stats == {"truncated": 1}
    assert (batch.input_ids == qwen_tokenizer.audio_token_id).sum() == 50 and batch.input_features.shape[0] == 2
    loader = BatchLoader.from_tokenizer(qwen_tokenizer, max_length=len(ids))  # default: drop
    (batch,) = load_batches([SourceConfig(str(manifest))], Encoder(qwen_tokenizer), loader)
    assert batch.n_samples == 0 and batch.stats == {"dropped_too_long": 1}


def test_long_audio_is_dropped_or_cut_and_counted(tmp_path, qwen_tokenizer):
    write_tone(tmp_path / "long.wav", 31.0, 300, noise=0.01)
    row = {"messages": [{"role": "user", "content": "<audio>"}, {"role": "assistant", "content": "ok"}],
           "audios": ["long.wav"]}
    manifest = write_jsonl(tmp_path / "m.jsonl", [row])
    (dropped,) = load_batches([SourceConfig(str(manifest))], Encoder(qwen_tokenizer),
                              BatchLoader.from_tokenizer(qwen_tokenizer))
    assert dropped.n_samples == 0 and dropped.stats == {"dropped_long_audio": 1}
    (cut,) = load_batches([SourceConfig(str(manifest))], Encoder(qwen_tokenizer),
                          BatchLoader.from_tokenizer(qwen_tokenizer, long_audio="truncate"))
    assert cut.stats == {"truncated_long_audio": 1} and (cut.input_ids == qwen_tokenizer.audio_token_id).sum() == 750


def test_data_config_checks_its_values():
    with pytest.raises(ValueError, match="data.padding_side must be one of left, right"):
        DataConfig(padding_side="middle")
    with pytest.raises(ValueError, match="weight must be > 0"):
        SourceConfig("x.jsonl", weight=0)
