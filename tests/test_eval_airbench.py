"""AIR-Bench against a real OpenAI-compatible HTTP server the test starts on 127.0.0.1: it answers the model's
requests (audio in `input_audio` parts) and the judge's, with canned judge answers including malformed ones."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from qwen2audio.audio import SAMPLE_RATE
from qwen2audio.eval.airbench import JUDGE_PROMPT, parse_judge
from qwen2audio.eval.metrics import parse_choice
from qwen2audio.eval.runner import ApiPredictor, evaluate

# question -> (judge reply with the reference first, with the model first), each a list of replies in turn
JUDGE_REPLIES = {
    "What is said?": (["8 6"], ["5 9"]),  # model: (6 + 5) / 2 = 5.5
    "What is the sound?": (["Both answers are fine.", "8 7"], ["7.5 8"]),  # one malformed, retried: 7.25
    "Which instrument?": (["no scores"] * 3, ["??"] * 3),  # never well-formed: counted, not crashed on
    "Which tempo?": (["9 4"], ["4 9"]),  # 4: music = 4.0 over the one judged item
    "Speech and sound?": (["6 6"], ["6 6"]),  # 6
    "Speech and music?": (["10 8"], ["8 10"]),  # 8: mixed = 7.0
}
CHAT = [("speech_QA", "What is said?"), ("sound_QA", "What is the sound?"), ("music_QA", "Which instrument?"),
        ("music_QA", "Which tempo?"), ("speech_and_sound_QA", "Speech and sound?"),
        ("speech_and_music_QA", "Speech and music?")]
FOUNDATION = [("What animal?", ["cat", "dog barking", "bird", "cow"], "dog barking", "B"),
              ("What place?", ["street", "beach", "office", "forest"], "beach", "It sounds like a beach to me."),
              ("What mood?", ["happy", "sad", "angry", "calm"], "sad", "I cannot tell.")]


class Server:
    def __init__(self):
        self.calls = {"model": 0, "judge": 0}
        self.turns: dict[tuple[str, str], int] = {}
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                assert self.path == "/v1/chat/completions", self.path
                reply = server.reply(body["messages"][-1]["content"])
                data = json.dumps({"choices": [{"message": {"role": "assistant", "content": reply}}]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def reply(self, content) -> str:
        if isinstance(content, list):  # the model: audio then text
            self.calls["model"] += 1
            assert content[0]["type"] == "input_audio" and content[0]["input_audio"]["format"] == "wav"
            text = content[1]["text"]
            return next((answer for q, _, _, answer in FOUNDATION if q in text), "a reply about the audio")
        self.calls["judge"] += 1
        assert content.startswith("You are a helpful and precise assistant for checking the quality of the answer.")
        question = content.split("[Question]\n", 1)[1].split("\n", 1)[0]
        order = 0 if content.split("[The Start of Assistant 1s Answer]\n", 1)[1].startswith("reference") else 1
        key = (question, order)
        replies = JUDGE_REPLIES[question][order]
        self.turns[key] = self.turns.get(key, 0) + 1
        return replies[min(self.turns[key], len(replies)) - 1]


@pytest.fixture
def server():
    s = Server()
    yield s
    s.httpd.shutdown()


def write_clip(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, 0.1 * np.sin(np.arange(4000) / 5.0), SAMPLE_RATE)


@pytest.fixture
def airbench_tree(tmp_path) -> Path:
    root = tmp_path / "AIR-Bench"
    chat = []
    for n, (task, question) in enumerate(CHAT):
        write_clip(root / "Chat" / f"{task}_set" / f"{n}.wav")
        chat.append({"path": f"{n}.wav", "task_name": task, "dataset_name": "set", "question": question,
                     "answer_gt": f"reference answer {n}", "meta_info": "a description", "uniq_id": n})
    (root / "Chat" / "Chat_meta.json").write_text(json.dumps(chat))
    foundation = []
    for n, (question, choices, gt, _) in enumerate(FOUNDATION):
        write_clip(root / "Foundation" / f"task_set" / f"{n}.wav")
        foundation.append({"path": f"{n}.wav", "task_name": "task", "dataset_name": "set", "question": question,
                           "choice_a": choices[0], "choice_b": choices[1], "choice_c": choices[2],
                           "choice_d": choices[3], "answer_gt": gt, "uniq_id": 100 + n})
    (root / "Foundation" / "Foundation_meta.json").write_text(json.dumps(foundation))
    return root


def test_parsers():
    assert parse_judge("8 7") == (8.0, 7.0) and parse_judge("8.5, 7\nbecause ...") == (8.5, 7.0)
    assert parse_judge("Both are good") is None and parse_judge("8") is None and parse_judge("11 3") is None
    choices = ["cat", "dog barking", "bird", "cow"]
    assert parse_choice("B", choices) == parse_choice("(B) dog", choices) == parse_choice("B.", choices) == "dog barking"
    assert parse_choice("I hear a bird", choices) == "bird"
    assert parse_choice("a cat or a bird", choices) is None and parse_choice("no idea", choices) is None
    assert "XAudioX" in JUDGE_PROMPT and "separated by a space" in JUDGE_PROMPT


def test_chat_judged_both_orders_per_category(tmp_path, server, airbench_tree):
    model = ApiPredictor(server.url)
    judge = ApiPredictor(server.url, model="judge").complete
    results = evaluate("airbench_chat", airbench_tree, model, tmp_path, batch_size=2, progress=False, judge=judge)
    s = {k: v.value for k, v in results.scores.items()}
    assert s == pytest.approx({"speech": 5.5, "sound": 7.25, "music": 4.0, "speech_and_sound": 6.0,
                               "speech_and_music": 8.0, "mixed": 7.0, "average": (5.5 + 7.25 + 4.0 + 7.0) / 4})
    assert results.scores["music"].details == {"judged": 1, "judge_failures": 2}
    assert server.calls == {"model": len(CHAT), "judge": 2 * len(CHAT) + 1 + 2 * 2}  # 1 retry, 2 × 2 failed asks
    assert "6.93" in results.markdown and "judge_failures 2" in results.markdown
    # a rerun asks neither the model nor the judge again
    again = evaluate("airbench_chat", airbench_tree, model, tmp_path, progress=False, judge=judge)
    assert again.as_dict() == results.as_dict()
    assert server.calls == {"model": len(CHAT), "judge": 2 * len(CHAT) + 1 + 2 * 2}


def test_chat_needs_a_judge(tmp_path, server, airbench_tree):
    with pytest.raises(ValueError, match="judge"):
        evaluate("airbench_chat", airbench_tree, ApiPredictor(server.url), tmp_path, progress=False)


def test_foundation_counts_unparseable_as_wrong(tmp_path, server, airbench_tree):
    results = evaluate("airbench_foundation", airbench_tree, ApiPredictor(server.url), tmp_path, progress=False)
    score = results.scores["task"]
    assert score.value == pytest.approx(2 / 3)
    assert score.details == {"correct": 2, "unparseable": 1}


def test_foundation_with_a_local_model(tmp_path, airbench_tree, tiny_checkpoint):
    """The chat-template path of the local runner: gibberish answers from a tiny random model, all counted."""
    import qwen2audio
    from qwen2audio.eval.runner import LocalPredictor

    model = qwen2audio.load(tiny_checkpoint)
    results = evaluate("airbench_foundation", airbench_tree, LocalPredictor(model, max_new_tokens=3), tmp_path,
                       batch_size=3, progress=False)
    score = results.scores["task"]
    assert score.count == len(FOUNDATION)
    assert score.details["correct"] + score.details["unparseable"] <= len(FOUNDATION)
