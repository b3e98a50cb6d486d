"""Long-audio transcription: windows of at most 30 s cut at pauses, covering the whole clip; prompts for base and
Instruct models; stitching and output formats."""

import json
import logging

import numpy as np
import pytest

import qwen2audio
from conftest import clip_with_pauses
from qwen2audio.audio import SAMPLE_RATE
from qwen2audio.processor import AudioWindow, split_long_audio
from qwen2audio.transcribe import (Segment, Transcription, clean_transcript, format_transcription, prompt_style,
                                   stitch, transcription_from_windows, transcription_prompt)


@pytest.fixture(scope="module")
def model(tiny_checkpoint):
    return qwen2audio.load(tiny_checkpoint)


def test_windows_cut_in_the_pauses_and_cover_the_whole_clip():
    wave, pauses = clip_with_pauses(95.0)
    windows = split_long_audio(wave)
    assert windows[0].start == 0 and windows[-1].end == len(wave)
    assert all(a.end == b.start for a, b in zip(windows, windows[1:]))
    assert all(0 < w.end - w.start <= 30 * SAMPLE_RATE for w in windows)
    for w in windows[:-1]:
        assert w.at_pause
        assert any(start < w.end / SAMPLE_RATE < end for start, end in pauses), w
    assert not windows[-1].at_pause


def test_hard_cut_at_30_s_where_there_is_no_pause():
    t = np.arange(70 * SAMPLE_RATE) / SAMPLE_RATE
    wave = (0.3 * np.sin(2 * np.pi * 440 * t) + 0.01 * np.random.default_rng(0).standard_normal(t.size))
    windows = split_long_audio(wave.astype(np.float32))
    assert [(w.start, w.end, w.at_pause) for w in windows] == [
        (0, 30 * SAMPLE_RATE, False), (30 * SAMPLE_RATE, 60 * SAMPLE_RATE, False),
        (60 * SAMPLE_RATE, 70 * SAMPLE_RATE, False)]
    assert split_long_audio(wave[: 30 * SAMPLE_RATE]) == [AudioWindow(0, 30 * SAMPLE_RATE)]


def test_95_second_clip_transcribes_window_by_window(model, caplog):
    wave, pauses = clip_with_pauses(95.0)
    calls = []
    with caplog.at_level(logging.INFO, logger="qwen2audio"):
        result = model.transcribe(wave, sampling_rate=SAMPLE_RATE, batch_size=3, max_new_tokens=6,
                                  progress=lambda done, total: calls.append((done, total)))
    assert isinstance(result, Transcription) and result.duration == 95.0
    segments = result.segments
    assert len(segments) == 4 and calls == [(0, 4), (3, 4), (4, 4)]
    assert segments[0].start == 0 and segments[-1].end == 95.0
    assert all(a.end == b.start for a, b in zip(segments, segments[1:]))
    assert all(any(s < seg.end < e for s, e in pauses) for seg in segments[:-1])
    assert all(seg.text for seg in segments) and result.text == stitch([s.text for s in segments])
    assert "transcribed as 4 windows" in caplog.text


def test_prompt_style_follows_the_checkpoint(model, monkeypatch):
    assert prompt_style(model) == "chat"  # <|im_end|> is among the eos ids: an Instruct checkpoint
    monkeypatch.setattr(model, "generation_config", {"eos_token_id": 151643, "pad_token_id": 151643})
    assert prompt_style(model) == "base"
    monkeypatch.setattr(model, "generation_config", {"chat_format": "chatml", "eos_token_id": 151643})
    assert prompt_style(model) == "chat"
    processor = model.processor
    assert transcription_prompt(processor, "base", "en") == (
        "<|audio_bos|><|AUDIO|><|audio_eos|>Detect the language and recognize the speech: <|en|>")
    assert transcription_prompt(processor, "base", None).endswith("recognize the speech:")
    chat = transcription_prompt(processor, "chat", "fr")
    assert chat.startswith("<|im_start|>system\n") and "Audio 1: <|audio_bos|><|AUDIO|><|audio_eos|>\n" in chat
    assert "(in French)" in chat and chat.endswith("<|im_start|>assistant\n")


def test_base_style_sends_the_official_asr_prompt(model, monkeypatch):
    monkeypatch.setattr(model, "generation_config", {"eos_token_id": 151643, "pad_token_id": 151643})
    prompts, generate = [], model.generate

    def spy(**kwargs):
        prompts.append(model.processor.decode(kwargs["input_ids"][0].tolist()))
        return generate(**kwargs)

    monkeypatch.setattr(model, "generate", spy)
    result = model.transcribe(np.zeros(SAMPLE_RATE, np.float32), sampling_rate=SAMPLE_RATE, language="de",
                              max_new_tokens=3)
    assert prompts[0].startswith("<|audio_bos|><|AUDIO|>")
    assert prompts[0].endswith("<|audio_eos|>Detect the language and recognize the speech: <|de|>")
    assert result.language == "de" and len(result.segments) == 1


def test_cleaning_and_stitching():
    assert clean_transcript("<|en|>Hello   world.<|endoftext|>") == ("Hello world.", "en")
    assert clean_transcript(" no tags ") == ("no tags", None)
    assert stitch(["Hello world.", "", "Next part."]) == "Hello world. Next part."
    assert stitch(["你好。", "世界", "and English"]) == "你好。世界 and English"


def test_windows_stitch_into_one_transcription():
    """Three windows' raw outputs -> one Segment each (tags removed, spaces single), the texts stitched, the language
    as given or else the first tag the model wrote."""
    windows = [AudioWindow(0, 474_160, True), AudioWindow(474_160, 954_160), AudioWindow(954_160, 1_040_000)]
    raw = ["<|zh|>你好。<|endoftext|>", "世界  ", "<|en|>and  English"]
    segments = [Segment(0.0, 29.635, "你好。", True), Segment(29.635, 59.635, "世界"),
                Segment(59.635, 65.0, "and English")]
    assert transcription_from_windows(windows, raw, None, 65.0) == Transcription(
        "你好。世界 and English", "zh", 65.0, segments)
    assert transcription_from_windows(windows, raw, "fr", 65.0).language == "fr"
    assert transcription_from_windows(windows[1:2], ["no tag"], None, 30.0) == Transcription(
        "no tag", None, 30.0, [Segment(29.635, 59.635, "no tag")])


def test_output_formats():
    result = Transcription("Hello there. General Kenobi.", "en", 95.0, [
        Segment(0.0, 29.635, "Hello there.", True), Segment(29.635, 95.0, "General Kenobi.")])
    assert format_transcription(result, "txt") == "Hello there. General Kenobi.\n"
    assert json.loads(format_transcription(result, "json"))["segments"][1]["start"] == 29.635
    assert format_transcription(result, "srt") == (
        "1\n00:00:00,000 --> 00:00:29,635\nHello there.\n\n2\n00:00:29,635 --> 00:01:35,000\nGeneral Kenobi.\n")
    with pytest.raises(ValueError, match="unknown output format"):
        format_transcription(result, "vtt")
