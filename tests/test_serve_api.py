"""The server through the official `openai` client on loopback: chat (plain and streamed, n, seed, stop, usage),
transcriptions and translations in every response format (long files in windows), models, health and metrics.
Answers are compared with the library's own `model.chat` / `model.transcribe` on a second copy of the model."""

import base64
import warnings

import httpx
import pytest

import qwen2audio
from conftest import audio_bytes, clip_with_pauses, tone
from qwen2audio.serve import ServeConfig, ServerThread, create_app
from qwen2audio.tokenizer import chat_task_prompt
from qwen2audio.transcribe import clean_transcript, format_transcription

openai = pytest.importorskip("openai")

KEY = "test-key"
MAX_TOKENS = 48  # the server's limit: transcription windows stop there too


def b64(data):
    return base64.b64encode(data).decode()


@pytest.fixture(scope="module")
def reference(tiny_checkpoint):
    """The library's answers come from this copy; the server has its own."""
    return qwen2audio.load(tiny_checkpoint)


@pytest.fixture(scope="module")
def allowed_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("allowed")


@pytest.fixture(scope="module")
def server(tiny_checkpoint, allowed_dir):
    config = ServeConfig(max_batch=4, max_tokens=MAX_TOKENS, api_key=KEY, allow_file_dirs=(allowed_dir,))
    with ServerThread(create_app(qwen2audio.load(tiny_checkpoint), config)) as running:
        yield running


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=KEY, max_retries=0, timeout=60)


def audio_question(wave, text="What is this sound?"):
    return [{"role": "user", "content": [
        {"type": "input_audio", "input_audio": {"data": b64(audio_bytes(wave)), "format": "wav"}},
        {"type": "text", "text": text}]}]


def test_chat_equals_model_chat(client, reference):
    messages = audio_question(tone(1.3))
    expected = reference.chat(messages, details=True, max_new_tokens=20)
    reply = client.chat.completions.create(model="qwen2-audio", messages=messages, max_tokens=20)
    assert reply.object == "chat.completion" and reply.model == "qwen2-audio"
    choice = reply.choices[0]
    assert (choice.message.role, choice.message.content) == ("assistant", expected.text)
    assert choice.finish_reason == expected.finish_reason == "length"
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (expected.prompt_tokens, 20)
    assert reply.usage.total_tokens == expected.prompt_tokens + 20


