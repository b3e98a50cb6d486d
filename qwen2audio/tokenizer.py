"""Qwen2-Audio's text side: the Qwen2 byte-level BPE, its special tokens and the prompt formats.

`Tokenizer` wraps a `tokenizers.Tokenizer` whose pipeline is the Hugging Face Qwen2 one: NFC, a regex split,
byte-level mapping, BPE over 151643 ranks (151387 merges), then the special tokens at their checkpoint ids. It reads
and writes the Hugging Face file layout (`vocab.json` + `merges.txt` and/or `tokenizer.json`, `tokenizer_config.json`
with the chat template), so transformers loads what we save and gives the same ids. The bundled files in
`assets/tokenizer/` are used when a checkpoint brings none.

Chat prompts: the official template is rendered by a small pure-Python function; any other template a checkpoint
brings is rendered by sandboxed jinja2, set up as transformers does.
"""

from __future__ import annotations

import functools
import json
from datetime import datetime
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import tokenizers
from tokenizers import AddedToken, Regex, decoders, models, normalizers, pre_tokenizers, processors

from .files import atomic_write_json

ASSETS_DIR = Path(__file__).parent / "assets" / "tokenizer"

# -- special tokens: the strings are fixed, the ids are read from the checkpoint -----------------------
ENDOFTEXT = "<|endoftext|>"  # also the pad token
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"  # the chat eos
AUDIO_TOKEN = "<|AUDIO|>"  # one per audio in a prompt; the processor expands it to the audio's frame count
AUDIO_BOS = "<|audio_bos|>"
AUDIO_EOS = "<|audio_eos|>"
SPECIAL_TOKENS: dict[str, int] = {  # Qwen2-Audio's ids, used when a checkpoint does not declare its own
    ENDOFTEXT: 151643,
    IM_START: 151644,
    IM_END: 151645,
    AUDIO_TOKEN: 151646,
    AUDIO_BOS: 151647,
    AUDIO_EOS: 151648,
}
PAD_TOKEN = ENDOFTEXT
EOS_TOKEN = IM_END
# transformers' names for the audio tokens (tokenizer_config.json `extra_special_tokens`, read by the processor)
AUDIO_TOKEN_ATTRIBUTES = {"audio_token": AUDIO_TOKEN, "audio_bos_token": AUDIO_BOS, "audio_eos_token": AUDIO_EOS}
AUDIO_PLACEHOLDER = AUDIO_BOS + AUDIO_TOKEN + AUDIO_EOS  # how one audio sits in a prompt

# -- the Qwen2 BPE pipeline --------------------------------------------------------------------------------------
PRETOKENIZE_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
MODEL_MAX_LENGTH = 32768  # what Qwen2 tokenizer configs declare (the 7B model itself has 8192 positions)
# tokenizer_config.json keys that describe one load (transformers writes some of them) and are not saved again
CONFIG_KEYS_NOT_KEPT = (
    "name_or_path", "is_local", "local_files_only", "tokenizer_file", "vocab_file", "merges_file",
    "model_specific_special_tokens",
)  # fmt: skip

def byte_to_unicode() -> dict[int, str]:
    """GPT-2's printable stand-in for every byte: the alphabet in which vocab.json and merges.txt spell tokens."""
    printable = {*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)}
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return chars


# -- prompts -----------------------------------------------------------------------------------------------------
DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant."
# The official Qwen2-Audio chat template, verbatim as transformers' `Qwen2AudioProcessor.default_chat_template`.
# fmt: off
DEFAULT_CHAT_TEMPLATE = (
    "{% set audio_count = namespace(value=0) %}"
    "{% for message in messages %}"
        "{% if loop.first and message['role'] != 'system' %}"
            "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "{% endif %}"
        "<|im_start|>{{ message['role'] }}\n"
        "{% if message['content'] is string %}"
            "{{ message['content'] }}<|im_end|>\n"
        "{% else %}"
            "{% for content in message['content'] %}"
                "{% if 'audio' in content or 'audio_url' in content or message['type'] == 'audio' "
                "or content['type'] == 'audio' %}"
                    "{% set audio_count.value = audio_count.value + 1 %}"
                    "Audio {{ audio_count.value }}: <|audio_bos|><|AUDIO|><|audio_eos|>\n"
                "{% elif 'text' in content %}"
                    "{{ content['text'] }}"
                "{% endif %}"
            "{% endfor %}"
            "<|im_end|>\n"
        "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}"
        "<|im_start|>assistant\n"
    "{% endif %}"
)
# fmt: on
GENERATION_PROMPT = f"{IM_START}assistant\n"

