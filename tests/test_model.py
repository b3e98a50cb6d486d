"""The model against transformers (the oracle), and the encoder's valid-frames path against the padded 30 s one."""

import pytest
import torch

from conftest import make_batch, make_hf_model
from qwen2audio.checkpoint import load_model, save_model
from qwen2audio.model import Qwen2Audio, Qwen2AudioConfig, audio_token_count, mel_frames_needed


def _logits_close(a, b, mask, atol):
    valid = mask.bool()
    diff = (a[valid] - b[valid]).abs().max().item()
    assert diff <= atol, f"max |logit difference| {diff:.3g} > {atol}"


def test_parity_checkpoint_saved_by_transformers(hf_name, tmp_path):
    hf = make_hf_model(hf_name)
    hf.save_pretrained(tmp_path)
    ours = load_model(tmp_path)
    inputs, labels = make_batch(hf.config.audio_config.num_mel_bins)
    with torch.no_grad():
        ref = hf(**inputs, labels=labels)
        out = ours(**inputs, labels=labels)
    _logits_close(ref.logits, out.logits, inputs["attention_mask"], 1e-4)
    assert out.loss.item() == pytest.approx(ref.loss.item(), abs=1e-4)


def test_parity_checkpoint_saved_by_us(hf_name, tmp_path):
    from transformers import Qwen2AudioForConditionalGeneration

    hf = make_hf_model(hf_name, seed=1)
    hf.save_pretrained(tmp_path / "hf")
    save_model(load_model(tmp_path / "hf"), tmp_path / "ours")
    reloaded = Qwen2AudioForConditionalGeneration.from_pretrained(tmp_path / "ours").eval()
    inputs, labels = make_batch(hf.config.audio_config.num_mel_bins, seed=1)
    with torch.no_grad():
        ref = hf(**inputs, labels=labels)
        out = reloaded(**inputs, labels=labels)
    _logits_close(ref.logits, out.logits, inputs["attention_mask"], 1e-4)
    assert out.loss.item() == pytest.approx(ref.loss.item(), abs=1e-4)


def test_right_padding_matches_left_padding(tmp_path):
    make_hf_model("gqa-untied").save_pretrained(tmp_path)
    model = load_model(tmp_path)
    inputs, labels = make_batch(128)
    mask = inputs["attention_mask"]
    shift = [int((m == 0).sum()) for m in mask]
    right = {k: v.clone() for k, v in inputs.items()}
    right_labels = labels.clone()
    for i, s in enumerate(shift):  # move the padding from the left to the right
        for t in (right["input_ids"], right["attention_mask"], right_labels):
            t[i] = torch.roll(t[i], -s)
    with torch.no_grad():
        a = model(**inputs, labels=labels)
        b = model(**right, labels=right_labels)
    for i, s in enumerate(shift):
        n = int(mask[i].sum())
        torch.testing.assert_close(a.logits[i, s:], b.logits[i, :n], atol=1e-4, rtol=0)
    assert a.loss.item() == pytest.approx(b.loss.item(), abs=1e-5)


def test_valid_frames_equal_padded_window_and_cost_less(tmp_path):
    make_hf_model("odd-80mel").save_pretrained(tmp_path)
    model = load_model(tmp_path)
    enc = model.audio_encoder
    for frames in (1, 2, 3, 57, 100, 101, 1999, 3000):
        mel = torch.randn(1, 80, 3000)
        lengths = torch.tensor([frames])
        with torch.no_grad():
            full = enc(mel, lengths)
            needed = min(int(mel_frames_needed(frames)), 3000)
            short = enc(mel[:, :, :needed], lengths)
        n = int(audio_token_count(frames))
        torch.testing.assert_close(short[:, :n], full[:, :n], atol=1e-5, rtol=0)
    # encode_audio hands the encoder only what the longest clip needs: 1 s of audio -> 101 mel frames, not 3000
    seen = []
    handle = enc.register_forward_hook(lambda m, args, out: seen.append(args[0].shape[-1]))
    fmask = torch.zeros(1, 3000, dtype=torch.long)
    fmask[0, :100] = 1
    with torch.no_grad():
        model.encode_audio(torch.randn(1, 80, 3000), fmask)
    handle.remove()
    assert seen == [101]


