"""Streaming text: pieces join to exactly what `decode` gives, never cut a character, hide special tokens, and stop
at stop strings without showing them."""

import random

import numpy as np
import pytest
import torch

import qwen2audio
from conftest import tone
from qwen2audio.audio import SAMPLE_RATE
from qwen2audio.chat import chat_inputs
from qwen2audio.streaming import IncrementalDecoder, TextStream
from qwen2audio.tokenizer import Tokenizer

N_NEW = 16  # new tokens per generation


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.from_pretrained()


@pytest.fixture(scope="module")
def model(tiny_checkpoint):
    return qwen2audio.load(tiny_checkpoint)


def byte_tokens(tok, text: str) -> list[int]:
    """`text` as one token per UTF-8 byte: every multi-byte character is split across tokens."""
    from qwen2audio.streaming import _byte_decoder

    to_char = {b: c for c, b in _byte_decoder().items()}
    return [tok.token_to_id(to_char[b]) for b in text.encode()]


def pieces_of(tok, ids, stop=()):
    decoder = IncrementalDecoder(tok, stop=stop)
    pieces = [decoder.push(i) for i in ids]
    return pieces + [decoder.finish()], decoder


def test_random_ids_join_to_decode(tok):
    """Any ids, including lone bytes that never form valid UTF-8, special tokens and ids past the vocabulary."""
    rng = random.Random(0)
    byte_ids = byte_tokens(tok, "".join(chr(c) for c in range(128, 2000, 7)) + "中文🎉")
    for _ in range(300):
        n = rng.randrange(1, 20)
        ids = [rng.choice(byte_ids) if rng.random() < 0.6 else rng.randrange(151936) for _ in range(n)]
        pieces, _ = pieces_of(tok, ids)
        assert "".join(pieces) == tok.decode(ids, skip_special_tokens=True)


@pytest.mark.parametrize("text", ["你好，世界！", "Emoji: 🎉👍🏽 and 🇫🇷 flags", "混合 text 和 emoji 😀 ok"],
                         ids=["chinese", "emoji", "mixed"])
def test_characters_split_across_tokens_are_held_until_complete(tok, text):
    ids = byte_tokens(tok, text)
    pieces, _ = pieces_of(tok, ids)
    assert "".join(pieces) == text
    assert not any("\ufffd" in p for p in pieces)
    # a character appears with the token that brings its last byte, not later
    shown, ends = "", set(np.cumsum([len(c.encode()) for c in text]).tolist())
    for n, piece in enumerate(pieces[:-1], start=1):
        shown += piece
        assert (n in ends) == bool(piece)
        assert shown.encode() == text.encode()[: len(shown.encode())]


def test_real_tokens_of_chinese_and_emoji(tok):
    text = "今天天气很好🌞，我们去公园散步吧！👨‍👩‍👧"
    ids = tok.encode(text)
    pieces, _ = pieces_of(tok, ids)
    assert "".join(pieces) == text and not any("\ufffd" in p for p in pieces)


def test_special_tokens_are_skipped(tok):
    ids = tok.encode("<|im_start|>assistant\nHi<|AUDIO|> there<|im_end|>")
    pieces, _ = pieces_of(tok, ids)
    assert "".join(pieces) == "assistant\nHi there"


def test_stop_string_inside_one_token(tok):
    ids = tok.encode("Hello world, again")
    pieces, decoder = pieces_of(tok, ids, stop=["ell"])
    assert "".join(pieces) == "H" and decoder.finish_reason == "stop"


def test_stop_string_across_tokens_is_never_shown(tok):
    ids = tok.encode("Hello world. Goodbye world.")
    pieces, decoder = pieces_of(tok, ids, stop=["o w", "bye"])
    assert pieces[:2] == ["Hell", ""]  # "o" held back after "Hello": it may start "o w"; " world" confirms it
    assert decoder.text == "Hell" and decoder.finish_reason == "stop"
    pieces, decoder = pieces_of(tok, ids, stop=["world. Good"])
    assert "".join(pieces) == "Hello "
    assert all("world" not in p for p in pieces)


def test_held_text_is_released_when_the_stop_string_does_not_follow(tok):
    ids = tok.encode("Hello world")
    pieces, decoder = pieces_of(tok, ids, stop=["lox", "worlds"])
    assert tok.encode("Hello") + tok.encode(" world") == ids
    assert pieces == ["Hel", "lo ", "world"]  # "lo" might start "lox", "world" might start "worlds"
    assert decoder.finish_reason == "length"


def test_stop_string_in_chinese_split_across_byte_tokens(tok):
    ids = byte_tokens(tok, "我们去公园散步吧")
    pieces, decoder = pieces_of(tok, ids, stop=["公园"])
    assert "".join(pieces) == "我们去" and decoder.finish_reason == "stop"
    assert not any("\ufffd" in p or "公" in p for p in pieces)


