"""The processor against transformers' Qwen2AudioProcessor, and the whole pipeline (processor + model) against
transformers on real waveforms."""

import pytest
import torch

from conftest import make_hf_model, tone
from qwen2audio import Processor, Qwen2AudioForConditionalGeneration, audios_in_conversation
from qwen2audio.audio import SAMPLE_RATE
from qwen2audio.model import audio_token_count

CONVERSATIONS = [
    [{"role": "user", "content": [{"type": "audio", "audio": "a"}, {"type": "text", "text": "What's that sound?"}]}],
    [{"role": "system", "content": "You are terse."},
     {"role": "user", "content": [{"type": "audio", "audio": "b"}, {"type": "text", "text": "Transcribe."}]},
     {"role": "assistant", "content": "Hello there."},
     {"role": "user", "content": [{"type": "text", "text": "And the mood, in one word?"}]}],
]
AUDIOS = [tone(0.7, 330.0, noise=0.02, seed=1), tone(23.4, 550.0, noise=0.02, seed=2)]  # one under 1 s, one over 20 s


@pytest.fixture(scope="module")
def hf_processor(tmp_path_factory):
    from transformers import AutoTokenizer, Qwen2AudioProcessor, WhisperFeatureExtractor

    directory = tmp_path_factory.mktemp("tok")
    Processor().tokenizer.save_pretrained(directory)
    return Qwen2AudioProcessor(feature_extractor=WhisperFeatureExtractor(feature_size=128),
                               tokenizer=AutoTokenizer.from_pretrained(directory))


@pytest.mark.parametrize("side", ["left", "right"])
def test_same_inputs_as_transformers(hf_processor, side):
    ours = Processor(padding_side=side)
    prompts = [ours.apply_chat_template(c, add_generation_prompt=True) for c in CONVERSATIONS]
    assert prompts == [hf_processor.apply_chat_template(c, add_generation_prompt=True, tokenize=False)
                       for c in CONVERSATIONS]
    hf_processor.tokenizer.padding_side = side
    ref = hf_processor(text=prompts, audio=AUDIOS, sampling_rate=SAMPLE_RATE, return_tensors="pt", padding=True)
    out = ours(text=prompts, audio=AUDIOS, sampling_rate=SAMPLE_RATE)
    assert set(out) == {"input_ids", "attention_mask", "input_features", "feature_attention_mask"}
    torch.testing.assert_close(out.input_ids, ref["input_ids"])
    torch.testing.assert_close(out.attention_mask, ref["attention_mask"].long())
    torch.testing.assert_close(out.feature_attention_mask, ref["feature_attention_mask"].long())
    torch.testing.assert_close(out.input_features, ref["input_features"], atol=1e-4, rtol=0)
    assert out.input_features.shape == (2, 128, 3000)
    n_audio = (out.input_ids == 151646).sum(-1).tolist()
    assert n_audio == [int(audio_token_count(len(a) // 160)) for a in AUDIOS] == [17, 585]


def test_whole_pipeline_equals_transformers(tmp_path, hf_processor):
    """Waveforms -> our processor -> our model == waveforms -> transformers' processor -> transformers' model."""
    hf_model = make_hf_model("gqa-untied")
    hf_model.save_pretrained(tmp_path)
    ours = Qwen2AudioForConditionalGeneration.from_pretrained(tmp_path)
    prompts = [ours.processor.apply_chat_template(c, add_generation_prompt=True) for c in CONVERSATIONS]
    hf_processor.tokenizer.padding_side = "left"
    ref_inputs = hf_processor(text=prompts, audio=AUDIOS, sampling_rate=SAMPLE_RATE, return_tensors="pt", padding=True)
    inputs = ours.processor(text=prompts, audio=AUDIOS, sampling_rate=SAMPLE_RATE)
    with torch.no_grad():
        ref = hf_model(**ref_inputs).logits
        out = ours(**inputs).logits
    valid = inputs.attention_mask.bool()
    assert (out[valid] - ref[valid]).abs().max().item() < 1e-4


def test_placeholder_and_audio_counts_must_agree():
    processor = Processor()
    with pytest.raises(ValueError, match=r"holds 2 <\|AUDIO\|> but 1 audios"):
        processor(text="<|AUDIO|> and <|AUDIO|>", audio=[AUDIOS[0]], sampling_rate=SAMPLE_RATE)
    with pytest.raises(ValueError, match="list of numbers"):
        processor(text="<|AUDIO|>", audio=[0.1, 0.2, 0.3], sampling_rate=SAMPLE_RATE)
    with pytest.raises(ValueError, match="padding_side"):
        Processor(padding_side="middle")


def test_long_audio_is_cut_with_a_warning_or_refused():
    processor = Processor()
    long = tone(45.0, noise=0.02)
    with pytest.warns(UserWarning, match="longer than 30 s and was cut"):
        out = processor(text="<|audio_bos|><|AUDIO|><|audio_eos|>Transcribe:", audio=long, sampling_rate=SAMPLE_RATE)
    assert int(out.feature_attention_mask.sum()) == 3000 and int((out.input_ids == 151646).sum()) == 750
    with pytest.raises(ValueError, match="split it into windows"):
        processor(text="<|AUDIO|>", audio=long, sampling_rate=SAMPLE_RATE, long_audio="error")


def test_audio_sources_follow_the_template_numbering():
    conversation = [
        {"role": "user", "content": [{"type": "audio", "audio": "one.wav"}, {"type": "text", "text": "hi"},
                                     {"type": "audio", "audio_url": {"url": "data:audio/wav;base64,AA"}}]},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": [{"type": "audio", "path": "three.flac"}]},
    ]
    assert audios_in_conversation(conversation) == ["one.wav", "data:audio/wav;base64,AA", "three.flac"]
    text = Processor().apply_chat_template(conversation)
    assert [text.count(f"Audio {i}:") for i in (1, 2, 3)] == [1, 1, 1]


def test_save_pretrained_roundtrip_and_transformers_reads_it(tmp_path):
    from transformers import AutoProcessor

    Processor().save_pretrained(tmp_path)
    reloaded = Processor.from_pretrained(tmp_path)
    hf = AutoProcessor.from_pretrained(tmp_path)
    assert type(hf).__name__ == "Qwen2AudioProcessor"
    assert hf.feature_extractor.feature_size == reloaded.n_mels == 128
    prompt = "<|audio_bos|><|AUDIO|><|audio_eos|>Detect the language and recognize the speech: <|en|>"
    ref = hf(text=prompt, audio=AUDIOS[0], sampling_rate=SAMPLE_RATE, return_tensors="pt")
    out = reloaded(text=prompt, audio=AUDIOS[0], sampling_rate=SAMPLE_RATE)
    torch.testing.assert_close(out.input_ids, ref["input_ids"])
    torch.testing.assert_close(out.input_features, ref["input_features"], atol=1e-4, rtol=0)


def test_inputs_move_to_device_and_dtype():
    out = Processor()(text="<|AUDIO|>", audio=AUDIOS[0], sampling_rate=SAMPLE_RATE).to("cpu", torch.bfloat16)
    assert out.input_features.dtype == torch.bfloat16 and out.input_ids.dtype == torch.long