def test_placeholder_count_mismatch_is_a_clear_error(tmp_path):
    make_hf_model("mha-tied").save_pretrained(tmp_path)
    model = load_model(tmp_path)
    inputs, _ = make_batch(128)
    inputs["input_ids"][0, -1] = 151646  # one <|AUDIO|> too many
    with pytest.raises(ValueError, match=r"hold \d+ <\|AUDIO\|> tokens but the audio gives \d+ frames"):
        model(**inputs)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_close_to_fp32(dtype, tmp_path):
    make_hf_model("gqa-untied").save_pretrained(tmp_path)
    fp32 = load_model(tmp_path)
    half = load_model(tmp_path, dtype=dtype)
    assert half.dtype == dtype and half.audio_encoder.conv1.weight.dtype == dtype
    inputs, _ = make_batch(128)
    with torch.no_grad():
        a = fp32(**inputs).logits
        b = half(**inputs).logits.float()
    valid = inputs["attention_mask"].bool()
    rel = (a[valid] - b[valid]).norm() / a[valid].norm()
    assert rel < 0.05, f"{dtype} logits deviate by {rel:.3f} (relative)"


def test_fp16_encoder_clamps_instead_of_overflowing():
    cfg = Qwen2AudioConfig.from_name("tiny-random")
    model = Qwen2Audio(cfg).to(torch.float16)
    with torch.no_grad():
        for p in model.audio_encoder.parameters():
            p.zero_()
        layer = model.audio_encoder.layers[0]
        layer.fc2.bias.fill_(2e4)  # 6e4 in the residual stream + 2e4 from the MLP overflows fp16's 65504
        out = layer(torch.full((1, 4, cfg.audio.dim), 6e4, dtype=torch.float16), None)
    assert torch.isfinite(out).all() and out.abs().max() <= 65504 - 1000


def test_full_size_config_on_meta_device():
    with torch.device("meta"):
        model = Qwen2Audio(Qwen2AudioConfig.from_name("qwen2-audio-7b"))
    assert sum(p.numel() for p in model.parameters()) == 8_397_094_912


def test_prefill_paths_equal_the_plain_forward():
    """What a prefill uses: no mask (causal, nothing padded) and `last_only` (the last layer computes the last
    position alone) give the plain forward's numbers, and every layer's keys and values still reach the cache."""
    from qwen2audio.model.kv_cache import setup_caches
    from qwen2audio.model.qwen2 import causal_padding_mask

    torch.manual_seed(0)
    cfg = Qwen2AudioConfig.from_name("tiny-random")
    decoder = Qwen2Audio(cfg).decoder.eval()
    x = torch.randn(2, 9, cfg.text.dim)
    positions = torch.arange(9)[None].expand(2, -1)
    with torch.no_grad():
        full = decoder(x, positions, causal_padding_mask(torch.ones(2, 9)))
        torch.testing.assert_close(decoder(x, positions, None), full, rtol=1e-5, atol=1e-5)
        setup_caches(decoder, 2, 9)
        last = decoder(x, positions, None, cache_positions=torch.arange(9), last_only=True)
        assert last.shape == (2, 1, cfg.text.dim)
        torch.testing.assert_close(last[:, 0], full[:, -1], rtol=1e-5, atol=1e-5)
        k_last = decoder.layers[-1].attn.kv_cache.k.clone()
        decoder(x, positions, None, cache_positions=torch.arange(9))  # the same cache, every position computed
        torch.testing.assert_close(decoder.layers[-1].attn.kv_cache.k, k_last, rtol=0, atol=0)
        padded = torch.ones(2, 9)
        padded[1, :3] = 0  # left padding: a mask, last_only still right for every row
        mask = causal_padding_mask(padded)
        want = decoder(x, positions, mask)[:, -1]
        got = decoder(x, positions, mask, cache_positions=torch.arange(9), last_only=True)[:, 0]
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
