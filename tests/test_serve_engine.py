"""Continuous batching below HTTP: KV cache rows as slots (generate.ContinuousBatch) and the engine thread.

A request decoded beside others, joining mid-way into a row another request used before, gives the tokens it gives
alone; the engine's text, finish reasons and counts equal model.chat's; cancelled and late requests free their row
before the next step; a full queue refuses with a retry hint; the service's transcription of a long file equals
`transcribe`'s."""

import asyncio
import threading
import time

import pytest
import torch

import qwen2audio
from conftest import audio_bytes, clip_with_pauses, tone
from qwen2audio.audio import SAMPLE_RATE
from qwen2audio.chat import chat_inputs, model_processor
from qwen2audio.generate import ContinuousBatch, GenerationConfig
from qwen2audio.serve.config import ServeConfig
from qwen2audio.serve.engine import BatchEngine, Delta, Failed, Finished, Request
from qwen2audio.serve.errors import QueueFull
from qwen2audio.serve.service import Service

TRANSCRIPTION_TOKENS = 12  # per window: enough for text in every window of the tiny model

def conversation(seconds, freq, text):
    return [{"role": "user", "content": [{"type": "audio", "audio": tone(seconds, freq), "sampling_rate": SAMPLE_RATE},
                                         {"type": "text", "text": text}]}]


CONVERSATIONS = [conversation(1.0, 440, "What is it?"), conversation(2.7, 220, "Describe the sound."),
                 conversation(0.4, 880, "a"), conversation(5.1, 330, "How long is it?")]


@pytest.fixture(scope="module")
def model(tiny_checkpoint):
    return qwen2audio.load(tiny_checkpoint)


def inputs_of(model, messages):
    return chat_inputs(model_processor(model), [messages])[0]


def test_rows_joining_midway_decode_as_alone(model):
    """Four prompts of different lengths join a 3-row batch at steps 0, 2, 5 and 9, the last one into the row the
    first left (stale keys beyond its prompt); each row's greedy tokens equal the same prompt generated alone."""
    n = 10
    prompts = [inputs_of(model, c) for c in CONVERSATIONS]
    alone = [model.generate(**p, max_new_tokens=n, eos_token_id=())[0, -n:].tolist() for p in prompts]
    batch = ContinuousBatch(model, n_rows=3, max_len=512)
    joins = {0: (0, 2), 2: (1, 0), 5: (2, 1), 11: (3, 2)}  # step -> (prompt, row); row 2 is free again at step 10
    tokens, rows = {}, {}
    for step in range(40):
        if step in joins:
            k, row = joins[step]
            assert row not in rows.values() or all(len(tokens[j]) == n for j, r in rows.items() if r == row)
            rows[k] = row
            tokens[k] = [int(batch.prefill(row, prompts[k]).argmax())]
        live = {rows[k]: t[-1] for k, t in tokens.items() if len(t) < n}
        if live:
            logits = batch.decode(live)
            for k, t in tokens.items():
                if len(t) < n:
                    t.append(int(logits[rows[k]].argmax()))
    assert batch.lengths[2] == prompts[3]["input_ids"].shape[1] + n - 1  # the reused row holds the new request
    for k in range(4):
        assert tokens[k] == alone[k], f"prompt {k}"


def test_continuous_batch_checks_its_arguments(model):
    with pytest.raises(ValueError, match="max_len"):
        ContinuousBatch(model, n_rows=2, max_len=model.config.text.max_positions + 1)
    batch = ContinuousBatch(model, n_rows=2, max_len=64)
    with pytest.raises(ValueError, match="row 5"):
        batch.prefill(5, {"input_ids": torch.tensor([[1, 2, 3]])})
    with pytest.raises(ValueError, match="one prompt"):
        batch.prefill(0, {"input_ids": torch.ones(1, 64, dtype=torch.long)})


class Collector:
    def __init__(self):
        self.events, self.done = [], threading.Event()

    def __call__(self, event):
        self.events.append(event)
        if isinstance(event, (Finished, Failed)):
            self.done.set()

    @property
    def text(self):
        return "".join(e.text for e in self.events if isinstance(e, Delta))

    @property
    def result(self):
        return self.events[-1]


@pytest.fixture
def engine(model):
    engine = BatchEngine(model, n_rows=3, max_len=1024, max_queue=8).start()
    yield engine
    engine.close()


def submit(engine, model, messages, stop=None, **options):
    config = model.generation_config_for(**options)
    sink = Collector()
    request = Request(inputs_of(model, messages), config, sink, tuple(stop or ()))
    engine.submit([request])
    return request, sink


