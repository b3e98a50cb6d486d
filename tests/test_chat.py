"""`model.chat`: every audio part form, multi-turn with several audios, voice chat, batches, stop strings, and long
audio kept as windows inside one audio span."""

import base64
import logging
import shutil
import subprocess
import warnings

import numpy as np
import pytest
import torch

import qwen2audio
from conftest import audio_bytes, clip_with_pauses, tone
from qwen2audio.audio import SAMPLE_RATE, AudioError, log_mel_spectrogram
from qwen2audio.chat import ChatReply, chat_inputs, generation_options, load_messages
from qwen2audio.model import audio_token_count
from qwen2audio.processor import split_long_audio

AUDIO_ID = 151646


@pytest.fixture(scope="module")
def model(tiny_checkpoint):
    return qwen2audio.load(tiny_checkpoint)


def test_every_audio_part_form_gives_the_same_inputs(model, tmp_path):
    wave = tone(2.3)
    data = audio_bytes(wave, subtype="FLOAT")
    path = tmp_path / "a.wav"
    path.write_bytes(data)
    b64 = base64.b64encode(data).decode()
    forms = {
        "openai input_audio": {"type": "input_audio", "input_audio": {"data": b64, "format": "wav"}},
        "audio_url data URL": {"type": "audio_url", "audio_url": {"url": f"data:audio/wav;base64,{b64}"}},
        "audio_url path": {"type": "audio_url", "audio_url": {"url": str(path)}},
        "audio_url file://": {"type": "audio_url", "audio_url": {"url": f"file://{path}"}},
        "audio path": {"type": "audio", "audio": str(path)},
        "audio Path": {"type": "audio", "audio": path},
        "audio bytes": {"type": "audio", "audio": data},
        "audio array": {"type": "audio", "audio": wave},
        "audio tensor": {"type": "audio", "audio": torch.from_numpy(wave)},
        "audio data URL": {"type": "audio", "audio": f"data:audio/wav;base64,{b64}"},
        "transformers path key": {"type": "audio", "path": str(path)},
    }
    reference = None
    for name, part in forms.items():
        messages = [{"role": "user", "content": [part, {"type": "text", "text": "What is it?"}]}]
        inputs, windows = chat_inputs(model.processor, [messages])
        if reference is None:
            reference = inputs
        assert windows == [[1]], name
        for key in reference:
            assert torch.equal(inputs[key], reference[key]), (name, key)
    assert int((reference["input_ids"] == AUDIO_ID).sum()) == int(audio_token_count(230))


def test_array_at_another_rate_and_compressed_formats(model, tmp_path):
    wave = tone(2.0)
    at_8k = wave[::2].copy()
    messages = [{"role": "user", "content": [{"type": "audio", "audio": at_8k, "sampling_rate": 8000}]}]
    _, audios = load_messages(messages)
    assert len(audios[0]) == len(wave)
    if shutil.which("ffmpeg"):
        mp3 = subprocess.run(["ffmpeg", "-loglevel", "error", "-f", "wav", "-i", "-", "-f", "mp3", "-"],
                             input=audio_bytes(wave, subtype="FLOAT"), capture_output=True, check=True).stdout
        part = {"type": "input_audio", "input_audio": {"data": base64.b64encode(mp3).decode(), "format": "mp3"}}
        _, audios = load_messages([{"role": "user", "content": [part]}])
        assert abs(len(audios[0]) - len(wave)) < 0.1 * SAMPLE_RATE  # mp3 pads a little


def test_multi_turn_with_two_audios_renders_the_official_template(model):
    first, second = tone(1.0, 300), tone(3.2, 500)
    messages = [
        {"role": "user", "content": [{"type": "audio", "audio": first}, {"type": "text", "text": "What is this?"}]},
        {"role": "assistant", "content": "A tone."},
        {"role": "user", "content": [{"type": "text", "text": "And this one?"}, {"type": "audio", "audio": second}]},
    ]
    conversation, audios = load_messages(messages)
    prompt = model.processor.apply_chat_template(conversation, add_generation_prompt=True)
    assert prompt == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nAudio 1: <|audio_bos|><|AUDIO|><|audio_eos|>\nWhat is this?<|im_end|>\n"
        "<|im_start|>assistant\nA tone.<|im_end|>\n"
        "<|im_start|>user\nAnd this one?Audio 2: <|audio_bos|><|AUDIO|><|audio_eos|>\n<|im_end|>\n"
        "<|im_start|>assistant\n")
    inputs, windows = chat_inputs(model.processor, [messages])
    assert windows == [[1, 1]]
    ids = inputs["input_ids"][0].tolist()
    counts = [int(audio_token_count(100)), int(audio_token_count(320))]
    assert ids.count(AUDIO_ID) == sum(counts) == 25 + 80
    first_span = ids.index(AUDIO_ID)
    assert ids[first_span:first_span + counts[0]] == [AUDIO_ID] * counts[0]
    assert isinstance(model.chat(messages, max_new_tokens=4), str)


def test_system_prompt_replaces_the_default(model):
    messages = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hi"}]
    conversation, _ = load_messages(messages)
    prompt = model.processor.apply_chat_template(conversation, add_generation_prompt=True)
    assert prompt.startswith("<|im_start|>system\nYou are terse.<|im_end|>\n") and "helpful" not in prompt


