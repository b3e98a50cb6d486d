"""Generation against transformers (greedy, token for token), batching, sampling options, decode kernels and
weight-only quantisation."""

import pytest
import torch
import torch.nn.functional as F

from conftest import make_batch, make_hf_model
from qwen2audio import load
from qwen2audio.generate import ContinuousBatch, GenerationConfig, Generator, SamplerState, prefill, sample
from qwen2audio.model.kv_cache import make_caches
from qwen2audio.quant import DecodeLinear, Int4Linear, Int8Linear, quantize, use_decode_kernels

NEW = 12


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    directory = tmp_path_factory.mktemp("gen")
    hf = make_hf_model("gqa-untied")
    hf.save_pretrained(directory)
    return directory, hf


def _one(inputs, i):
    """Row i of a left-padded batch, unpadded."""
    keep = inputs["attention_mask"][i].bool()
    return {"input_ids": inputs["input_ids"][i:i + 1, keep], "attention_mask": inputs["attention_mask"][i:i + 1, keep],
            "input_features": inputs["input_features"][i:i + 1],
            "feature_attention_mask": inputs["feature_attention_mask"][i:i + 1]}


def test_greedy_equals_transformers_on_eight_clips(checkpoint):
    directory, hf = checkpoint
    model = load(directory)
    hf.generation_config.eos_token_id = None
    for seed in range(4):  # 4 batches of 2 = 8 clips, lengths from 0.3 s to 29 s
        seconds = (0.3 + 3 * seed, 29.0 - 5 * seed)
        inputs, _ = make_batch(128, seconds=seconds, seed=seed)
        with torch.no_grad():
            ref = hf.generate(**inputs, max_new_tokens=NEW, do_sample=False, pad_token_id=151643)
        assert torch.equal(model.generate(**inputs, max_new_tokens=NEW, eos_token_id=()), ref)


def test_batched_equals_one_by_one(checkpoint):
    model = load(checkpoint[0])
    inputs, _ = make_batch(128, seconds=(1.5, 17.0))
    config = GenerationConfig(max_new_tokens=NEW)
    batched = Generator(model, compile=False).generate(inputs, config)
    for i in range(2):
        alone = Generator(model, compile=False).generate(_one(inputs, i), config)
        assert torch.equal(batched[i, -NEW:], alone[0, -NEW:])


def test_compiled_decode_kernels_give_the_same_tokens(checkpoint):
    inputs, _ = make_batch(128)
    config = GenerationConfig(max_new_tokens=NEW)
    eager = Generator(load(checkpoint[0]), compile=False).generate(inputs, config)
    fast = use_decode_kernels(load(checkpoint[0]), gemv_max_rows=2)
    assert torch.equal(Generator(fast, compile=True).generate(inputs, config), eager)


def test_eos_stops_and_pads_finished_rows(checkpoint):
    model = load(checkpoint[0])
    inputs, _ = make_batch(128)
    free = model.generate(**inputs, max_new_tokens=NEW, eos_token_id=())
    eos = int(free[0, -NEW + 2])  # row 0's third new token becomes its end
    out = model.generate(**inputs, max_new_tokens=NEW, eos_token_id=eos, pad_token_id=7)
    row0 = out[0, -out.shape[1] + inputs["input_ids"].shape[1]:].tolist()
    assert row0[:3] == free[0, -NEW:-NEW + 3].tolist() and set(row0[3:]) <= {7}
    if eos not in free[1, -NEW:].tolist():
        assert out.shape[1] == free.shape[1] and torch.equal(out[1], free[1])


def test_repetition_penalty_matches_transformers(checkpoint):
    directory, hf = checkpoint
    inputs = _one(make_batch(128)[0], 0)
    hf.generation_config.eos_token_id = None
    with torch.no_grad():
        ref = hf.generate(**inputs, max_new_tokens=NEW, do_sample=False, repetition_penalty=1.5, pad_token_id=0)
    assert torch.equal(load(directory).generate(**inputs, max_new_tokens=NEW, repetition_penalty=1.5,
                                                eos_token_id=()), ref)


