"""Abuse: every bad request gets the right status and a clear message in OpenAI's error JSON, while another client
is served the whole time (checked at the end); a client that disconnects mid-stream frees its row at once; a full
queue answers 429 with Retry-After; a request past its deadline 504; http(s) audio only when allowed, with a
timeout and a size cap; and a schemathesis run over the OpenAPI schema finds no 5xx."""

import base64
import collections
import http.server
import json
import os
import threading
import time

import httpx
import numpy as np
import pytest

import qwen2audio
from conftest import audio_bytes, tone
from qwen2audio.audio import SAMPLE_RATE
from qwen2audio.serve import ServeConfig, ServerThread, create_app

KEY = "abuse-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
MAX_AUDIOS, MAX_SECONDS, MAX_TOKENS, MAX_BODY = 4, 60.0, 64, 3_000_000


def b64(data):
    return base64.b64encode(data).decode()


def audio_part(data):
    return {"type": "input_audio", "input_audio": {"data": data if isinstance(data, str) else b64(data),
                                                   "format": "wav"}}


def url_part(url):
    return {"type": "audio_url", "audio_url": {"url": url}}


def chat_body(*parts, **options):
    return {"model": "qwen2-audio", "messages": [{"role": "user", "content": list(parts) or "hello"}],
            "max_tokens": 8, **options}


CLIP = audio_bytes(tone(0.5))


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    allowed, outside = tmp_path_factory.mktemp("allowed"), tmp_path_factory.mktemp("outside")
    (outside / "secret.wav").write_bytes(CLIP)
    (allowed / "ok.wav").write_bytes(CLIP)
    os.symlink(outside / "secret.wav", allowed / "link.wav")
    return allowed, outside


@pytest.fixture(scope="module")
def server(tiny_checkpoint, dirs):
    config = ServeConfig(max_batch=2, max_queue=16, max_audios=MAX_AUDIOS, max_audio_seconds=MAX_SECONDS,
                         max_tokens=MAX_TOKENS, max_body_bytes=MAX_BODY, max_n=2, api_key=KEY,
                         allow_file_dirs=(dirs[0],))
    with ServerThread(create_app(qwen2audio.load(tiny_checkpoint), config)) as running:
        yield running


class SteadyClient(threading.Thread):
    """Sends the same small audio question over and over while the abuse tests run."""

    def __init__(self, url):
        super().__init__(daemon=True)
        self.url, self.replies, self.stopped = url, [], threading.Event()

    def run(self):
        with httpx.Client(timeout=60, headers=AUTH) as client:
            while not self.stopped.is_set():
                r = client.post(f"{self.url}/v1/chat/completions", json=chat_body(audio_part(CLIP), max_tokens=6))
                self.replies.append((r.status_code, r.json()["choices"][0]["message"]["content"]
                                     if r.status_code == 200 else r.text))


@pytest.fixture(scope="module")
def steady(server):
    client = SteadyClient(server.url)
    client.start()
    yield client
    client.stopped.set()
    client.join(60)


def post(server, body=None, headers=AUTH, content=None, path="/v1/chat/completions", **kwargs):
    if content is not None:
        return httpx.post(f"{server.url}{path}", content=content, headers={**headers, "content-type":
                                                                              "application/json"}, timeout=60)
    return httpx.post(f"{server.url}{path}", json=body, headers=headers, timeout=60, **kwargs)


def expect(response, status, code=None, fragment=None, param=None):
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    assert "Traceback" not in error["message"] and "\n" not in error["message"]
    if code:
        assert error["code"] == code, error
    if fragment:
        assert fragment in error["message"], error
    if param:
        assert error["param"] == param, error
    return error


def ten_minute_flac():
    quiet = np.zeros(600 * SAMPLE_RATE, np.float32)
    quiet[::SAMPLE_RATE] = 0.01  # a tick a second: real samples, yet FLAC packs the ten minutes into a few dozen KB
    return audio_bytes(quiet, "FLAC")