def test_stop_strings_must_be_non_empty(tok):
    with pytest.raises(ValueError, match="non-empty"):
        IncrementalDecoder(tok, stop=[""])


def test_batch_rows_end_independently_and_generation_stops_when_all_have(tok):
    a, b = tok.encode("one two three four"), tok.encode("alpha beta")
    eos = tok.im_end_id
    rows = [a + [eos], b + [eos]]
    steps_taken = []

    def steps():
        try:
            for t in range(10):
                steps_taken.append(t)
                yield torch.tensor([r[t] if t < len(r) else tok.pad_id for r in rows])
        finally:
            steps_taken.append("closed")

    stream = TextStream(steps(), tok, eos_token_id=[eos], stop=["thr"])
    out = list(stream)
    assert stream.texts == ["one two ", "alpha beta"]
    assert stream.finish_reasons == ["stop", "stop"]
    assert steps_taken[-1] == "closed" and len(steps_taken) - 1 == len(b) + 1  # stopped after b's eos
    assert ["".join(p[i] for p in out) for i in range(2)] == stream.texts


def test_rows_that_run_out_of_tokens_end_with_length(tok):
    ids = byte_tokens(tok, "中")[:2]  # a cut character at the end: decode shows U+FFFD, so does the stream
    stream = TextStream((torch.tensor([i]) for i in ids), tok)
    list(stream)
    assert stream.texts == [tok.decode(ids)] == ["\ufffd"] and stream.finish_reasons == ["length"]


# -- on a model ------------------------------------------------------------------------------------------------------
def _conversations():
    t = np.arange(int(1.5 * SAMPLE_RATE)) / SAMPLE_RATE
    chirp = (0.3 * np.sin(2 * np.pi * (200 + 300 * t) * t)).astype(np.float32)
    return [
        [{"role": "user", "content": [{"type": "audio", "audio": tone(1.5)},
                                      {"type": "text", "text": "What is it?"}]}],
        [{"role": "user", "content": "Write a poem about the sea."}],
        [{"role": "user", "content": [{"type": "audio", "audio": chirp}]}],  # voice chat: audio only
    ]


def test_streamed_text_equals_decoded_generate_output(model):
    """Greedy, three prompts (audio + text, text only, voice chat), one by one and as a batch."""
    tok = model.processor.tokenizer
    conversations = _conversations()
    for conversation in conversations:
        inputs, _ = chat_inputs(model.processor, [conversation])
        sequences = model.generate(**inputs, max_new_tokens=N_NEW)
        expected = tok.decode(sequences[0, inputs["input_ids"].shape[1]:].tolist(), skip_special_tokens=True)
        streamed = list(model.chat(conversation, stream=True, max_new_tokens=N_NEW))
        assert "".join(streamed) == expected == model.chat(conversation, max_new_tokens=N_NEW)
        assert len(streamed) > 1

    inputs, _ = chat_inputs(model.processor, conversations)
    T = inputs["input_ids"].shape[1]
    first = model.generate(**inputs, max_new_tokens=N_NEW)
    # a plain token that row 0 emits early, made an eos: that row ends before the others
    eos = [int(first[0, T + 5]), tok.eos_id]
    sequences = model.generate(**inputs, max_new_tokens=N_NEW, eos_token_id=eos)
    new = [row[: next((i for i, t in enumerate(row) if t in eos), len(row))] for row in sequences[:, T:].tolist()]
    expected = tok.decode_batch(new, skip_special_tokens=True)  # the eos is not shown (real eos ids are special)
    config = model.generation_config_for(max_new_tokens=N_NEW, eos_token_id=eos)
    stream = TextStream(model.generator.stream(inputs, config), tok, eos)
    steps = list(stream)
    assert stream.texts == expected
    assert ["".join(step[i] for step in steps) for i in range(3)] == expected
    assert stream.finish_reasons == ["stop", "length", "length"] and len(expected[0]) < len(expected[1])
    assert model.chat(conversations, max_new_tokens=N_NEW, eos_token_id=eos) == expected


def test_streamed_sampling_equals_generate_with_the_same_seed(model):
    tok = model.processor.tokenizer
    conversation = _conversations()[2]
    options = dict(do_sample=True, temperature=1.0, seed=3, max_new_tokens=N_NEW)
    inputs, _ = chat_inputs(model.processor, [conversation])
    sequences = model.generate(**inputs, **options)
    expected = tok.decode(sequences[0, inputs["input_ids"].shape[1]:].tolist(), skip_special_tokens=True)
    assert "".join(model.chat(conversation, stream=True, **options)) == expected