def test_sampling_is_seeded_and_filters_behave():
    torch.manual_seed(0)
    logits = torch.randn(3, 50)
    sampled = [sample(logits, GenerationConfig(do_sample=True, top_k=5), None,
                      torch.Generator().manual_seed(1)) for _ in range(2)]
    assert torch.equal(sampled[0], sampled[1])
    top5 = logits.topk(5).indices
    for _ in range(20):
        token = sample(logits, GenerationConfig(do_sample=True, top_k=5, temperature=2.0), None, None)
        assert all(int(t) in top5[i] for i, t in enumerate(token))
    # top_p that only the best token reaches on its own: sampling is greedy
    peaked = torch.tensor([[10.0, 0.0, 0.0, 0.0]])
    assert int(sample(peaked, GenerationConfig(do_sample=True, top_p=0.5), None, None)) == 0
    assert torch.equal(sample(logits, GenerationConfig(do_sample=True, top_k=1), None, None), logits.argmax(-1))


def test_prefill_into_a_batch_row_equals_the_generators_prefill(checkpoint):
    """One prompt, prefilled by Generator (its own cache) and into row 2 of a continuous batch: the same logits to
    the bit, the same keys and values in the row's slots [0, T), nothing written to the other rows; and the logits
    are the plain forward's at the last position."""
    model = load(checkpoint[0])
    inputs = _one(make_batch(128, seconds=(4.0, 9.0))[0], 1)
    T = inputs["input_ids"].shape[1]
    generator = Generator(model, compile=False)
    first, = generator.stream(inputs, GenerationConfig(max_new_tokens=1))
    generator_caches = [layer.attn.kv_cache for layer in model.decoder.layers]
    batch = ContinuousBatch(model, n_rows=3, max_len=512, compile=False)
    in_row = batch.prefill(2, inputs)
    assert in_row.shape == (model.config.text.vocab_size,) and batch.lengths == [0, 0, T]
    assert torch.equal(in_row, prefill(model, inputs, make_caches(model.decoder, 1, T))[0])
    assert int(in_row.argmax()) == int(first[0])
    for row_cache, own in zip(batch.caches, generator_caches):
        assert torch.equal(row_cache.k[2, :, :T], own.k[0, :, :T])
        assert torch.equal(row_cache.v[2, :, :T], own.v[0, :, :T])
        assert not row_cache.k[:2].any() and not row_cache.k[2, :, T:].any()
    with torch.no_grad():
        forward = model(**inputs).logits[0, -1].float()
    torch.testing.assert_close(in_row, forward, atol=1e-4, rtol=1e-4)


def test_prefill_of_a_left_padded_batch_equals_each_row_alone(checkpoint):
    model = load(checkpoint[0])
    inputs, _ = make_batch(128, seconds=(1.5, 17.0))
    padded = prefill(model, inputs, make_caches(model.decoder, 2, inputs["input_ids"].shape[1]))
    assert padded.shape == (2, model.config.text.vocab_size) and padded.dtype == torch.float32
    for i in range(2):
        alone = _one(inputs, i)
        torch.testing.assert_close(padded[i], prefill(model, alone, make_caches(model.decoder, 1, 512))[0],
                                   atol=1e-4, rtol=1e-4)


def test_sampler_state_draws_what_sample_draws_by_hand():
    """A seeded SamplerState over 2 rows for 5 steps: its tokens are `sample`'s with one generator seeded once and
    the seen mask kept by hand (prompt tokens without the padding, then every accepted token)."""
    torch.manual_seed(0)
    steps = torch.randn(5, 2, 40)
    input_ids = torch.tensor([[0, 3, 3, 7], [0, 0, 5, 9]])
    attention_mask = torch.tensor([[1, 1, 1, 1], [0, 0, 1, 1]])  # row 1 left-padded: its two 0s are not seen
    config = GenerationConfig(do_sample=True, top_k=8, temperature=0.7, repetition_penalty=1.3, seed=123)
    state = SamplerState(config, input_ids, attention_mask, 40, torch.device("cpu"))
    seen = torch.zeros(2, 40, dtype=torch.bool)
    seen[0, [0, 3, 7]] = seen[1, [5, 9]] = True
    assert torch.equal(state.seen, seen) and not state.greedy
    by_hand, generator = [], torch.Generator().manual_seed(123)
    for logits in steps:
        by_hand.append(sample(logits, config, seen, generator))
        seen[torch.arange(2), by_hand[-1]] = True
    drawn = []
    for logits in steps:
        drawn.append(state.sample(logits))
        state.accept(drawn[-1])
    assert [t.tolist() for t in drawn] == [t.tolist() for t in by_hand] == [[29, 19], [9, 2], [26, 17], [9, 1],
                                                                            [17, 32]]
    assert torch.equal(state.seen, seen)