CHAT_CASES = {
    # id: (body or raw bytes, status, code, message fragment, param)
    "malformed json": (b'{"messages": [', 400, "invalid_json", "not valid JSON", None),
    "json array": (b"[1, 2]", 400, "invalid_type", "valid dictionary", None),
    "messages not a list": ({"messages": "hi"}, 400, "invalid_type", "valid list", "messages"),
    "no messages": ({"messages": []}, 400, "invalid_type", "at least 1", "messages"),
    "max_tokens a string": (chat_body(max_tokens="ten"), 400, "invalid_type", "valid integer", "max_tokens"),
    "temperature a string": (chat_body(temperature="hot"), 400, "invalid_type", "valid number", "temperature"),
    "temperature 5": (chat_body(temperature=5), 400, "invalid_type", "less than or equal to 2", "temperature"),
    "unknown role": ({"messages": [{"role": "robot", "content": "hi"}]}, 400, "invalid_type", None, None),
    "image part": (chat_body({"type": "image_url", "image_url": {"url": "x"}}), 400, "invalid_type", "type", None),
    "invalid base64": (chat_body(audio_part("@@not base64@@")), 400, "invalid_audio", "not valid base64", None),
    "corrupt audio": (chat_body(audio_part(os.urandom(4000))), 400, "invalid_audio", "could not decode", None),
    "empty audio": (chat_body(audio_part("")), 400, "invalid_audio", "empty", None),
    "zero-sample wav": (chat_body(audio_part(audio_bytes(np.zeros(0, np.float32)))), 400, "invalid_audio", "0 samples",
                        None),
    "ten-minute clip": (lambda: chat_body(audio_part(ten_minute_flac())), 400, "audio_too_long", "60 s", None),
    "100 audios": (chat_body(*[audio_part(CLIP)] * 100), 400, "too_many_audios", f"100 audios", "messages"),
    "huge max_tokens": (chat_body(max_tokens=10**9), 400, "max_tokens_too_large", f"limit of {MAX_TOKENS}",
                        "max_tokens"),
    "astronomical max_tokens": (chat_body(max_tokens=2**80), 400, "max_tokens_too_large", None, "max_tokens"),
    "n over the limit": (chat_body(n=5), 400, "n_too_large", "at most 2", "n"),
    "too many stop strings": (chat_body(stop=list("abcde")), 400, "invalid_type", None, None),
    "empty stop string": (chat_body(stop=""), 400, "invalid_type", None, None),
    "seed out of range": (chat_body(seed=2**70), 400, "invalid_type", None, "seed"),
    "prompt too long": (chat_body({"type": "text", "text": "hello " * 5000}), 400, "context_length_exceeded",
                        "tokens", "messages"),
    "unknown model": ({**chat_body(), "model": "gpt-9"}, 404, "model_not_found", "gpt-9", "model"),
    "file outside the allowed dirs": (lambda d: chat_body(url_part("file:///etc/passwd")), 403, "file_not_allowed",
                                      "outside", None),
    "file via dot-dot": (lambda d: chat_body(url_part(f"file://{d[0]}/../{d[1].name}/secret.wav")), 403,
                         "file_not_allowed", "outside", None),
    "symlink out of the allowed dir": (lambda d: chat_body(url_part(f"file://{d[0]}/link.wav")), 403,
                                       "file_not_allowed", "outside", None),
    "bare path": (chat_body(url_part("/etc/passwd")), 400, "invalid_audio_url", "data:, file: or http(s)", None),
    "http audio disabled": (chat_body(url_part("http://127.0.0.1:9/a.wav")), 403, "http_urls_disabled",
                            "--allow-http-audio", None),
}


@pytest.mark.parametrize("case", CHAT_CASES)
def test_bad_chat_requests(server, steady, dirs, case):
    body, status, code, fragment, param = CHAT_CASES[case]
    if callable(body):
        body = body(dirs) if body.__code__.co_argcount else body()
    response = post(server, content=body) if isinstance(body, bytes) else post(server, body)
    expect(response, status, code, fragment, param)


def test_allowed_file_works(server, steady, dirs):
    response = post(server, chat_body(url_part(f"file://{dirs[0]}/ok.wav")))
    assert response.status_code == 200 and response.json()["choices"][0]["finish_reason"] == "length"


def test_api_key(server, steady):
    expect(post(server, chat_body(), headers={}), 401, "missing_api_key", "Authorization: Bearer")
    expect(post(server, chat_body(), headers={"Authorization": "Bearer nope"}), 401, "invalid_api_key")
    expect(post(server, chat_body(), headers={"Authorization": "Basic " + b64(b"a:b")}), 401, "missing_api_key")
    for path in ("/v1/models", "/metrics"):
        expect(httpx.get(f"{server.url}{path}"), 401)
    expect(httpx.post(f"{server.url}/v1/audio/transcriptions", files={"file": ("a.wav", CLIP)}), 401)
    assert httpx.get(f"{server.url}/health").status_code == 200  # probes stay open
    assert httpx.get(f"{server.url}/v1/models", headers=AUTH).status_code == 200