def test_voice_chat_audio_only(model):
    messages = [{"role": "user", "content": [{"type": "audio", "audio": tone(1.5)}]}]
    inputs, _ = chat_inputs(model.processor, [messages])
    text = model.processor.decode(inputs["input_ids"][0].tolist())
    frames = "<|AUDIO|>" * int(audio_token_count(150))
    assert text.endswith(f"user\nAudio 1: <|audio_bos|>{frames}<|audio_eos|>\n<|im_end|>\n<|im_start|>assistant\n")
    reply = model.chat(messages, max_new_tokens=6, details=True)
    assert isinstance(reply, ChatReply) and reply.completion_tokens == 6 and reply.finish_reason == "length"
    assert reply.prompt_tokens == inputs["input_ids"].shape[1] and reply.audio_windows == [1]


def test_batched_chat_equals_one_by_one(model):
    conversations = [
        [{"role": "user", "content": [{"type": "audio", "audio": tone(0.7, 330)},
                                      {"type": "text", "text": "Describe the sound."}]}],
        [{"role": "user", "content": [{"type": "audio", "audio": tone(6.0, 550)}]}],
        [{"role": "user", "content": "No audio here, just text."},
         {"role": "assistant", "content": "Fine."},
         {"role": "user", "content": [{"type": "audio", "audio": tone(2.0, 800)}, {"type": "text", "text": "Now?"}]}],
    ]
    batched = model.chat(conversations, max_new_tokens=10)
    assert batched == [model.chat(c, max_new_tokens=10) for c in conversations]
    assert len(set(batched)) == 3
    streamed = list(model.chat(conversations, max_new_tokens=10, stream=True))
    assert ["".join(step[i] for step in streamed) for i in range(3)] == batched


def test_stop_strings_and_options(model):
    messages = [{"role": "user", "content": "Tell me a story."}]
    full = model.chat(messages, max_new_tokens=12)
    stop = full[len(full) // 2: len(full) // 2 + 2]
    cut = model.chat(messages, max_new_tokens=12, stop=[stop], details=True)
    assert cut.text == full[: full.index(stop)] and cut.finish_reason == "stop"
    assert generation_options({"temperature": 0}) == {"do_sample": False}
    assert generation_options({"temperature": 0.7, "top_p": None}) == {"temperature": 0.7, "do_sample": True}
    sampled = [model.chat(messages, max_new_tokens=8, temperature=1.0, seed=s) for s in (1, 1, 2)]
    assert sampled[0] == sampled[1] != sampled[2]
    with pytest.raises(TypeError, match="unknown generation arguments: beams"):
        model.chat(messages, beams=2)


def test_bad_parts_raise_clear_errors(model, tmp_path):
    def parts(*content):
        return [{"role": "user", "content": list(content)}]

    with pytest.raises(ValueError, match="message 0 part 0 has type 'image_url'"):
        load_messages(parts({"type": "image_url", "image_url": {"url": "x"}}))
    with pytest.raises(AudioError, match="not valid base64"):
        load_messages(parts({"type": "input_audio", "input_audio": {"data": "@@@", "format": "wav"}}))
    with pytest.raises(AudioError, match="URLs are not fetched"):
        load_messages(parts({"type": "audio_url", "audio_url": {"url": "https://example.com/a.wav"}}))
    with pytest.raises(AudioError, match="missing.wav' not found"):
        load_messages(parts({"type": "audio", "audio": str(tmp_path / "missing.wav")}))
    with pytest.raises(ValueError, match="needs 'audio'"):
        load_messages(parts({"type": "audio"}))
    with pytest.raises(ValueError, match="string 'text'"):
        load_messages(parts({"type": "text", "text": 3}))


def test_95_second_clip_is_kept_whole_as_four_windows_in_one_audio_span(model, caplog):
    wave, _ = clip_with_pauses(95.0)
    messages = [{"role": "user", "content": [{"type": "audio", "audio": wave},
                                             {"type": "text", "text": "Summarise."}]}]
    windows = split_long_audio(wave)
    assert len(windows) == 4 and windows[0].start == 0 and windows[-1].end == len(wave)
    _, frame_mask = log_mel_spectrogram([wave[w.start:w.end] for w in windows])
    window_counts = audio_token_count(frame_mask.sum(-1)).tolist()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no truncation warning
        with caplog.at_level(logging.INFO, logger="qwen2audio"):
            inputs, counts = chat_inputs(model.processor, [messages])
    assert counts == [[4]]
    assert inputs["input_features"].shape[0] == 4
    assert inputs["feature_attention_mask"].sum(-1).tolist() == frame_mask.sum(-1).tolist()
    ids = inputs["input_ids"][0].tolist()
    assert ids.count(AUDIO_ID) == sum(window_counts) > 3 * 700  # ~2375 frames: all of the 95 s
    start = ids.index(AUDIO_ID)  # one contiguous span between audio_bos and audio_eos
    assert ids[start - 1] == 151647 and ids[start + sum(window_counts)] == 151648
    assert "4 windows" in caplog.text and "(pause)" in caplog.text
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        reply = model.chat(messages, max_new_tokens=4, details=True)
    assert reply.audio_windows == [4] and reply.prompt_tokens == len(ids)


def test_prompt_longer_than_the_model_context_is_refused(model):
    wave = np.tile(tone(1.0), 200)  # 200 s: 7 windows, ~5000 audio tokens, over tiny-random's 4096 positions
    messages = [{"role": "user", "content": [{"type": "audio", "audio": wave}]}]
    with pytest.raises(ValueError, match=r"7 audio window\(s\).*over the model's 4096 positions"):
        model.chat(messages, max_new_tokens=4)


def test_a_model_built_in_python_chats_with_the_bundled_tokenizer():
    from qwen2audio.model import Qwen2AudioConfig

    built = qwen2audio.Qwen2AudioForConditionalGeneration(Qwen2AudioConfig.from_name("tiny-random"))
    assert isinstance(built.chat([{"role": "user", "content": "Hi"}], max_new_tokens=2), str)
    assert built.processor.n_mels == 128
