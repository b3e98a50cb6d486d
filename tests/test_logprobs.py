"""The one training/evaluation forward (TokenLogProbs) against the model's plain forward, and its audio paths."""

from types import SimpleNamespace

import pytest
import torch

from conftest import make_batch, make_hf_model
from qwen2audio.checkpoint import load_model
from qwen2audio.logprobs import IdleAudio, TokenLogProbs, sequence_logps, supervised_tokens


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    path = tmp_path_factory.mktemp("model")
    make_hf_model("gqa-untied").save_pretrained(path)
    return load_model(path)


def test_token_logprobs_equal_the_forward_log_softmax_at_supervised_positions(model):
    inputs, labels = make_batch(128)
    with torch.no_grad():
        logits = model(**inputs).logits
        got = TokenLogProbs(model)(inputs["input_ids"], inputs["attention_mask"], labels, inputs["input_features"],
                                   inputs["feature_attention_mask"])
    supervised = supervised_tokens(labels, inputs["attention_mask"])
    assert supervised.sum() == 6  # both answers, 2 + 4 tokens
    expected = logits[:, :-1].float().log_softmax(-1).gather(-1, labels[:, 1:].clamp(min=0)[..., None])[..., 0]
    torch.testing.assert_close(got[supervised], expected[supervised], atol=1e-5, rtol=0)
    assert (got[~supervised] == 0).all()


def test_cached_encoder_frames_and_repeated_audio_give_the_same_log_probs(model):
    inputs, labels = make_batch(128)
    ids, mask, feats, fmask = (inputs[k] for k in ("input_ids", "attention_mask", "input_features",
                                                    "feature_attention_mask"))
    module = TokenLogProbs(model)
    with torch.no_grad():
        from_features = module(ids, mask, labels, feats, fmask)
        frames = model.encoder_frames(feats, fmask)
        from_frames = module(ids, mask, labels, audio_frames=frames)
        # the rows twice over (DPO's chosen and rejected rows), the audio encoded once
        twice = module(ids.repeat(2, 1), mask.repeat(2, 1), labels.repeat(2, 1), feats, fmask, audio_repeat=2)
    torch.testing.assert_close(from_frames, from_features, atol=1e-5, rtol=0)
    torch.testing.assert_close(twice, from_features.repeat(2, 1), atol=1e-5, rtol=0)


@pytest.mark.parametrize("idle", [IdleAudio.ENCODER, IdleAudio.PROJECTOR])
def test_idle_audio_runs_the_audio_modules_at_zero_weight(model, idle):
    ids = torch.tensor([[872, 198, 100, 200], [100, 200, 300, 400]])
    text_only = ids, torch.ones_like(ids), ids
    model.requires_grad_(True)
    try:
        skipped = TokenLogProbs(model)(*text_only)
        idle_run = TokenLogProbs(model, idle)(*text_only)
        torch.testing.assert_close(idle_run, skipped, atol=0, rtol=0)
        model.zero_grad(set_to_none=True)
        idle_run.sum().backward()
    finally:
        model.requires_grad_(False)
    assert model.projector.linear.weight.grad is not None and (model.projector.linear.weight.grad == 0).all()
    encoder_grad = model.audio_encoder.conv1.weight.grad
    assert (encoder_grad is not None) == (idle is IdleAudio.ENCODER)
    model.zero_grad(set_to_none=True)


def test_sequence_logps_sum_or_average_the_answers_of_chosen_and_rejected_rows():
    token_logps = torch.tensor([[0.0, -1.0, -2.0], [0.0, 0.0, -3.0], [-1.0, -1.0, 0.0], [0.0, -4.0, -4.0]])
    labels = torch.tensor([[5, 5, 6, 7], [5, 5, 5, 8], [5, 6, 7, 5], [5, 5, 6, 7]])
    labels[labels == 5] = -100
    batch = SimpleNamespace(n_samples=2, labels=labels, attention_mask=torch.ones_like(labels))
    chosen, rejected = sequence_logps(token_logps, batch)
    assert chosen.tolist() == [-3.0, -3.0] and rejected.tolist() == [-2.0, -8.0]
    chosen, rejected = sequence_logps(token_logps, batch, average=True)
    assert chosen.tolist() == [-1.5, -3.0] and rejected.tolist() == [-1.0, -4.0]