# The base (pre-trained) model takes no template: AUDIO_PLACEHOLDER + one of these task prompts (official eval).
# {language_tag}: " <|en|>" for a given source language, "" to let the model name it. "translate" follows the ASR
# prompt's pattern, as users of the base model write it (the official CoVoST2 prompts sit in a manifest not at hand).
BASE_TASK_PROMPTS: dict[str, str] = {
    "asr": "Detect the language and recognize the speech:{language_tag}",
    "translate": "Detect the language and translate the speech into {target}:{language_tag}",
    "caption": "Generate the caption in English:",
    "emotion": "Recognize the emotion with keywords in English:",
    "vocal_sound": "Classify the human vocal sound to VocalSound in English:",
}
# The same tasks asked of an Instruct model in a chat turn (after the audio).
CHAT_TASK_PROMPTS: dict[str, str] = {
    "asr": "Transcribe the speech{in_language} word for word. Reply with the transcript only.",
    "translate": "Translate the speech into {target}. Reply with the translation only.",
}
# Names of the report's languages (and a few more) for prompts; other codes are used as they are.
LANGUAGE_NAMES = {"en": "English", "zh": "Chinese", "yue": "Cantonese", "fr": "French", "de": "German",
                  "es": "Spanish", "it": "Italian", "ja": "Japanese", "ko": "Korean", "ru": "Russian",
                  "pt": "Portuguese", "nl": "Dutch", "ar": "Arabic"}


def base_prompt(task: str, language: str | None = "en", target: str = "en") -> str:
    """The base model's prompt for one audio, e.g. `base_prompt("asr")` ends in "...speech: <|en|>";
    language=None leaves the language tag to the model; target: the translation's language."""
    if task not in BASE_TASK_PROMPTS:
        raise ValueError(f"unknown base task {task!r}; available: {', '.join(BASE_TASK_PROMPTS)}")
    return AUDIO_PLACEHOLDER + BASE_TASK_PROMPTS[task].format(
        language_tag=f" <|{language}|>" if language else "", target=LANGUAGE_NAMES.get(target, target))


def chat_task_prompt(task: str, language: str | None = None, target: str = "en") -> str:
    """The text of a chat turn asking an Instruct model for `task` on the audio before it."""
    if task not in CHAT_TASK_PROMPTS:
        raise ValueError(f"unknown chat task {task!r}; available: {', '.join(CHAT_TASK_PROMPTS)}")
    in_language = f" (in {LANGUAGE_NAMES.get(language, language)})" if language else ""
    return CHAT_TASK_PROMPTS[task].format(in_language=in_language, target=LANGUAGE_NAMES.get(target, target))


