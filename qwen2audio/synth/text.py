"""Text for the speech tasks: a closed-vocabulary English grammar whose sentences are split between train and test by
a hash of the sentence (a test sentence is never heard in training), and short phrases per language for language ID.
"""

from __future__ import annotations

import random
import zlib

from .speech import EngineError

TEST_SHARE = 10  # one sentence in TEST_SHARE belongs to the test split (by CRC-32 of its text)
MAX_TRIES = 1000

WORDS = {
    "name": "Anna Tom Maria John Lucy Peter Sarah David Emma James Laura Michael Kate Paul Alice Mark".split(),
    "adj": "small big old new red blue green happy quiet long short warm cold bright dark young".split(),
    "noun": ("dog cat car book house tree bird table letter window garden friend teacher child city river "
             "song apple door phone").split(),
    "place": ("the park|the school|the market|the station|the kitchen|the office|the beach|the library|"
              "the garden|the hospital").split("|"),
    "verb": "sees likes finds takes wants buys opens reads carries paints".split(),
    "verb_past": "saw liked found took wanted bought opened read carried painted".split(),
    "time": ("today|tomorrow|every morning|in the evening|on monday|on friday|last night|after lunch|"
             "this week|at noon").split("|"),
    "number": "two three four five six seven eight nine ten twelve twenty".split(),
    "intrans": "walks runs sleeps waits sings works reads laughs".split(),
}
TEMPLATES = [
    "the {adj} {noun} is near {place}",
    "{name} {verb} the {adj} {noun}",
    "{name} {verb_past} a {adj} {noun} {time}",
    "we will meet at {place} {time}",
    "there are {number} {noun}s in {place}",
    "{name} {intrans} in {place} {time}",
    "my {noun} is {adj} and {adj2}",
    "can you bring the {noun} to {place}",
    "{name} and {name2} {verb_past} the {noun}",
    "please open the {noun} {time}",
    "I think the {noun} is very {adj}",
    "{name} has {number} {adj} {noun}s",
]

# Short phrases for language ID (the language, not the words, is the label).
PHRASES = {
    "en": ["good morning, how are you", "the weather is nice today", "thank you very much", "where is the station",
           "i would like a cup of tea", "see you tomorrow"],
    "cmn": ["你好，今天怎么样", "今天天气很好", "非常感谢你", "火车站在哪里", "我想喝一杯茶", "明天见"],
    "yue": ["你好，今日點呀", "今日天氣好好", "多謝你", "火車站喺邊度", "我想飲杯茶", "聽日見"],
    "fr": ["bonjour, comment allez-vous", "il fait beau aujourd'hui", "merci beaucoup", "où est la gare",
           "je voudrais une tasse de thé", "à demain"],
    "it": ["buongiorno, come stai", "oggi il tempo è bello", "grazie mille", "dov'è la stazione",
           "vorrei una tazza di tè", "a domani"],
    "es": ["buenos días, cómo estás", "hoy hace buen tiempo", "muchas gracias", "dónde está la estación",
           "quisiera una taza de té", "hasta mañana"],
    "de": ["guten Morgen, wie geht es dir", "das Wetter ist heute schön", "vielen Dank", "wo ist der Bahnhof",
           "ich hätte gern eine Tasse Tee", "bis morgen"],
    # kana only: espeak-ng's Japanese voice reads no kanji
    "ja": ["おはようございます", "きょうはいいてんきです", "どうもありがとう", "えきはどこですか", "おちゃをください",
           "またあした"],
}
NUMBER_RANGE = (0, 9999)
CHINESE_DIGITS, CHINESE_UNITS = "零一二三四五六七八九", ("", "十", "百", "千")
NUM2WORDS_LANGUAGES = {"en": "en", "fr": "fr", "it": "it", "es": "es", "de": "de", "ja": "ja"}


def sentence_split(text: str) -> str:
    """'test' for one sentence in TEST_SHARE (fixed by the text alone), else 'train'."""
    return "test" if zlib.crc32(text.encode()) % TEST_SHARE == 0 else "train"


def _fill(template: str, rng: random.Random) -> str:
    values = {slot: rng.choice(words) for slot, words in WORDS.items()}
    values["adj2"] = rng.choice([w for w in WORDS["adj"] if w != values["adj"]])
    values["name2"] = rng.choice([w for w in WORDS["name"] if w != values["name"]])
    return template.format(**values).replace("{", "").replace("}", "")


def english_sentence(rng: random.Random, split: str) -> str:
    """A grammar sentence of `split` ('test' sentences never occur in 'train'), no punctuation."""
    want = "test" if split == "test" else "train"
    for _ in range(MAX_TRIES):
        text = _fill(rng.choice(TEMPLATES), rng)
        if sentence_split(text) == want:
            return text
    raise RuntimeError(f"no {want} sentence found in {MAX_TRIES} draws")  # pragma: no cover


def chinese_number(n: int) -> str:
    """0..9999 in Chinese characters (Mandarin and Cantonese write them alike): 1004 -> 一千零四, 15 -> 十五."""
    if not 0 <= n < 10000:
        raise ValueError(f"chinese_number covers 0..9999, got {n}")
    if n == 0:
        return CHINESE_DIGITS[0]
    digits, out, zero = str(n), [], False
    for i, ch in enumerate(digits):
        if ch == "0":
            zero = True
            continue
        if zero and out:
            out.append(CHINESE_DIGITS[0])
        zero = False
        out.append(CHINESE_DIGITS[int(ch)] + CHINESE_UNITS[len(digits) - 1 - i])
    text = "".join(out)
    return text[1:] if 10 <= n < 20 else text


def number_words(n: int, language: str) -> str:
    """`n` written out in `language` (the words the speech engine reads and the transcript): Chinese characters
    for cmn/yue, kana for ja, num2words for the rest."""
    if language in ("cmn", "yue"):
        return chinese_number(n)
    try:
        from num2words import num2words
    except ImportError:
        raise EngineError("numbers need the Python package num2words: pip install num2words "
                          "(or qwen2audio[synth])") from None
    if language == "ja":
        return num2words(n, lang="ja", reading=True)
    return num2words(n, lang=NUM2WORDS_LANGUAGES[language])


def number_item(rng: random.Random, language: str, split: str) -> tuple[int, str]:
    """A number and its words whose text belongs to `split` (test numbers are never spoken in train)."""
    want = "test" if split == "test" else "train"
    for _ in range(MAX_TRIES):
        n = rng.randint(*NUMBER_RANGE) if rng.random() < 0.7 else rng.randint(0, 100)
        words = number_words(n, language)
        if sentence_split(f"{language}:{n}") == want:
            return n, words
    raise RuntimeError(f"no {want} number found in {MAX_TRIES} draws")  # pragma: no cover