def test_streamed_chat_equals_model_chat(client, reference):
    messages = audio_question(tone(2.0, 330), "Describe it.")
    expected = reference.chat(messages, details=True, max_new_tokens=16)
    chunks = list(client.chat.completions.create(model="qwen2-audio", messages=messages, max_tokens=16,
                                                 stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(pieces) > 3 and "".join(pieces) == expected.text
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["length"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 16
    assert chunks[-1].usage.prompt_tokens == expected.prompt_tokens
    assert len({c.id for c in chunks}) == 1 and chunks[0].object == "chat.completion.chunk"


def test_voice_chat_multi_turn_and_every_audio_source(client, reference, allowed_dir):
    """Audio alone (voice chat), then a second turn with a data: URL and a file: URL inside the allowed directory."""
    first, second = tone(1.0, 550), tone(0.7, 660)
    path = allowed_dir / "second.wav"
    path.write_bytes(audio_bytes(second))
    messages = [{"role": "user", "content": [{"type": "input_audio",
                                              "input_audio": {"data": b64(audio_bytes(first)), "format": "wav"}}]}]
    answer = client.chat.completions.create(model="qwen2-audio", messages=messages, max_tokens=8)
    assert answer.choices[0].message.content == reference.chat(messages, max_new_tokens=8)
    messages += [{"role": "assistant", "content": answer.choices[0].message.content},
                 {"role": "user", "content": [
                     {"type": "audio_url", "audio_url": {"url": f"data:audio/wav;base64,{b64(audio_bytes(second))}"}},
                     {"type": "audio_url", "audio_url": {"url": f"file://{path}"}},
                     {"type": "text", "text": "Are these two the same?"}]}]
    reply = client.chat.completions.create(model="qwen2-audio", messages=messages, max_tokens=10)
    assert reply.choices[0].message.content == reference.chat(messages, max_new_tokens=10)


def test_n_seed_temperature_top_p_and_stop(client, reference):
    messages = audio_question(tone(0.9, 770), "Name it.")
    options = dict(model="qwen2-audio", messages=messages, max_tokens=24, temperature=0.9, top_p=0.95, seed=11)
    a = client.chat.completions.create(n=3, **options)
    b = client.chat.completions.create(n=3, **options)
    texts = [c.message.content for c in a.choices]
    assert [c.index for c in a.choices] == [0, 1, 2]
    assert texts == [c.message.content for c in b.choices]  # seeded: reproducible
    assert len(set(texts)) > 1  # choice i samples with seed + i
    assert texts[0] == reference.chat(messages, max_new_tokens=24, temperature=0.9, top_p=0.95, seed=11)
    assert [c.finish_reason for c in a.choices] == ["length"] * 3 and a.usage.completion_tokens == 3 * 24
    assert a.usage.prompt_tokens == reference.chat(messages, details=True, max_new_tokens=1).prompt_tokens
    greedy = reference.chat(messages, max_new_tokens=24)
    stop = greedy[6:9]
    cut = client.chat.completions.create(model="qwen2-audio", messages=messages, max_tokens=24, stop=[stop, "\n\n"])
    assert cut.choices[0].message.content == greedy[:greedy.index(stop)]
    assert cut.choices[0].finish_reason == "stop"


def test_transcription_of_a_long_file_in_every_format(client, reference, tmp_path):
    wave, _ = clip_with_pauses(65.0, seed=1)
    path = tmp_path / "talk.wav"
    path.write_bytes(audio_bytes(wave))
    expected = reference.transcribe(str(path), max_new_tokens=MAX_TOKENS)
    assert len(expected.segments) == 3

    def create(fmt):
        with open(path, "rb") as f:
            return client.audio.transcriptions.create(model="qwen2-audio", file=f, response_format=fmt)

    assert create("json").text == expected.text
    verbose = create("verbose_json")
    assert verbose.text == expected.text and verbose.duration == pytest.approx(65.0)
    assert [(s.start, s.end, s.text) for s in verbose.segments] == [(s.start, s.end, s.text)
                                                                   for s in expected.segments]
    assert all(len(s.tokens) == MAX_TOKENS for s in verbose.segments)
    assert create("text") == expected.text + "\n"
    assert create("srt") == format_transcription(expected, "srt")
    vtt = create("vtt")
    assert vtt.startswith("WEBVTT\n\n00:00:00.000 --> ") and vtt.count(" --> ") == 3


def test_translation(client, reference, tmp_path):
    wave = tone(2.5, 300)
    path = tmp_path / "speech.wav"
    path.write_bytes(audio_bytes(wave))
    conversation = [{"role": "user", "content": [{"type": "audio", "audio": str(path)},
                                                 {"type": "text", "text": chat_task_prompt("translate", target="en")}]}]
    expected, _ = clean_transcript(reference.chat(conversation, max_new_tokens=MAX_TOKENS))
    with open(path, "rb") as f, warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # some client versions mark the endpoint deprecated
        result = client.audio.translations.create(model="qwen2-audio", file=f)
    assert result.text == expected


def test_models_health_and_metrics(client, server):
    assert [m.id for m in client.models.list().data] == ["qwen2-audio"]
    assert client.models.retrieve("qwen2-audio").owned_by == "qwen2audio"
    health = httpx.get(f"{server.url}/health").json()
    assert health["status"] == "ok" and health["batch_rows"] == 4
    text = httpx.get(f"{server.url}/metrics", headers={"Authorization": f"Bearer {KEY}"}).text
    for name in ("qwen2audio_http_requests_total", "qwen2audio_http_request_duration_seconds_bucket",
                 "qwen2audio_time_to_first_token_seconds_bucket", "qwen2audio_queue_depth",
                 "qwen2audio_tokens_per_second", "qwen2audio_generation_tokens_total",
                 "qwen2audio_engine_requests_cancelled_total"):
        assert name in text, name
    assert 'route="/v1/chat/completions",status="200"' in text
    page = httpx.get(server.url)
    assert page.status_code == 200 and "qwen2audio" in page.text
    assert httpx.get(f"{server.url}/static/app.js").status_code == 200


def test_serve_command(tiny_checkpoint):
    """`python -m qwen2audio serve` in its own process: loopback by default, the key enforced, then a clean stop."""
    import socket
    import subprocess
    import sys
    import time

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "qwen2audio", "serve", "--model", str(tiny_checkpoint),
                               "--port", str(port), "--api-key", "k", "--max-batch", "2", "--log-level", "warning"],
                              stderr=subprocess.PIPE, text=True)
    try:
        url, give_up = f"http://127.0.0.1:{port}", time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=2).json()["status"] == "ok":
                    break
            except httpx.HTTPError:
                assert server.poll() is None and time.monotonic() < give_up, server.stderr.read()
                time.sleep(0.1)
        assert httpx.get(f"{url}/v1/models").status_code == 401
        assert httpx.get(f"{url}/v1/models", headers={"Authorization": "Bearer k"}).json()["data"][0]["id"]
    finally:
        server.terminate()
        _, err = server.communicate(timeout=30)
    assert "127.0.0.1" in err and "2 rows" in err


def test_serve_command_refuses_bad_settings(tiny_checkpoint, tmp_path, monkeypatch, capsys):
    from qwen2audio import api
    from qwen2audio.cli import main

    assert main(["serve", "--model", str(tiny_checkpoint), "--max-batch", "0"]) == 1
    assert "max_batch must be >= 1" in capsys.readouterr().err
    assert main(["serve", "--model", str(tiny_checkpoint), "--allow-file-dir", str(tmp_path / "nowhere")]) == 1
    assert "is not a directory" in capsys.readouterr().err
    monkeypatch.setattr(api, "DEMO_MODEL_DIR", tmp_path / "no-demo-model")
    assert main(["serve"]) == 1  # no --model: the shipped demo model, missing from this copy
    assert "demo model is missing" in capsys.readouterr().err