class Tokenizer:
    """The Qwen2 BPE with Qwen2-Audio's special tokens and chat template."""

    def __init__(
        self,
        backend: tokenizers.Tokenizer,
        chat_template: str = DEFAULT_CHAT_TEMPLATE,
        eos_token: str = EOS_TOKEN,
        pad_token: str = PAD_TOKEN,
        config: Mapping[str, Any] | None = None,
    ):
        self.backend = backend
        self.chat_template = chat_template
        self.eos_token = eos_token
        self.pad_token = pad_token
        self.config = dict(config or {})  # the checkpoint's tokenizer_config.json, written back by save_pretrained
        for token in (*SPECIAL_TOKENS, eos_token, pad_token):
            if backend.token_to_id(token) is None:
                raise ValueError(f"the tokenizer has no {token} token; Qwen2-Audio needs {', '.join(SPECIAL_TOKENS)}")

    # -- loading -------------------------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path: str | Path | None = None) -> "Tokenizer":
        """Load from a checkpoint directory (`tokenizer.json`, else `vocab.json` + `merges.txt`); the bundled
        Qwen2-Audio tokenizer when `path` is None or holds no tokenizer files."""
        directory = Path(path) if path is not None else ASSETS_DIR
        if not directory.is_dir():
            raise FileNotFoundError(f"tokenizer directory {directory} does not exist")
        has_bpe = (directory / "vocab.json").is_file() and (directory / "merges.txt").is_file()
        if not (directory / "tokenizer.json").is_file() and not has_bpe:
            directory = ASSETS_DIR
        config = _read_json(directory / "tokenizer_config.json") or {}
        if (directory / "tokenizer.json").is_file():
            backend = tokenizers.Tokenizer.from_file(str(directory / "tokenizer.json"))
        else:
            added_tokens = _declared_added_tokens(directory, config)
            backend = build_backend(directory / "vocab.json", directory / "merges.txt", added_tokens)
        try:
            return cls(
                backend,
                chat_template=_read_chat_template(directory, config),
                eos_token=_token_content(config.get("eos_token")) or EOS_TOKEN,
                pad_token=_token_content(config.get("pad_token")) or PAD_TOKEN,
                config=config,
            )
        except ValueError as error:
            raise ValueError(f"{directory}: {error}") from None

    # -- ids <-> text --------------------------------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        """Token ids of `text`; special tokens written in it (e.g. "<|AUDIO|>") become their ids."""
        return self.backend.encode(text, add_special_tokens=False).ids

    def encode_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """Token ids of `text` and each token's (start, end) character span in it."""
        encoding = self.backend.encode(text, add_special_tokens=False)
        return encoding.ids, encoding.offsets

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [e.ids for e in self.backend.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        """Text of `ids`; bytes that are not valid UTF-8 (a cut multi-byte character) decode to U+FFFD."""
        return self.backend.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def decode_batch(self, batch: Sequence[Sequence[int]], skip_special_tokens: bool = False) -> list[str]:
        return self.backend.decode_batch([list(ids) for ids in batch], skip_special_tokens=skip_special_tokens)

    def token_to_id(self, token: str) -> int | None:
        return self.backend.token_to_id(token)

    def id_to_token(self, token_id: int) -> str | None:
        return self.backend.id_to_token(token_id)

    @property
    def vocab_size(self) -> int:
        """Number of tokens, special ones included (151649 for Qwen2-Audio; the embedding has more rows)."""
        return self.backend.get_vocab_size(with_added_tokens=True)

    def __len__(self) -> int:
        return self.vocab_size

    @property
    def pad_id(self) -> int:
        return self.backend.token_to_id(self.pad_token)

    @property
    def eos_id(self) -> int:
        return self.backend.token_to_id(self.eos_token)

    @property
    def im_start_id(self) -> int:
        return self.backend.token_to_id(IM_START)

    @property
    def im_end_id(self) -> int:
        return self.backend.token_to_id(IM_END)

    @property
    def audio_token_id(self) -> int:
        return self.backend.token_to_id(AUDIO_TOKEN)

    @property
    def audio_bos_id(self) -> int:
        return self.backend.token_to_id(AUDIO_BOS)

    @property
    def audio_eos_id(self) -> int:
        return self.backend.token_to_id(AUDIO_EOS)

    # -- prompts -------------------------------------------------------------------------------------------------
    def apply_chat_template(
        self, conversation: Sequence[Mapping[str, Any]], add_generation_prompt: bool = False
    ) -> str:
        """The prompt text of `conversation`, a list of {"role", "content"} messages whose content is a string or a
        list of parts ({"type": "text", "text": ...} or {"type": "audio", ...})."""
        validate_conversation(conversation)
        if self.chat_template == DEFAULT_CHAT_TEMPLATE:
            return render_default_chat(conversation, add_generation_prompt)
        variables = {"eos_token": self.eos_token, "pad_token": self.pad_token, **AUDIO_TOKEN_ATTRIBUTES}
        return _compile_template(self.chat_template).render(
            messages=conversation, add_generation_prompt=add_generation_prompt, **variables
        )

    # -- saving --------------------------------------------------------------------------------------------------
    def save_pretrained(self, directory: str | Path) -> None:
        """Write the Hugging Face files: vocab.json, merges.txt, tokenizer.json, tokenizer_config.json (with the chat
        template) and special_tokens_map.json."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.backend.model.save(str(directory))  # vocab.json + merges.txt
        self.backend.save(str(directory / "tokenizer.json"), pretty=False)
        atomic_write_json(directory / "tokenizer_config.json", self.hf_config())
        atomic_write_json(directory / "special_tokens_map.json", self.special_tokens_map())

    def hf_config(self) -> dict[str, Any]:
        """tokenizer_config.json as transformers' Qwen2Tokenizer reads it; keys we do not own are kept."""
        added = {str(i): _added_token_dict(t) for i, t in sorted(self.backend.get_added_tokens_decoder().items())}
        kept = {k: v for k, v in self.config.items() if k not in CONFIG_KEYS_NOT_KEPT}
        return {
            **kept,
            "add_prefix_space": False,
            "added_tokens_decoder": added,
            "additional_special_tokens": self.special_tokens_map()["additional_special_tokens"],
            "bos_token": None,
            "chat_template": self.chat_template,
            "clean_up_tokenization_spaces": False,
            "eos_token": self.eos_token,
            "errors": "replace",
            "extra_special_tokens": dict(AUDIO_TOKEN_ATTRIBUTES),
            "model_max_length": self.config.get("model_max_length", MODEL_MAX_LENGTH),
            "pad_token": self.pad_token,
            "split_special_tokens": False,
            "tokenizer_class": "Qwen2Tokenizer",
            "unk_token": None,
        }

    def special_tokens_map(self) -> dict[str, Any]:
        """special_tokens_map.json; like Qwen's configs, every special token but the pad one is listed as extra."""
        added = sorted(self.backend.get_added_tokens_decoder().items())
        extra = [t.content for _, t in added if t.special and t.content != self.pad_token]
        return {"additional_special_tokens": extra, "eos_token": self.eos_token, "pad_token": self.pad_token}


# -- the backend ---------------------------------------------------------------------------------------------------
def build_backend(vocab_file: Path, merges_file: Path, added_tokens: Mapping[int, AddedToken]) -> tokenizers.Tokenizer:
    """The Qwen2 pipeline over `vocab_file`/`merges_file`, with `added_tokens` at their ids."""
    bpe = models.BPE.from_file(
        str(vocab_file), str(merges_file), unk_token=None, byte_fallback=False, ignore_merges=False, fuse_unk=False
    )
    backend = tokenizers.Tokenizer(bpe)
    backend.normalizer = normalizers.NFC()
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    backend.post_processor = processors.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    # tokenizers gives an added token the next free id (or its vocab id), so adding them in id order reproduces
    # the declared ids exactly when they follow the vocabulary without gaps, as in every Qwen checkpoint.
    for token_id, token in sorted(added_tokens.items()):
        backend.add_tokens([token])
        if backend.token_to_id(token.content) != token_id:
            raise ValueError(
                f"added token {token.content} is declared with id {token_id} but lands on id "
                f"{backend.token_to_id(token.content)}: added token ids must follow the "
                f"{backend.get_vocab_size(with_added_tokens=False)} vocabulary entries without gaps"
            )
    return backend


def _declared_added_tokens(directory: Path, config: Mapping[str, Any]) -> dict[int, AddedToken]:
    """Added tokens by id: tokenizer_config.json's `added_tokens_decoder`, else the legacy `added_tokens.json`, else
    (bare vocab.json + merges.txt) Qwen2-Audio's six."""
    if "added_tokens_decoder" in config:
        return {int(i): AddedToken(**_added_token_kwargs(t)) for i, t in config["added_tokens_decoder"].items()}
    legacy = _read_json(directory / "added_tokens.json")
    if legacy is not None:
        return {int(i): _special(t) for t, i in legacy.items()}
    return default_added_tokens()


def default_added_tokens() -> dict[int, AddedToken]:
    """Qwen2-Audio's six special tokens at their ids (SPECIAL_TOKENS)."""
    return {i: _special(t) for t, i in SPECIAL_TOKENS.items()}


def _special(content: str) -> AddedToken:
    return AddedToken(content, single_word=False, lstrip=False, rstrip=False, normalized=False, special=True)


def _added_token_kwargs(entry: Mapping[str, Any]) -> dict[str, Any]:
    keys = ("content", "single_word", "lstrip", "rstrip", "normalized", "special")
    return {k: entry[k] for k in keys if k in entry}


def _added_token_dict(token: AddedToken) -> dict[str, Any]:
    return {
        "content": token.content,
        "lstrip": token.lstrip,
        "normalized": token.normalized,
        "rstrip": token.rstrip,
        "single_word": token.single_word,
        "special": token.special,
    }


def _token_content(value: Any) -> str | None:
    """A special token as tokenizer_config.json writes it: a string or an AddedToken dict."""
    return value.get("content") if isinstance(value, Mapping) else value


def _read_chat_template(directory: Path, config: Mapping[str, Any]) -> str:
    """`chat_template.jinja`, else `chat_template.json`, else tokenizer_config.json's, else the official one."""
    if (directory / "chat_template.jinja").is_file():
        return (directory / "chat_template.jinja").read_text(encoding="utf-8")
    stored = (_read_json(directory / "chat_template.json") or {}).get("chat_template", config.get("chat_template"))
    if isinstance(stored, list):  # named templates: [{"name": "default", "template": ...}, ...]
        stored = {t["name"]: t["template"] for t in stored}.get("default")
    return stored or DEFAULT_CHAT_TEMPLATE


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


# -- chat templates --------------------------------------------------------------------------------------------------
def validate_conversation(conversation: Any) -> None:
    """Raise ValueError unless `conversation` is a non-empty list of {"role": str, "content": str | list of dicts}."""
    if isinstance(conversation, (str, bytes, Mapping)) or not isinstance(conversation, Sequence):
        raise ValueError(f"a conversation is a list of messages, got {type(conversation).__name__}")
    if not conversation:
        raise ValueError("the conversation is empty: give at least one message")
    for i, message in enumerate(conversation):
        if not isinstance(message, Mapping) or "role" not in message or "content" not in message:
            raise ValueError(f"message {i} is not a {{'role', 'content'}} dict: {message!r}")
        if not isinstance(message["role"], str):
            raise ValueError(f"message {i} has a role of type {type(message['role']).__name__}, not str")
        content = message["content"]
        if isinstance(content, str):
            continue
        if isinstance(content, Mapping) or not isinstance(content, Sequence):
            raise ValueError(f"message {i} content is a {type(content).__name__}, not a string or a list of parts")
        for j, part in enumerate(content):
            if not isinstance(part, Mapping):
                raise ValueError(f"message {i} part {j} is a {type(part).__name__}, not a dict: {part!r}")


def _is_audio_part(message: Mapping[str, Any], part: Mapping[str, Any]) -> bool:
    # the official template's condition, word for word
    return "audio" in part or "audio_url" in part or message.get("type") == "audio" or part.get("type") == "audio"


def render_default_chat(conversation: Sequence[Mapping[str, Any]], add_generation_prompt: bool = False) -> str:
    """The official Qwen2-Audio template (DEFAULT_CHAT_TEMPLATE) in Python: ChatML turns, a default system turn,
    and "Audio N: <|audio_bos|><|AUDIO|><|audio_eos|>\\n" per audio part with N counted over the conversation."""
    out, n_audio = [], 0
    for i, message in enumerate(conversation):
        if i == 0 and message["role"] != "system":
            out.append(f"{IM_START}system\n{DEFAULT_SYSTEM_PROMPT}{IM_END}\n")
        out.append(f"{IM_START}{message['role']}\n")
        if isinstance(message["content"], str):
            out.append(message["content"])
        else:
            for j, part in enumerate(message["content"]):
                if _is_audio_part(message, part):
                    n_audio += 1
                    out.append(f"Audio {n_audio}: {AUDIO_PLACEHOLDER}\n")
                elif part.get("type", "text") != "text" or not isinstance(part.get("text"), str):
                    raise ValueError(f"message {i} part {j} is neither audio nor text with a string 'text': {part!r}")
                else:
                    out.append(part["text"])
        out.append(f"{IM_END}\n")
    if add_generation_prompt:
        out.append(GENERATION_PROMPT)
    return "".join(out)


@functools.lru_cache(maxsize=8)
def _compile_template(template: str):
    """A checkpoint's own chat template, compiled as transformers does (sandboxed, trim_blocks, lstrip_blocks)."""
    import jinja2
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env.from_string(template)