def test_engine_gives_model_chat_replies_while_requests_come_and_go(model, engine):
    """Six requests (greedy, seeded sampling, a stop string) arrive at different moments into 3 rows: every one's
    text, finish reason and token counts equal model.chat's for it alone."""
    cases = [(CONVERSATIONS[0], {"max_new_tokens": 24}, None),
             (CONVERSATIONS[1], {"max_new_tokens": 6}, None),
             (CONVERSATIONS[2], {"max_new_tokens": 30, "do_sample": True, "temperature": 0.8, "seed": 7}, None),
             (CONVERSATIONS[3], {"max_new_tokens": 12, "do_sample": True, "top_p": 0.9, "seed": 3}, None),
             (CONVERSATIONS[1], {"max_new_tokens": 20, "repetition_penalty": 1.3}, None),
             (CONVERSATIONS[0], {"max_new_tokens": 24}, "STOP")]
    expected = [model.chat(m, details=True, stop=s, **o) for m, o, s in cases]
    # a stop string taken from the greedy reply itself, so that it is found mid-way
    cut = expected[0].text[5:7]
    cases[5] = (cases[5][0], cases[5][1], [cut])
    expected[5] = model.chat(cases[5][0], details=True, stop=[cut], **cases[5][1])
    assert expected[5].finish_reason == "stop" and len(expected[5].text) < len(expected[0].text)

    sinks = []
    for i, (messages, options, stop) in enumerate(cases):
        sinks.append(submit(engine, model, messages, stop, **options)[1])
        time.sleep(0.02 * i)  # later requests join while earlier ones decode
    for sink in sinks:
        assert sink.done.wait(60)
    for i, (sink, reply) in enumerate(zip(sinks, expected)):
        result = sink.result
        assert isinstance(result, Finished), f"request {i}: {result}"
        assert (sink.text, result.text) == (reply.text, reply.text), f"request {i}"
        assert result.finish_reason == reply.finish_reason
        assert (result.prompt_tokens, result.completion_tokens) == (reply.prompt_tokens, reply.completion_tokens)
    assert engine.stats.finished == 6 and engine.active == 0
    assert engine.stats.decode_rows > engine.stats.decode_steps  # steps were shared


def test_cancel_frees_the_row_before_the_next_step(model, engine):
    request, sink = submit(engine, model, CONVERSATIONS[0], max_new_tokens=900)
    while not sink.events:
        time.sleep(0.005)
    request.cancel()
    give_up = time.monotonic() + 5
    while engine.active and time.monotonic() < give_up:
        time.sleep(0.005)
    assert engine.active == 0 and engine.stats.cancelled == 1
    generated = engine.stats.generated_tokens
    time.sleep(0.1)
    assert engine.stats.generated_tokens == generated < 900
    assert not sink.done.is_set()  # nobody is told: the client is gone


def test_deadline_fails_the_request_and_frees_the_row(model, engine):
    config = model.generation_config_for(max_new_tokens=900)
    sink = Collector()
    engine.submit([Request(inputs_of(model, CONVERSATIONS[1]), config, sink, deadline=time.monotonic() + 0.3)])
    assert sink.done.wait(10)
    assert isinstance(sink.result, Failed) and sink.result.error.status == 504
    assert engine.active == 0 and engine.stats.timed_out == 1


def test_full_queue_refuses_with_retry_after(model):
    engine = BatchEngine(model, n_rows=1, max_len=1024, max_queue=2)  # not started: nothing leaves the queue
    engine._batch = ContinuousBatch(model, 1, 1024)
    config = GenerationConfig(max_new_tokens=4)
    make = lambda: Request(inputs_of(model, CONVERSATIONS[2]), config, Collector())  # noqa: E731
    engine.submit([make(), make()])
    with pytest.raises(QueueFull) as refused:
        engine.submit([make()])
    assert refused.value.status == 429 and int(refused.value.headers["Retry-After"]) >= 1
    assert engine.queue_depth == 2 and engine.stats.rejected == 1
    with pytest.raises(QueueFull):  # all or nothing
        engine.submit([make(), make()])
    assert engine.queue_depth == 2


def test_a_failing_request_does_not_stop_the_engine(model, engine):
    config = GenerationConfig(max_new_tokens=4)
    broken, fine = Collector(), Collector()
    audio_id = model.config.audio_token_id  # a placeholder without its audio: the prefill raises
    engine.submit([Request({"input_ids": torch.tensor([[1, audio_id, 2]])}, config, broken),
                   Request(inputs_of(model, CONVERSATIONS[2]), config, fine)])
    assert broken.done.wait(10) and fine.done.wait(10)
    assert isinstance(broken.result, Failed) and broken.result.error.status == 400
    assert "<|AUDIO|>" in broken.result.error.message
    assert isinstance(fine.result, Finished) and engine.healthy and engine.stats.failed == 1


def test_service_and_transcribe_stitch_the_same_transcription(model):
    """A 65 s file transcribed by the library (windows batched through model.generate) and by the server's Service
    (one window per engine row): the same Transcription, both stitched by transcribe.transcription_from_windows."""
    data = audio_bytes(clip_with_pauses(65.0, seed=1)[0])
    expected = model.transcribe(data, max_new_tokens=TRANSCRIPTION_TOKENS)
    engine = BatchEngine(model, n_rows=2, max_len=1024).start()
    try:
        service = Service(model, engine, ServeConfig(max_tokens=TRANSCRIPTION_TOKENS))
        result, tokens = asyncio.run(service.transcribe(data, "transcriptions", None, None, 0.0, None))
    finally:
        engine.close()
    assert len(expected.segments) == 3 and all(s.text for s in expected.segments)
    assert result == expected and len(tokens) == 3