def test_body_over_the_limit(server, steady):
    expect(post(server, content=b"x" * (MAX_BODY + 1)), 413, "request_too_large", f"{MAX_BODY} bytes")
    chunked = (b"x" * 100_000 for _ in range(40))  # no Content-Length: counted as it arrives
    expect(httpx.post(f"{server.url}/v1/chat/completions", content=chunked, headers=AUTH, timeout=60), 413)


TRANSCRIPTION_CASES = {
    "no file": ({}, {"model": "qwen2-audio"}, 400, None, "file"),
    "empty file": ({"file": ("a.wav", b"")}, {}, 400, "invalid_audio", "empty"),
    "corrupt file": ({"file": ("a.wav", os.urandom(3000))}, {}, 400, "invalid_audio", "could not decode"),
    "unknown format": ({"file": ("a.wav", CLIP)}, {"response_format": "xml"}, 400, "invalid_type", "json"),
    "odd language": ({"file": ("a.wav", CLIP)}, {"language": "<|en|>x"}, 400, "invalid_type", None),
    "temperature 3": ({"file": ("a.wav", CLIP)}, {"temperature": "3"}, 400, "invalid_type", None),
    "unknown model": ({"file": ("a.wav", CLIP)}, {"model": "whisper-9"}, 404, "model_not_found", None),
}


@pytest.mark.parametrize("case", TRANSCRIPTION_CASES)
def test_bad_transcription_requests(server, steady, case):
    files, data, status, code, fragment = TRANSCRIPTION_CASES[case]
    response = httpx.post(f"{server.url}/v1/audio/transcriptions", files=files or None, data=data, headers=AUTH,
                          timeout=60)
    expect(response, status, code, fragment)


def test_unknown_routes_and_methods(server, steady):
    expect(httpx.get(f"{server.url}/v1/nothing", headers=AUTH), 404, None, "no route")
    expect(httpx.get(f"{server.url}/v1/chat/completions", headers=AUTH), 405)
    expect(httpx.get(f"{server.url}/v1/models/other", headers=AUTH), 404, "model_not_found")


def test_schemathesis_finds_no_server_error(server, steady):
    """Requests generated from /openapi.json for every operation, fitting the schema and not (bounded: 15 of each
    per operation), with the key: no 5xx."""
    schemathesis = pytest.importorskip("schemathesis")
    from hypothesis import HealthCheck, given, settings
    from hypothesis.errors import Unsatisfiable
    from schemathesis.checks import not_a_server_error

    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/v1/chat/completions", "/v1/audio/transcriptions", "/v1/models"}
    statuses = collections.Counter()
    for operation in operations:
        for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE):
            @settings(max_examples=15, deadline=None, database=None, suppress_health_check=list(HealthCheck))
            @given(case=operation.as_strategy(generation_mode=mode))
            def check(case):
                response = case.call(base_url=server.url, headers=AUTH, timeout=60)
                statuses[response.status_code] += 1
                case.validate_response(response, checks=[not_a_server_error])

            try:
                check()
            except Unsatisfiable:  # nothing to get wrong in an operation without parameters (GET /health)
                assert mode == schemathesis.GenerationMode.NEGATIVE
    assert sum(statuses.values()) > 100 and max(statuses) < 500, statuses
    assert statuses[400] > 20  # the fuzzer did reach the validation


def test_disconnect_mid_stream_frees_the_row(slow):
    server, metrics = slow

    before = metrics()
    with httpx.stream("POST", f"{server.url}/v1/chat/completions", timeout=60,
                      json=chat_body(audio_part(CLIP), max_tokens=3000, stream=True)) as response:
        lines = response.iter_lines()
        assert response.status_code == 200
        got = [line for line, _ in zip(lines, range(6)) if line.startswith("data:")]
        assert len(got) >= 2
    # the connection is closed here, mid-stream
    give_up = time.monotonic() + 3
    cancelled = "qwen2audio_engine_requests_cancelled_total"
    while metrics()[cancelled] == before[cancelled]:
        assert time.monotonic() < give_up, "the disconnected request kept its row"
        time.sleep(0.02)
    after = metrics()
    assert after["qwen2audio_active_requests"] == 0
    assert after["qwen2audio_engine_requests_timed_out_total"] == before["qwen2audio_engine_requests_timed_out_total"]
    assert after["qwen2audio_generation_tokens_total"] - before["qwen2audio_generation_tokens_total"] < 3000


