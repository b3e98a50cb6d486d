"""`--benchmark synth` and `--benchmark preference` on a tiny corpus made by `qwen2audio synth` in the test, plus
hand-written rows of every metric kind (multi-audio and multi-turn ones too): the metrics against known values, the
prompts of both styles, the whole command on a random tiny checkpoint, and the preference log-probabilities against
a computation from the model's logits."""

from __future__ import annotations

import json
import re
import shutil
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

from qwen2audio.cli import main
from qwen2audio.data import parse_row
from qwen2audio.eval.benchmark import EvalItem
from qwen2audio.eval.datasets import load_items
from qwen2audio.eval.metrics import cer, exact_match, label_accuracy, wer
from qwen2audio.eval.preference import evaluate_preference
from qwen2audio.eval.results import read_predictions
from qwen2audio.eval.runner import LocalPredictor, evaluate
from qwen2audio.eval.synthetic import score_synth

pytestmark = pytest.mark.skipif(not all(shutil.which(t) for t in ("espeak-ng", "flite", "sox")),
                                reason="needs espeak-ng, flite and sox")

MAX_NEW = 3
AUDIO = "../test/audio/{:07d}.flac"  # a hand-written row's audio: the corpus' test clips
PLACEHOLDER = "<|audio_bos|><|AUDIO|><|audio_eos|>"


def row(source, task, metric, gt, n=0, instruction="Answer.", labels=(), language="en", **more):
    return {"id": f"{source}-{n}", "audio": AUDIO.format(n % 4), "source": source, "task": task, "kind": task,
            "prompt": PLACEHOLDER + instruction, "instruction": instruction, "gt": gt, "labels": list(labels),
            "metric": metric, "language": language, **more}


