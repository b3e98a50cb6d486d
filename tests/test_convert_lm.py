"""The language model of `qwen2audio build` (convert/lm.py): a Qwen2 checkpoint's logits are kept, a vocabulary
without Qwen2-Audio's tokens is grown with the mean embedding, a tied config with a different stored head stays
untied, and a new LM from `--llm-config` is initialised as transformers does, seeded."""

import json

import pytest
import torch
from safetensors.torch import load_file

from conftest import make_batch
from qwen2audio import load
from qwen2audio.checkpoint import CheckpointError
from qwen2audio.convert import build, build_model
from test_convert_build import TOL, make_dirs, make_qwen2, make_whisper, run_cli, with_config


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    return make_dirs(tmp_path_factory)


def test_text_logits_equal_qwen2(dirs):
    from transformers import Qwen2ForCausalLM
    ids = torch.randint(0, 151643, (2, 13), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = Qwen2ForCausalLM.from_pretrained(dirs["qwen2"]).eval()(ids).logits
        got = load(dirs["built"])(ids).logits
    assert got.shape == expected.shape == (2, 13, 151936)
    assert (got - expected).abs().max() < TOL


def test_small_vocabulary_is_resized_with_the_mean_embedding(dirs, tmp_path):
    """An LLM without rows for the audio tokens (151646 rows, tied): grown to 151680 rows; 128 mel bins."""
    from transformers import Qwen2AudioForConditionalGeneration, Qwen2ForCausalLM
    whisper = make_whisper(tmp_path / "whisper128", n_mels=128, seed=2)
    qwen2 = make_qwen2(tmp_path / "small", vocab_size=151646, tie=True, seed=3)
    lines = []
    build(whisper, qwen2, tmp_path / "out", log=lines.append)
    assert any("resized to 151680" in line for line in lines), lines

    model = load(tmp_path / "out")
    old = load_file(qwen2 / "model.safetensors")["model.embed_tokens.weight"]
    embed = model.decoder.embed_tokens.weight
    assert embed.shape == (151680, 32) and model.config.text.tie_embeddings
    assert torch.equal(embed[:151646], old)
    torch.testing.assert_close(embed[151646:], old.mean(0).expand(151680 - 151646, -1))
    assert json.loads((tmp_path / "out" / "preprocessor_config.json").read_text())["feature_size"] == 128

    hf, info = Qwen2AudioForConditionalGeneration.from_pretrained(tmp_path / "out", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    ids = torch.randint(0, 151643, (1, 9), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = Qwen2ForCausalLM.from_pretrained(qwen2).eval()(ids).logits
        got = model(ids).logits
    assert (got[..., :151646] - expected).abs().max() < TOL


def test_tied_config_with_a_different_stored_head_stays_untied(dirs, tmp_path):
    qwen2 = with_config(dirs["qwen2"], tmp_path / "q", tie_word_embeddings=True)
    lines = []
    model = build_model(dirs["whisper"], qwen2, log=lines.append)
    assert not model.config.text.tie_embeddings and any("kept untied" in line for line in lines)
    stored = load_file(qwen2 / "model.safetensors")["lm_head.weight"]
    assert torch.equal(model.decoder.lm_head.weight, stored)


# -- a new language model (--llm-config) -----------------------------------------------------------------------------

SMALL_LM = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                intermediate_size=64, tie_word_embeddings=True, rope_theta=1e6, max_position_embeddings=512,
                rms_norm_eps=1e-6)


@pytest.fixture(scope="module")
def new_lm(dirs):
    out = dirs["root"] / "new-lm"
    rc, printed, err = run_cli("build", "--encoder", dirs["whisper"], "--llm-config", json.dumps(SMALL_LM),
                               "--seed", "3", "--out", out)
    assert rc == 0, err
    return out, printed


def test_new_lm_is_initialised_as_transformers_does(new_lm):
    from transformers import Qwen2Config, Qwen2ForCausalLM
    out, printed = new_lm
    assert "llm        new Qwen2, seed 4: vocab 151680" in printed and "N(0, 0.02^2)" in printed
    ours = {k: v for k, v in load(out).state_dict().items() if k.startswith("decoder.")}
    torch.manual_seed(0)
    theirs = Qwen2ForCausalLM(Qwen2Config(vocab_size=151680, **SMALL_LM)).state_dict()
    assert len(ours) == len([k for k in theirs if k != "lm_head.weight"])
    for name, t in ours.items():
        reference = theirs["model." + name[len("decoder."):].replace("attn_norm", "input_layernorm")
                           .replace("mlp_norm", "post_attention_layernorm").replace(".attn.", ".self_attn.")]
        assert t.shape == reference.shape, name
        if reference.ndim == 1 and reference.std() == 0:  # biases 0, norms 1: exactly
            assert torch.equal(t, reference), name
        else:  # weights N(0, 0.02^2), ours and transformers' alike: mean and std within 5 sigma of sampling error
            for w in (t, reference):
                assert abs(w.mean()) < 5 * 0.02 / w.numel() ** 0.5, name
                assert abs(w.std() / 0.02 - 1) < 5 / (2 * w.numel()) ** 0.5, name


def test_new_lm_loads_in_transformers_with_equal_logits(new_lm):
    from transformers import Qwen2AudioForConditionalGeneration
    out, _ = new_lm
    config = json.loads((out / "config.json").read_text())["text_config"]
    assert {k: config[k] for k in SMALL_LM} == SMALL_LM and config["vocab_size"] == 151680
    hf, info = Qwen2AudioForConditionalGeneration.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    inputs, _ = make_batch(n_mels=80)
    with torch.no_grad():
        expected = hf.eval()(**inputs).logits
        got = load(out)(**inputs).logits
    valid = inputs["attention_mask"].bool()
    assert (got[valid] - expected[valid]).abs().max() < TOL


def test_new_lm_is_seeded_and_reads_a_json_file(dirs, new_lm, tmp_path):
    spec = tmp_path / "lm.json"
    spec.write_text(json.dumps(SMALL_LM))
    same = build_model(dirs["whisper"], llm_config=spec, seed=3).state_dict()
    other = build_model(dirs["whisper"], llm_config=SMALL_LM, seed=4).state_dict()
    saved = load(new_lm[0]).state_dict()
    name = "decoder.layers.1.mlp.up_proj.weight"
    assert torch.equal(same[name], saved[name]) and not torch.equal(other[name], saved[name])
    assert same["decoder.embed_tokens.weight"].dtype == torch.float32  # a new LM defaults to float32


def test_bad_llm_configs_are_named(dirs, tmp_path):
    with pytest.raises(CheckpointError, match="unknown field.* vocab_size .the vocabulary comes from the tokenizer"):
        build_model(dirs["whisper"], llm_config={**SMALL_LM, "vocab_size": 1000})
    with pytest.raises(CheckpointError, match="give intermediate_size"):
        build_model(dirs["whisper"], llm_config={k: v for k, v in SMALL_LM.items() if k != "intermediate_size"})
    with pytest.raises(CheckpointError, match="invalid JSON"):
        build_model(dirs["whisper"], llm_config='{"hidden_size": 32,')
    with pytest.raises(CheckpointError, match="neither a JSON file nor inline JSON"):
        build_model(dirs["whisper"], llm_config=str(tmp_path / "missing.json"))
    with pytest.raises(CheckpointError, match="not divisible by n_heads"):
        build_model(dirs["whisper"], llm_config={**SMALL_LM, "num_attention_heads": 5})
    with pytest.raises(CheckpointError, match="exactly one of the two"):
        build_model(dirs["whisper"], dirs["qwen2"], llm_config=SMALL_LM)
    with pytest.raises(SystemExit):  # argparse: --llm and --llm-config are mutually exclusive
        run_cli("build", "--encoder", dirs["whisper"], "--llm", dirs["qwen2"], "--llm-config", "{}", "--out",
                tmp_path / "x")
