"""Each loader on a small tree the test writes in the real layout (speech from espeak-ng, converted with sox and
ffmpeg), plus the official JSONL manifests and Hugging Face parquet exports."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import write_speech
from qwen2audio.audio import SAMPLE_RATE, load_audio
from qwen2audio.eval.datasets import load_items
from qwen2audio.tokenizer import base_prompt

pytestmark = pytest.mark.skipif(not all(shutil.which(t) for t in ("espeak-ng", "sox", "ffmpeg")),
                                reason="needs espeak-ng, sox and ffmpeg")


@pytest.fixture(scope="module")
def speech(tmp_path_factory) -> Path:
    """One short spoken sentence (wav); the layouts below convert it to what each set ships."""
    return write_speech(tmp_path_factory.mktemp("speech") / "speech.wav", "hello world", voice="en")


def convert(src: Path, dst: Path) -> Path:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.suffix in (".wav", ".flac"):
        subprocess.run(["sox", "-R", str(src), "-r", str(SAMPLE_RATE), str(dst)], check=True)
    elif dst.suffix == ".mp4":  # a video with the speech as its audio track, as MELD ships
        subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-f", "lavfi", "-i", "color=c=black:s=16x16:d=1",
                        "-i", str(src), "-shortest", "-c:v", "mpeg4", "-c:a", "aac", str(dst)], check=True)
    else:
        subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-i", str(src), str(dst)], check=True)
    return dst


def check_audio(items):
    for item in items:
        assert load_audio(item.audio).size > 1000


def test_librispeech(tmp_path, speech):
    chapter = tmp_path / "LibriSpeech" / "test-clean" / "1089" / "134686"
    for n in range(2):
        convert(speech, chapter / f"1089-134686-000{n}.flac")
    (chapter / "1089-134686.trans.txt").write_text("1089-134686-0000 HELLO WORLD\n1089-134686-0001 HE SAID\n")
    items = load_items("librispeech", tmp_path / "LibriSpeech")
    assert [(i.id, i.source, i.gt, i.language) for i in items] == [
        ("1089-134686-0000", "librispeech_test_clean", "HELLO WORLD", "en"),
        ("1089-134686-0001", "librispeech_test_clean", "HE SAID", "en")]
    assert items[0].prompt == base_prompt("asr", "en")
    check_audio(items)
    assert len(load_items("librispeech", tmp_path, limit=1)) == 1


def test_aishell2(tmp_path, speech):
    test = tmp_path / "AISHELL-2" / "iOS" / "test"
    convert(speech, test / "wav" / "T0055G0013" / "IT0055G0013S0001.wav")
    (test / "wav.scp").write_text("IT0055G0013S0001\twav/T0055G0013/IT0055G0013S0001.wav\n")
    (test / "trans.txt").write_text("IT0055G0013S0001\t你好世界\n")
    dev = tmp_path / "AISHELL-2" / "iOS" / "dev"  # a dev set beside it is not read
    dev.mkdir()
    (dev / "wav.scp").write_text("ID0001\tnowhere.wav\n")
    (dev / "trans.txt").write_text("ID0001\t不要\n")
    [item] = load_items("aishell2", tmp_path)
    assert (item.source, item.gt, item.language) == ("aishell2_ios", "你好世界", "zh")
    assert item.prompt.endswith("<|zh|>")
    check_audio([item])


def test_commonvoice(tmp_path, speech):
    for locale in ("en", "zh-HK"):
        convert(speech, tmp_path / "cv-corpus-15.0" / locale / "clips" / f"common_voice_{locale}_1.mp3")
        (tmp_path / "cv-corpus-15.0" / locale / "test.tsv").write_text(
            "client_id\tpath\tsentence\tup_votes\n"
            f"abc\tcommon_voice_{locale}_1.mp3\t{'Hello world.' if locale == 'en' else '你好'}\t2\n")
    items = load_items("commonvoice", tmp_path)
    assert [(i.source, i.language, i.gt) for i in items] == [("cv15_en", "en", "Hello world."),
                                                            ("cv15_yue", "yue", "你好")]
    assert items[1].prompt.endswith("<|yue|>")
    check_audio(items)


def test_fleurs(tmp_path, speech):
    lang = tmp_path / "cmn_hans_cn"
    convert(speech, lang / "audio" / "test" / "1234.wav")
    (lang / "test.tsv").write_text("1\t1234.wav\t你好，世界。\t你好 世界\t你 好\t50000\tMALE\n")
    [item] = load_items("fleurs", tmp_path)
    assert (item.source, item.gt, item.language) == ("fleurs_zh", "你好，世界。", "zh")
    check_audio([item])


def test_covost2(tmp_path, speech):
    convert(speech, tmp_path / "en" / "clips" / "common_voice_en_7.mp3")
    (tmp_path / "en" / "covost_v2.en_de.test.tsv").write_text(
        "path\tsentence\ttranslation\tclient_id\ncommon_voice_en_7.mp3\tHello world.\tHallo Welt.\tx\n")
    [item] = load_items("covost2", tmp_path)
    assert (item.source, item.gt, item.language, item.target) == ("covost2_en_de", "Hallo Welt.", "en", "de")
    assert item.prompt == base_prompt("translate", "en", "de")
    check_audio([item])


def test_meld_audio_from_mp4(tmp_path, speech):
    convert(speech, tmp_path / "MELD.Raw" / "output_repeated_splits_test" / "dia0_utt1.mp4")
    (tmp_path / "MELD.Raw" / "test_sent_emo.csv").write_text(
        "Sr No.,Utterance,Speaker,Emotion,Sentiment,Dialogue_ID,Utterance_ID\n"
        '1,"Hello, world",Joey,joy,positive,0,1\n')
    [item] = load_items("meld", tmp_path)
    assert (item.id, item.gt, item.prompt) == ("dia0_utt1", "joy", base_prompt("emotion"))
    check_audio([item])


def test_vocalsound_label_from_file_name(tmp_path, speech):
    for name in ("f0003_0_cough", "m0101_2_throatclearing", "f0004_1_laughter"):
        convert(speech, tmp_path / "audio_16k" / f"{name}.wav")
    items = load_items("vocalsound", tmp_path)
    assert [i.gt for i in items] == ["Cough", "Laughter", "Throat clearing"]  # sorted by file name
    assert items[0].prompt == base_prompt("vocal_sound")


def test_official_manifest(tmp_path, speech):
    convert(speech, tmp_path / "audio" / "a.flac")
    rows = [{"audio": "audio/a.flac", "source": "librispeech_test_other", "gt": "HELLO WORLD",
             "prompt": "Detect the language and recognize the speech: <|en|>"}]
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    [item] = load_items("librispeech", tmp_path / "m.jsonl")
    assert (item.source, item.language, item.prompt) == ("librispeech_test_other", "en", base_prompt("asr", "en"))
    check_audio([item])


def test_generic_asr_manifests(tmp_path, speech):
    convert(speech, tmp_path / "a.wav")
    for name, language in (("synth_en", "en"), ("synth_zh", "zh")):
        row = {"audio": "a.wav", "source": name, "gt": "x", "language": language,
               "prompt": f"Detect the language and recognize the speech: <|{language}|>"}
        (tmp_path / f"{name}.jsonl").write_text(json.dumps(row) + "\n")
    items = load_items("asr", tmp_path)
    assert [(i.source, i.language) for i in items] == [("synth_en", "en"), ("synth_zh", "zh")]


def test_parquet_export(tmp_path, speech):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    flac = convert(speech, tmp_path / "a.flac").read_bytes()
    table = pa.table({"audio": [{"bytes": flac, "path": "a.flac"}], "label": [2]})
    pq.write_table(table, tmp_path / "test-00000-of-00001.parquet")
    [item] = load_items("vocalsound", tmp_path / "test-00000-of-00001.parquet")
    assert (item.gt, item.source) == ("Cough", "vocalsound")  # a ClassLabel index → its name
    table = pa.table({"audio": [{"bytes": flac, "path": "x.flac"}], "text": ["HELLO WORLD"], "id": ["u1"]})
    pq.write_table(table, tmp_path / "test.parquet")
    [item] = load_items("librispeech", tmp_path / "test.parquet")
    assert (item.id, item.gt, item.source) == ("u1", "HELLO WORLD", "librispeech_test")
    check_audio([item])


def test_missing_data_is_one_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_items("librispeech", tmp_path / "nowhere")
    with pytest.raises(ValueError, match="found no items"):
        load_items("librispeech", tmp_path)
    with pytest.raises(ValueError, match="unknown benchmark"):
        load_items("nope", tmp_path)