SOUNDS = ("sine tone", "white noise", "chord")
HAND_ROWS = [
    row("synth_hand_en", "hand_asr", "wer", "the cat sat on the mat", 0),
    row("synth_hand_en", "hand_asr", "wer", "hello world", 1),
    row("synth_hand_ja", "hand_ja", "cer", "こんにちは世界", 2, language="ja"),
    row("synth_s2tt_en_fr", "s2tt", "bleu", "le chat est assis sur le tapis rouge", 0, target="fr"),
    row("synth_s2tt_en_zh", "s2tt", "bleu", "猫坐在红色的垫子上。", 1, target="zh"),
    row("synth_hand_sound", "hand_sound", "accuracy", "sine tone", 2, labels=SOUNDS),
    row("synth_hand_sound", "hand_sound", "accuracy", "chord", 3, labels=SOUNDS),
    row("synth_hand_chat", "hand_chat", "exact", "The answer is 21.", 0, instruction=""),
    row("synth_hand_chat", "hand_chat", "exact", "The answer is 7.", 1, instruction=""),
    # two audios, and a second user turn after an answered first one
    {**row("synth_hand_two", "hand_two", "accuracy", "first", 2, labels=("first", "second")),
     "prompt": PLACEHOLDER * 2 + "Which is louder?", "audios": [AUDIO.format(2), AUDIO.format(3)],
     "messages": [{"role": "user", "content": "<audio><audio>Which is louder?"}]},
    {**row("synth_hand_turns", "hand_turns", "accuracy", "high", 3, labels=("high", "low")),
     "messages": [{"role": "user", "content": "<audio>What is it?"}, {"role": "assistant", "content": "a tone"},
                  {"role": "user", "content": "Is it high or low?"}], "audios": [AUDIO.format(3)]},
]
# what a wrong predictor answers, and the numbers it must get
WRONG = {"synth_hand_en-0": "the cat sat on mat", "synth_hand_en-1": "hello there world",  # 2 edits / 8 words
         "synth_hand_ja-2": "こんばんは世界",  # 2 substitutions / 7 characters
         "synth_s2tt_en_fr-0": "le chat est assis sur le tapis rouge", "synth_s2tt_en_zh-1": "狗坐在垫子上。",
         "synth_hand_sound-2": " Sine tone. ", "synth_hand_sound-3": "a chord",  # 1 of 2; "a chord" is no label
         "synth_hand_chat-0": "the answer is twenty-one", "synth_hand_chat-1": "The answer is 8.",  # 1 of 2
         "synth_hand_two-2": "Second.", "synth_hand_turns-3": "HIGH"}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """4 test clips (asr, numbers, sound, count) by `qwen2audio synth`, and the hand rows in `hand/` beside its
    `eval/` (so that their `../test/audio/` paths resolve the same); `all/` holds both."""
    out = tmp_path_factory.mktemp("corpus") / "c"
    assert main(["synth", "--out", str(out), "--clips", "12", "--tasks", "asr", "numbers", "sound", "count",
                 "--languages", "en", "fr", "--seed", "3", "--test-fraction", "0.34", "--workers", "1",
                 "--no-progress"]) == 0
    for name in ("hand", "all"):
        (out / name).mkdir()
    (out / "hand" / "hand.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in HAND_ROWS))
    for f in [*(out / "eval").glob("*.jsonl"), out / "hand" / "hand.jsonl"]:
        shutil.copy(f, out / "all" / f.name)
    return out


@pytest.fixture(scope="module")
def model(tiny_checkpoint):
    import qwen2audio

    return qwen2audio.load(tiny_checkpoint)


def prediction_rows(items, answer) -> list[dict]:
    return [{"id": i.id, "source": i.source, "prediction": answer(i), "gt": i.gt, "language": i.language,
             "target": i.target, "extra": i.extra} for i in items]


# -- loading ----------------------------------------------------------------------------------------------------------
def test_rows_load_with_their_chat_form(corpus):
    items = {i.id: i for i in load_items("synth", corpus / "hand")}
    assert len(items) == len(HAND_ROWS)
    two = items["synth_hand_two-2"]
    assert [Path(a).name for a in two.all_audios()] == ["0000002.flac", "0000003.flac"]
    assert all(Path(a).is_file() for a in two.all_audios())
    assert [p["type"] for p in two.conversation()[0]["content"]] == ["audio", "audio", "text"]
    turns = items["synth_hand_turns-3"].conversation()
    assert [m["role"] for m in turns] == ["user", "assistant", "user"] and turns[1]["content"] == "a tone"
    # voice chat: the audio alone; the others: the audio, then the instruction
    assert items["synth_hand_chat-0"].conversation()[0]["content"] == [{"type": "audio",
                                                                         "audio": items["synth_hand_chat-0"].audio}]
    assert items["synth_hand_en-0"].conversation()[0]["content"][1] == {"type": "text", "text": "Answer."}
    assert items["synth_s2tt_en_zh-1"].target == "zh" and items["synth_hand_ja-2"].extra["metric"] == "cer"
    # today's official-form ASR rows of the corpus: WER, the task from the source name
    made = load_items("synth", corpus / "eval")
    assert {(i.extra["task"], i.extra["metric"]) for i in made} >= {("asr", "wer"), ("numbers", "wer")}
    assert all(Path(i.audio).is_file() for i in made)
    # --limit: the first N of each source
    limited = load_items("synth", corpus / "hand", limit=1)
    assert len(limited) == len({r["source"] for r in HAND_ROWS})


def test_bad_rows_are_one_line_errors(tmp_path, corpus):
    bad = [({**HAND_ROWS[0], "metric": "f1"}, "metric 'f1'; use one of wer, cer, bleu, accuracy, exact"),
           ({**HAND_ROWS[0], "prompt": PLACEHOLDER * 2}, "the prompt holds 2 <|AUDIO|> but the item has 1 audio"),
           ({**HAND_ROWS[-1], "audios": [AUDIO.format(0)] * 2},
            "the messages hold 1 <audio> tag(s) but 'audios' lists 2 audio(s)"),
           ({k: v for k, v in HAND_ROWS[0].items() if k != "gt"}, "missing gt")]
    for n, (r, message) in enumerate(bad):
        path = tmp_path / f"bad{n}.jsonl"
        path.write_text(json.dumps(HAND_ROWS[1]) + "\n" + json.dumps(r) + "\n")
        with pytest.raises(ValueError, match=re.escape(f"bad{n}.jsonl:2: {message}")):
            load_items("synth", path)


# -- metrics ----------------------------------------------------------------------------------------------------------
def test_perfect_predictor_scores(corpus):
    items = load_items("synth", corpus / "all")
    sources, tasks, table = score_synth(prediction_rows(items, lambda i: i.gt))
    for source, s in sources.items():
        expected = {"wer": 0.0, "cer": 0.0, "bleu": 100.0, "accuracy": 1.0, "exact": 1.0}[s.metric]
        assert s.value == pytest.approx(expected), source
    assert tasks["s2tt"].value == pytest.approx(100.0) and tasks["asr"].value == 0.0
    assert "| s2tt | all | 2 | bleu | 100.00 |" in table


def test_wrong_predictor_known_numbers(corpus):
    import sacrebleu

    items = load_items("synth", corpus / "hand")
    sources, tasks, table = score_synth(prediction_rows(items, lambda i: WRONG[i.id]))
    assert sources["synth_hand_en"].value == pytest.approx(25.0)  # 2 / 8
    assert sources["synth_hand_ja"].value == pytest.approx(100 * 2 / 7)
    zh = sacrebleu.corpus_bleu(["狗坐在垫子上。"], [["猫坐在红色的垫子上。"]], tokenize="zh").score
    assert sources["synth_s2tt_en_fr"].value == pytest.approx(100.0)
    assert sources["synth_s2tt_en_zh"].value == pytest.approx(zh) and 0 < zh < 60
    # targets needing different tokenizers: the task's BLEU is the mean of its targets'
    assert tasks["s2tt"].value == pytest.approx((100.0 + zh) / 2)
    assert tasks["s2tt"].details["note"] == "mean of 2 targets' BLEU"
    sound = sources["synth_hand_sound"]
    assert (sound.value, sound.details["outside_label_set"]) == (0.5, 1)
    assert sources["synth_hand_chat"].value == 0.5
    assert sources["synth_hand_two"].value == 0.0 and sources["synth_hand_turns"].value == 1.0
    assert "| hand_asr | synth_hand_en | 2 | wer (%) | 25.00 |" in table
    assert "| hand_sound | all | 2 | accuracy | 0.5000 | outside_label_set 1 |" in table


def test_metric_functions_hand_worked():
    assert wer(["a b c d"], ["a x c"]).value == 50.0
    assert cer(["abcd"], ["abed"], language="fr").value == 25.0
    # several languages pooled: each item normalised in its own language
    pooled = wer(["twenty one", "今天天气"], ["21", "今天天汽"], language=["en", "zh"])
    assert (pooled.details["edits"], pooled.details["reference_units"]) == (1, 5)  # "21" is one word
    s = label_accuracy(["sine tone", "Laughter", "5"], ["Sine Tone.", "laughter .", "five"], labels=("sine tone",))
    assert (s.value, s.details["correct"], s.details["outside_label_set"]) == (pytest.approx(2 / 3), 2, 2)
    s = exact_match(["The answer is 21.", "vingt et un", "The answer is 3."],
                    ["the answer is twenty one", "21", "The answer is three!"], language=["en", "fr", "en"])
    assert s.value == 1.0
    assert exact_match(["The answer is 21."], ["The answer is 12."]).value == 0.0


# -- prompts ----------------------------------------------------------------------------------------------------------
def decoded_prompts(model, items, style) -> list[str]:
    inputs = LocalPredictor(model, MAX_NEW, style=style).inputs(items)
    texts = model.processor.batch_decode(inputs["input_ids"].tolist())
    # without the left padding, each audio's expanded frames shown as one <|AUDIO|>
    return [re.sub(r"(<\|AUDIO\|>)+", "<|AUDIO|>", t.replace("<|endoftext|>", "")) for t in texts]


def test_prompts_of_both_styles(corpus, model):
    items = {i.id: i for i in load_items("synth", corpus / "hand")}
    chosen = [items[k] for k in ("synth_hand_en-0", "synth_hand_chat-0", "synth_hand_two-2", "synth_hand_turns-3")]
    base = decoded_prompts(model, chosen, "base")
    assert base[0].startswith("<|audio_bos|><|AUDIO|>") and base[0].endswith("<|audio_eos|>Answer.")
    assert base[2].count("<|audio_bos|>") == 2 and "<|im_start|>" not in "".join(base)
    chat = decoded_prompts(model, chosen, "chat")
    system = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    assert chat[0].startswith(system + "<|im_start|>user\nAudio 1: <|audio_bos|><|AUDIO|>")
    assert chat[0].endswith("<|audio_eos|>\nAnswer.<|im_end|>\n<|im_start|>assistant\n")
    assert chat[1].endswith("<|audio_eos|>\n<|im_end|>\n<|im_start|>assistant\n")  # voice chat: the audio alone
    assert chat[2].endswith("Audio 2: <|audio_bos|><|AUDIO|><|audio_eos|>\nWhich is louder?<|im_end|>\n"
                            "<|im_start|>assistant\n")
    assert chat[3].endswith("What is it?<|im_end|>\n<|im_start|>assistant\na tone<|im_end|>\n<|im_start|>user\n"
                            "Is it high or low?<|im_end|>\n<|im_start|>assistant\n")


def test_auto_style_follows_the_checkpoint(corpus, model):
    items = load_items("synth", corpus / "hand")
    # the tiny checkpoint's generation_config.json ends turns with <|im_end|>: an Instruct-style checkpoint
    assert LocalPredictor(model, MAX_NEW).item_style(items[0]) == "chat"
    saved = model.generation_config
    try:
        model.generation_config = {**saved, "chat_format": "raw"}  # a base checkpoint
        assert LocalPredictor(model, MAX_NEW).item_style(items[0]) == "base"
    finally:
        model.generation_config = saved
    # the official benchmarks' items (no conversation) keep their base prompt under auto
    english_asr = next((corpus / "eval").glob("synth_asr_en*.jsonl"))  # by held-out espeak voices or by flite
    [asr] = load_items("asr", english_asr)
    assert asr.messages is None and LocalPredictor(model, MAX_NEW).item_style(asr) == "base"


# -- the command ----------------------------------------------------------------------------------------------------
def test_eval_command_both_styles_resumable(corpus, tiny_checkpoint, model, tmp_path, capsys):
    n_items = len(load_items("synth", corpus / "all"))
    out = tmp_path / "out"
    tables = {}
    for style in ("base", "chat"):
        assert main(["eval", "--model", str(tiny_checkpoint), "--benchmark", "synth", "--data", str(corpus / "all"),
                     "--prompt-style", style, "--max-new-tokens", str(MAX_NEW), "--out", str(out),
                     "--no-progress"]) == 0
        printed = capsys.readouterr().out
        assert "| task | source | n | metric | score | notes |" in printed and f"prompt style: {style}" in printed
        for task in ("asr", "numbers", "hand_asr", "hand_ja", "s2tt", "hand_sound", "hand_chat", "hand_two"):
            assert f"| {task} | all |" in printed
        results = json.loads((out / "synth.results.json").read_text())
        assert results["prompt_style"] == [style]
        assert sum(s["count"] for s in results["scores"].values()) == n_items
        assert results["tasks"]["s2tt"]["metric"] == "bleu" and results["scores"]["synth_hand_ja"]["metric"] == "cer"
        rows = read_predictions(out / "synth.predictions.jsonl")
        assert len(rows) == n_items and all(r.get("prompt_style", "base") == style for r in rows.values())
        tables[style] = (out / "synth.results.md").read_text()
        assert tables[style] in printed
    # a rerun in the same style predicts nothing; the other style's predictions are made again
    again = evaluate("synth", corpus / "all", LocalPredictor(model, MAX_NEW, style="chat"), out, progress=False)
    assert again.computed == 0 and again.markdown == tables["chat"]
    assert main(["eval", "--model", str(tiny_checkpoint), "--benchmark", "synth", "--data", str(corpus / "all"),
                 "--limit", "1", "--max-new-tokens", str(MAX_NEW), "--out", str(tmp_path / "limited"),
                 "--no-progress"]) == 0
    limited = json.loads((tmp_path / "limited" / "synth.results.json").read_text())
    assert all(s["count"] == 1 for s in limited["scores"].values())
    assert limited["prompt_style"] == ["chat"]  # auto: the tiny checkpoint is Instruct-style


class Recorder:
    """An OpenAI-compatible server that records the requests and answers each with the reference (looked up by the
    last text the conversation sends, else "The answer is 21.")."""

    def __init__(self, answers: dict[str, str]):
        self.bodies: list[dict] = []
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                recorder.bodies.append(body)
                content = body["messages"][-1]["content"]
                texts = [p["text"] for p in content if p["type"] == "text"] if isinstance(content, list) else [content]
                reply = answers.get(texts[-1] if texts else "", "The answer is 21.")
                data = json.dumps({"choices": [{"message": {"role": "assistant", "content": reply}}]}).encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


def test_api_gets_the_same_conversation(corpus, tmp_path, capsys):
    rows = [r for r in HAND_ROWS if r["source"] in ("synth_hand_two", "synth_hand_turns", "synth_hand_en")]
    (tmp_path / "d").mkdir()
    shutil.copy(corpus / "test" / "audio" / "0000002.flac", tmp_path / "a.flac")
    rows = [{**r, "audio": "../a.flac", **({"audios": ["../a.flac"] * len(r["audios"])} if "audios" in r else {})}
            for r in rows]
    (tmp_path / "d" / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    server = Recorder({"Which is louder?": "first", "Is it high or low?": "high", "Answer.": "the cat sat"})
    try:
        assert main(["eval", "--api", server.url, "--benchmark", "synth", "--data", str(tmp_path / "d"),
                     "--out", str(tmp_path / "out"), "--no-progress"]) == 0
    finally:
        server.httpd.shutdown()
    printed = capsys.readouterr().out
    assert "| hand_two | synth_hand_two | 1 | accuracy | 1.0000 |" in printed
    assert "| hand_turns | synth_hand_turns | 1 | accuracy | 1.0000 |" in printed
    conversations = [b["messages"] for b in server.bodies]
    assert len(conversations) == len(rows)
    turns = next(m for m in conversations if len(m) == 3)
    assert [m["role"] for m in turns] == ["user", "assistant", "user"]
    assert turns[0]["content"][0]["type"] == "input_audio" and turns[0]["content"][1] == {"type": "text",
                                                                                          "text": "What is it?"}
    assert turns[1]["content"] == "a tone" and turns[2]["content"] == "Is it high or low?"
    two = next(m for m in conversations if "Which is louder?" in json.dumps(m))
    assert [p["type"] for p in two[0]["content"]] == ["input_audio", "input_audio", "text"]
    assert main(["eval", "--api", server.url, "--benchmark", "synth", "--data", str(tmp_path / "d"),
                 "--prompt-style", "base", "--no-progress"]) == 1
    assert "--prompt-style is for a local model" in capsys.readouterr().err


# -- preference pairs -------------------------------------------------------------------------------------------------
def hand_logps(model, row: dict, base: Path) -> tuple[float, float]:
    """Summed log-probabilities of the chosen and rejected answers (each followed by <|im_end|>), from the model's
    logits on the chat prompt + answer, built here without the training encoder or collator."""
    processor = model.processor
    instruction = row["messages"][0]["content"].replace("<audio>", "")
    parts = [{"type": "audio"}] + ([{"type": "text", "text": instruction}] if instruction else [])
    prompt = processor.apply_chat_template([{"role": "user", "content": parts}], add_generation_prompt=True)
    inputs = processor(text=prompt, audio=[str(base / row["audios"][0])])
    out = []
    for answer in (row["chosen"], row["rejected"]):
        answer_ids = processor.tokenizer.encode(answer) + [processor.tokenizer.im_end_id]
        ids = torch.cat([inputs["input_ids"], torch.tensor([answer_ids])], dim=1)
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=torch.ones_like(ids), input_features=inputs["input_features"],
                           feature_attention_mask=inputs["feature_attention_mask"]).logits
        logp = torch.log_softmax(logits[0].double(), -1)
        start = inputs["input_ids"].shape[1]
        out.append(sum(float(logp[start + k - 1, t]) for k, t in enumerate(answer_ids)))
    return out[0], out[1]


def test_preference_eval_matches_the_logits(corpus, model, tmp_path):
    data = corpus / "test" / "dpo.jsonl"
    results = evaluate_preference(model, data, tmp_path, batch_size=3, max_new_tokens=MAX_NEW, progress=False)
    score = results.scores["dpo"]
    assert score.count == 4 and 0.0 <= score.value <= 1.0
    rows = [r for r in map(json.loads, (tmp_path / "preference.predictions.jsonl").read_text().splitlines())]
    assert score.value == sum(r["logp_chosen"] > r["logp_rejected"] for r in rows) / 4
    assert score.details["margin_sum"] == pytest.approx(sum(r["logp_chosen"] - r["logp_rejected"] for r in rows) / 4)
    first = json.loads(data.read_text().splitlines()[0])
    chosen, rejected = hand_logps(model, first, data.parent)
    assert rows[0]["logp_chosen"] == pytest.approx(chosen, rel=1e-4, abs=1e-3)
    assert rows[0]["logp_rejected"] == pytest.approx(rejected, rel=1e-4, abs=1e-3)
    assert rows[0]["tokens_chosen"] == len(model.processor.tokenizer.encode(first["chosen"])) + 1
    # the greedy answer is the chat-form generation of the tiny model, and its words are counted
    conversation = parse_row(first, data.parent).prompt
    item = EvalItem("x", None, "dpo", "", first["chosen"], messages=conversation)
    assert rows[0]["answer"] == LocalPredictor(model, MAX_NEW, style="chat")([item])[0]
    assert score.details["answer_words"] == pytest.approx(sum(len(r["answer"].split()) for r in rows) / 4)
    again = evaluate_preference(model, data, tmp_path, progress=False)
    assert again.computed == 0 and again.markdown == results.markdown


def test_preference_output_measures_hand_made():
    from qwen2audio.eval.preference import preference_scores

    rows = [{"group": "g", "logp_chosen": -1.0, "logp_rejected": -3.0, "tokens_chosen": 2, "tokens_rejected": 4,
             "answer": "The cat.", "chosen": "the cat", "rejected": "a dog barking loudly"},
            {"group": "g", "logp_chosen": -5.0, "logp_rejected": -4.0, "tokens_chosen": 5, "tokens_rejected": 2,
             "answer": "a dog barking", "chosen": "the cat", "rejected": "a dog barking loudly"}]
    s = preference_scores(rows)["g"]
    assert s.value == 0.5
    assert s.details["margin_sum"] == pytest.approx((2.0 - 1.0) / 2)
    assert s.details["margin_per_token"] == pytest.approx(((-0.5 + 0.75) + (-1.0 + 2.0)) / 2)
    assert (s.details["answer_is_chosen"], s.details["answer_is_rejected"], s.details["closer_to_rejected"]) == \
        (0.5, 0.0, 0.5)
    assert s.details["answer_words"] == 2.5


def test_preference_command(corpus, tiny_checkpoint, tmp_path, capsys):
    data = corpus / "test" / "dpo.jsonl"
    assert main(["eval", "--model", str(tiny_checkpoint), "--benchmark", "preference", "--data", str(data),
                 "--limit", "2", "--max-new-tokens", str(MAX_NEW), "--out", str(tmp_path), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "| preference set | n | accuracy |" in printed and "| dpo | 2 |" in printed
    assert json.loads((tmp_path / "preference.results.json").read_text())["scores"]["dpo"]["count"] == 2
    # both in one command, as a recipe runs them after each stage
    assert main(["eval", "--model", str(tiny_checkpoint), "--suite", "synth,preference", "--data",
                 f"synth={corpus / 'eval'}", "--data", f"preference={corpus / 'test'}", "--limit", "1",
                 "--max-new-tokens", "1", "--out", str(tmp_path / "suite"), "--no-progress"]) == 0
    assert "| asr | all | 1 |" in capsys.readouterr().out
    assert {p.name for p in (tmp_path / "suite").glob("*.results.json")} == {"synth.results.json",
                                                                            "preference.results.json"}
    assert main(["eval", "--api", "http://127.0.0.1:9/v1", "--benchmark", "preference", "--data", str(data),
                 "--no-progress"]) == 1
    assert "needs a local model" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text(data.read_text().splitlines()[0] + "\n" + '{"messages": [], "chosen": "a", "rejected": "b"}\n')
    assert main(["eval", "--model", str(tiny_checkpoint), "--benchmark", "preference", "--data", str(bad),
                 "--out", str(tmp_path / "b"), "--no-progress"]) == 1
    assert "bad.jsonl:2:" in capsys.readouterr().err