def test_sampler_state_holds_only_what_the_config_needs():
    ids = torch.tensor([[4, 5]])
    greedy = SamplerState(GenerationConfig(), ids, None, 10, torch.device("cpu"))
    assert greedy.greedy and greedy.generator is None and greedy.seen is None
    greedy.accept([3])  # nothing to record
    penalised = SamplerState(GenerationConfig(repetition_penalty=1.2), ids, None, 10, torch.device("cpu"))
    assert not penalised.greedy and penalised.generator is None
    penalised.accept([3])  # an engine row accepts plain ints
    assert penalised.seen[0].nonzero().flatten().tolist() == [3, 4, 5]
    sampled = SamplerState(GenerationConfig(do_sample=True, seed=5), ids, None, 10, torch.device("cpu"))
    assert sampled.seen is None and sampled.generator.initial_seed() == 5


@pytest.mark.parametrize("bad,match", [
    (dict(max_new_tokens=0), "max_new_tokens"), (dict(do_sample=True, temperature=0), "temperature"),
    (dict(top_p=0), "top_p"), (dict(top_k=-1), "top_k"), (dict(repetition_penalty=0), "repetition_penalty"),
])
def test_bad_generation_options(bad, match):
    with pytest.raises(ValueError, match=match):
        GenerationConfig(**bad)


def test_unknown_generation_argument(checkpoint):
    with pytest.raises(TypeError, match="unknown generation arguments: max_length"):
        load(checkpoint[0]).generate(torch.tensor([[1, 2]]), max_length=5)


def test_plain_forward_ignores_a_live_kv_cache(checkpoint):
    model = load(checkpoint[0])
    inputs, _ = make_batch(128)
    with torch.no_grad():
        before = model(**inputs).logits
        model.generate(**inputs, max_new_tokens=2)  # leaves caches allocated
        after = model(**inputs).logits
    torch.testing.assert_close(before, after, atol=0, rtol=0)


@pytest.mark.parametrize("cls,tolerance", [(DecodeLinear, 1e-5), (Int8Linear, 0.01), (Int4Linear, 0.15)])
def test_linear_kernels_match_full_precision(cls, tolerance):
    torch.manual_seed(0)
    linear = torch.nn.Linear(256, 96)
    layer = cls(linear.weight, linear.bias) if cls is DecodeLinear else cls(linear.weight, linear.bias)
    layer.gemv_max_rows = 1
    for rows in (1, 5):  # the fused one-row path and the BLAS path
        x = torch.randn(rows, 256)
        ref = linear(x)
        rel = ((layer(x) - ref).norm() / ref.norm()).item()
        assert rel < tolerance, f"{cls.__name__} on {rows} rows: relative error {rel:.4f}"


def test_quantized_model_stays_close_and_saves(checkpoint, tmp_path):
    inputs, _ = make_batch(128)
    reference = load(checkpoint[0])
    q = quantize(load(checkpoint[0]), "int8")
    assert isinstance(q.decoder.layers[0].mlp.up_proj, Int8Linear)
    assert q.decoder.layers[0].mlp.up_proj.q.dtype == torch.int8
    with torch.no_grad():
        a, b = reference(**inputs).logits, q(**inputs).logits
    valid = inputs["attention_mask"].bool()
    assert F.cosine_similarity(a[valid], b[valid], dim=-1).min() > 0.999
    q.save_pretrained(tmp_path)  # as compressed-tensors (tests/test_convert_compressed_tensors.py)
    with torch.no_grad():
        assert torch.equal(load(tmp_path)(**inputs).logits, b)


def test_length_limit_and_one_open_stream(checkpoint):
    model = load(checkpoint[0])
    inputs, _ = make_batch(128)
    limit = model.config.text.max_positions
    with pytest.raises(ValueError, match=f"exceeds the model's {limit} positions"):
        model.generate(**inputs, max_new_tokens=limit)
    stream = model.generator.stream(inputs, GenerationConfig(max_new_tokens=4))
    next(stream)
    with pytest.raises(RuntimeError, match="still open"):
        next(model.generator.stream(inputs, GenerationConfig(max_new_tokens=4)))
    stream.close()  # closing early frees the engine
    assert model.generate(**inputs, max_new_tokens=2).shape[1] == inputs["input_ids"].shape[1] + 2