def test_full_queue_answers_429_and_late_requests_504(slow):
    """One row and a queue of one: A decodes, B waits, C is refused; A's stream ends with a timeout event at its
    deadline, then B runs past its own: 504."""
    server, metrics = slow
    long = chat_body(audio_part(CLIP), max_tokens=3000)
    url = f"{server.url}/v1/chat/completions"
    client = httpx.Client(timeout=60)  # made up front: a new client takes a while to set up on a busy machine
    with client.stream("POST", url, json={**long, "stream": True}) as a:
        a_lines = a.iter_lines()  # kept: a dropped line iterator closes the connection
        next(a_lines)
        b_result = []
        b = threading.Thread(target=lambda: b_result.append(client.post(url, json=long)))
        b.start()
        give_up = time.monotonic() + SLOW_DEADLINE_S - 0.5
        while metrics()["qwen2audio_queue_depth"] < 1:
            assert time.monotonic() < give_up, "B never waited in the queue"
            time.sleep(0.01)
        c = client.post(url, json=long)
        error = expect(c, 429, "queue_full", "busy")
        assert error["type"] == "rate_limit_error" and int(c.headers["Retry-After"]) >= 1
        # A's stream ends with an error event at its deadline, in OpenAI's stream format
        events = [json.loads(line[5:]) for line in a_lines if line.startswith("data: {")]
        assert events[-1]["error"]["code"] == "timeout"
    b.join(30)
    expect(b_result[0], 504, "timeout", "deadline")


SLOW_DEADLINE_S = 3.0


@pytest.fixture(scope="module")
def slow(tiny_checkpoint):
    """A server with one row, a queue of one and a short deadline."""
    config = ServeConfig(max_batch=1, max_queue=1, max_tokens=3000, request_timeout_s=SLOW_DEADLINE_S)
    with ServerThread(create_app(qwen2audio.load(tiny_checkpoint), config)) as running:
        def metrics():
            lines = httpx.get(f"{running.url}/metrics").text.splitlines()
            return {k: float(v) for k, v in (line.rsplit(" ", 1) for line in lines
                                             if line and not line.startswith("#") and "{" not in line)}
        yield running, metrics


class AudioHandler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802
        if self.path == "/clip.wav":
            body = CLIP
        elif self.path == "/big.wav":
            body = audio_bytes(tone(10.0))
        elif self.path == "/slow.wav":
            self.send_response(200)
            self.send_header("Content-Length", str(len(CLIP)))
            self.end_headers()
            for i in range(0, len(CLIP), 1000):  # a byte drip that outlasts the timeout
                self.wfile.write(CLIP[i:i + 1000])
                self.wfile.flush()
                time.sleep(0.3)
            return
        else:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_http_audio_when_allowed_with_timeout_and_cap(tiny_checkpoint):
    files = http.server.ThreadingHTTPServer(("127.0.0.1", 0), AudioHandler)
    threading.Thread(target=files.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{files.server_address[1]}"
    config = ServeConfig(allow_http_audio=True, http_audio_timeout_s=1.0, http_audio_max_bytes=100_000)
    try:
        with ServerThread(create_app(qwen2audio.load(tiny_checkpoint), config)) as server:
            assert post(server, chat_body(url_part(f"{base}/clip.wav")), headers={}).status_code == 200
            expect(post(server, chat_body(url_part(f"{base}/big.wav")), headers={}), 400, "audio_too_large",
                   "100000 bytes")
            started = time.monotonic()
            expect(post(server, chat_body(url_part(f"{base}/slow.wav")), headers={}), 400, "audio_fetch_timeout")
            assert time.monotonic() - started < 5
            expect(post(server, chat_body(url_part(f"{base}/missing.wav")), headers={}), 400, "audio_fetch_failed",
                   "HTTP 404")
    finally:
        files.shutdown()


def test_the_steady_client_was_served_throughout(steady):
    """Last in this file: the other client's requests all succeeded, with the same (greedy) answer each time."""
    time.sleep(0.3)
    steady.stopped.set()
    steady.join(60)
    statuses = [s for s, _ in steady.replies]
    assert len(statuses) >= 5 and set(statuses) == {200}, steady.replies[:3]
    assert len({text for _, text in steady.replies}) == 1
