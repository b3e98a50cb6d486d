"""Text for the speech tasks: a closed-vocabulary English grammar whose sentences are split between train and test by
a hash of the sentence (a test sentence is never heard in training), and short phrases per language for language ID.
"""

from __future__ import annotations

import random
import re
import zlib

from .speech import EngineError

TEST_SHARE = 10  # one sentence in TEST_SHARE belongs to the test split (by CRC-32 of its text)
MAX_TRIES = 1000

# The English grammar: slots filled from word lists, every word among the 3000 most frequent English word forms
# (wordfreq.top_n_list("en", 3000), checked by tests/test_synth.py, so synth needs no wordfreq at run time).
# {slot2} is a second value of {slot}, different from the first.
SLOTS: dict[str, tuple[str, ...]] = {
    "name": ("Tom", "John", "Peter", "David", "James", "Michael", "Paul", "Mark", "Mary", "Robert", "George", "Jack",
             "Sam", "Ben", "Daniel", "Henry", "Frank", "Chris", "Joe", "Nick", "Max", "Grace", "Rose", "Alex",
             "Ryan", "Kevin", "Steve", "Adam", "Thomas", "William"),
    "subj": ("my friend", "the teacher", "my mother", "my father", "my brother", "my sister", "the doctor", "our boss",
             "his wife", "her husband", "the old man", "the young woman", "the little girl", "the little boy",
             "my son", "my daughter", "the driver", "the manager", "the new student"),
    "subjs": ("we", "they", "you", "my parents", "the children", "our friends", "the students", "the kids",
              "the girls", "the boys", "the people", "the players"),
    "thing": ("book", "car", "house", "phone", "letter", "bag", "box", "cup", "chair", "table", "door", "window",
              "picture", "camera", "computer", "bike", "ball", "ticket", "key", "shirt", "hat", "cake", "apple",
              "dog", "cat", "bird", "horse", "bottle", "plate", "map", "radio", "bed", "gift", "card", "dress",
              "ring", "watch", "boat"),
    "things": ("books", "cars", "houses", "letters", "doors", "windows", "pictures", "balls", "tickets", "dogs",
               "birds", "trees", "cards", "papers", "games", "songs", "movies", "films", "flowers", "rooms", "lights",
               "shoes"),
    "adj": ("small", "big", "old", "new", "red", "blue", "green", "black", "white", "yellow", "long", "short",
            "heavy", "light", "cheap", "expensive", "nice", "beautiful", "clean", "dirty", "warm", "cold", "little",
            "large", "brown", "pink", "empty", "dark", "strange", "simple", "soft", "broken", "lovely", "perfect"),
    "mood": ("happy", "tired", "busy", "sad", "angry", "sick", "ready", "late", "early", "excited", "sorry", "lucky",
             "quiet", "kind", "funny"),
    "weather": ("cold", "warm", "hot", "nice", "dark", "bright", "quiet", "wet", "dry", "beautiful"),
    "place": ("the park", "the school", "the station", "the office", "the hospital", "the library", "the store",
              "the market", "the bank", "the hotel", "the airport", "the restaurant", "the beach", "the church",
              "the museum", "the river", "the shop", "the kitchen", "the garden", "the club", "the party",
              "the hall", "the city center"),
    "vb": ("like", "want", "need", "buy", "find", "bring", "make", "read", "open", "clean", "sell", "carry", "take",
           "see", "love", "watch", "fix", "paint", "send", "keep", "close", "get", "use", "show", "move", "change",
           "order", "hold", "share", "pick", "check", "build", "write"),
    "vs": ("likes", "wants", "needs", "finds", "brings", "makes", "takes", "sees", "loves", "keeps", "gets", "gives",
           "uses", "shows", "moves", "changes", "orders", "holds", "shares", "follows"),
    "vd": ("liked", "wanted", "needed", "bought", "found", "brought", "made", "opened", "sold", "carried", "took",
           "saw", "loved", "watched", "fixed", "sent", "kept", "closed", "got", "used", "showed", "moved", "changed",
           "ordered", "held", "shared", "picked", "checked", "built", "lost", "broke"),
    "vmove": ("bring", "take", "send", "carry", "move"),
    "ib": ("sleep", "walk", "run", "sing", "work", "laugh", "wait", "play", "cry", "dance", "study", "travel", "eat",
           "cook", "read", "talk", "sit", "stand", "rest", "listen"),
    "is": ("works", "runs", "plays", "studies", "talks", "stands", "moves", "lives", "comes", "goes"),
    "id": ("walked", "ran", "worked", "played", "talked", "sat", "stood", "stayed", "arrived"),
    "went": ("came", "walked", "ran", "went", "moved"),
    "tpast": ("yesterday", "last night", "last week", "this morning", "last year", "on monday", "on tuesday",
              "on wednesday", "on thursday", "on friday", "on saturday", "on sunday", "after lunch", "two days ago",
              "a week ago", "an hour ago", "after school"),
    "tfut": ("tomorrow", "next week", "tonight", "this evening", "this weekend", "next month", "on monday",
             "on friday", "on sunday", "after work", "later", "soon", "at ten", "at nine", "at seven", "at eight",
             "in the morning", "after dinner", "next year"),
    "thab": ("every day", "every morning", "every night", "every week", "in the morning", "in the afternoon",
             "in the evening", "after school", "after work", "at night", "on sunday", "on the weekend"),
    "tnow": ("today", "this morning", "right now", "tonight", "this week"),
    "num": ("two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "twenty"),
    "hour": ("one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"),
    "vehicle": ("train", "bus", "plane", "boat"),
}
TEMPLATES: tuple[str, ...] = (
    # statements
    "{name} {vs} the {adj} {thing}",
    "{subj} {vs} {things} {thab}",
    "{subjs} {vb} the {thing} {thab}",
    "I {vb} this {adj} {thing}",
    "{name} {vd} a {adj} {thing} {tpast}",
    "{subjs} {vd} {num} {things} {tpast}",
    "we will {vb} the {thing} {tfut}",
    "{name} will {vb} the {adj} {thing} {tfut}",
    "I am going to {vb} a new {thing} {tfut}",
    "{subj} is going to {place} {tfut}",
    "{subjs} are at {place} {tnow}",
    "{name} went to {place} {tpast}",
    "{subjs} went to {place} with {name} {tpast}",
    "we will meet at {place} {tfut}",
    "there is a {adj} {thing} in {place}",
    "there are {num} {things} in {place}",
    "the {thing} is very {adj}",
    "the {things} are too {adj}",
    "my {thing} is {adj} and {adj2}",
    "{name} has {num} {adj} {things}",
    "I have a {adj} {thing} for {name}",
    "{name} is very {mood} {tnow}",
    "{subjs} were {mood} {tpast}",
    "I was {mood} because the {thing} was {adj}",
    "{name} {is} {thab}",
    "{subjs} {ib} at {place} {thab}",
    "{name} {id} at {place} {tpast}",
    "{name} and {name2} {went} home {tpast}",
    "{name} gave {name2} a {adj} {thing}",
    "{name} told me that the {thing} was {adj}",
    "I think {subj} {vs} {things}",
    "I think the {thing} is {adj}",
    "{name} said that {subjs} will come {tfut}",
    "it is very {weather} {tnow}",
    "it was {weather} {tpast}",
    "it will be {weather} {tfut}",
    "the {thing} costs {num} dollars",
    "the {adj} {thing} was {num} hundred dollars",
    "the {vehicle} leaves at {hour} in the morning",
    "{name} is {num} years old",
    "we need {num} more {things}",
    "{name} never {vs} the {thing}",
    "{name} and I {vd} the {thing} together",
    "{subj} lives near {place}",
    "{name} {vd} the {thing} but {subj} {vd2} the {things}",
    "I wanted to go to {place} but it was too {weather}",
    "we can {vb} the {thing} if you want",
    "{name} stayed at home because it was {weather}",
    # questions
    "where is the {adj} {thing}",
    "where are the {things}",
    "where did {name} go {tpast}",
    "do you {vb} the {adj} {thing}",
    "does {name} {vb} {things}",
    "did {name} {vb} the {thing} {tpast}",
    "can you {vmove} the {thing} to {place}",
    "can you {vb} the {thing} for me",
    "will you {vb} the {thing} {tfut}",
    "why is {name} so {mood} {tnow}",
    "who {vd} the {adj} {thing}",
    "how many {things} do you {vb}",
    "what time does the {vehicle} leave",
    "when will {name} come home",
    "is the {thing} {adj} or {adj2}",
    "are you {mood} {tnow}",
    "what did {name} {vb} {tpast}",
    "how much is the {adj} {thing}",
    "which {thing} do you {vb}",
    "is {name} at {place} {tnow}",
    # requests
    "please {vb} the {thing} {tfut}",
    "please {vmove} the {thing} to {place}",
    "don't forget the {thing}",
    "let's go to {place} {tfut}",
    "let's meet at {place} {tfut}",
    "give the {thing} to {name}",
)
SLOT = re.compile(r"\{([a-z]+?)(\d?)\}")

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
    """Fill every {slot}; a {slot2} differs from the {slot} before it; "a" before a vowel becomes "an"."""
    chosen: dict[str, list[str]] = {}

    def value(match: re.Match) -> str:
        slot, taken = match.group(1), chosen.setdefault(match.group(1), [])
        taken.append(rng.choice([w for w in SLOTS[slot] if w not in taken]))
        return taken[-1]

    return re.sub(r"\ba (?=[aeio])", "an ", SLOT.sub(value, template))


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
