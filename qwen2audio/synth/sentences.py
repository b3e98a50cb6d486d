"""Sentences beyond English: people and places (Faker, synth/names.py) in the report's eight languages,
French from the translation grammar's French side plus templates with num2words and Faker fr_FR, and small grammars
of Japanese (written in kanji and kana, spoken from a kana reading) and Cantonese (Traditional characters, its own
words: 喺 咗 嘅 唔). Mandarin sentences come from fortunes-zh (synth/fortunes.py).

Each template is a pair: the sentence as written (the transcript) and as the speech engine is given it. They differ in
Japanese only: espeak-ng reads no kanji, and it reads the particles は へ を as written (ha he wo), so the reading
spells them as said (わ え お). Like the English grammar, train and test differ by a hash of the written sentence.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Mapping, Sequence

from . import names
from .text import MAX_TRIES, SLOT, chinese_number, number_words, sentence_split
from .translation import (ADJECTIVES, NAMES as TRANSLATION_NAMES, NOUNS, PLACES, french_definite, french_noun_phrase,
                          random_pair)

AGE_RANGE = (5, 90)  # ages said in words ("X is 23 years old")


@dataclass(frozen=True)
class Sentence:
    text: str  # as written: the transcript
    reading: str  # what the speech engine reads (kana for Japanese, else the text)
    language: str
    template: str  # the written template, for the record


Slots = Mapping[str, Sequence[tuple[str, str]]]  # slot -> (written, reading) values


def _pairs(words: Sequence[str]) -> tuple[tuple[str, str], ...]:
    return tuple((w, w) for w in words)


def fill(template: tuple[str, str], slots: Slots, rng: random.Random) -> tuple[str, str]:
    """Fill the written template and its reading with the same values; {slot2} differs from {slot}."""
    chosen: dict[str, tuple[str, str]] = {}

    def pick(match: re.Match) -> tuple[str, str]:
        if match.group(0) not in chosen:
            taken = [v for k, v in chosen.items() if k.strip("{}").rstrip("0123456789") == match.group(1)]
            chosen[match.group(0)] = rng.choice([v for v in slots[match.group(1)] if v not in taken])
        return chosen[match.group(0)]

    written = SLOT.sub(lambda m: pick(m)[0], template[0])
    return written, SLOT.sub(lambda m: pick(m)[1], template[1])


def draw_sentence(language: str, templates: Sequence[tuple[str, str]], slots: Slots, rng: random.Random,
                  split: str, post=None) -> Sentence:
    """A sentence of `split` (test sentences never occur in train) from one of the templates."""
    want = "test" if split == "test" else "train"
    for _ in range(MAX_TRIES):
        template = rng.choice(templates)
        written, reading = fill(template, slots, rng)
        if post:
            written, reading = post(written), post(reading)
        if sentence_split(f"{language}:{written}") == want:
            return Sentence(written, reading, language, template[0])
    raise RuntimeError(f"no {want} sentence found in {MAX_TRIES} draws")  # pragma: no cover


def _same(*templates: str) -> tuple[tuple[str, str], ...]:
    return tuple((t, t) for t in templates)


# -- people and places, eight languages -----------------------------------------------------------------------------
NAME_TEMPLATES: dict[str, tuple[tuple[str, str], ...]] = {
    "en": _same("{name} lives in {place}.", "My name is {name} and I come from {place}.",
                "{name} and {name2} are going to {place} tomorrow.", "{name} is {age} years old.",
                "Have you ever been to {place}, {name}?", "{name} will visit {place} next week."),
    "cmn": _same("{name}住在{place}。", "我叫{name}，我来自{place}。", "{name}和{name2}明天去{place}。",
                 "{name}今年{age}岁。", "{name}，你去过{place}吗？", "{name}下个星期去{place}旅游。"),
    "yue": _same("{name}住喺{place}。", "我叫{name}，我係{place}人。", "{name}同{name2}聽日去{place}。",
                 "{name}今年{age}歲。", "{name}，你去過{place}未呀？", "{name}下個禮拜去{place}玩。"),
    "fr": _same("{name} habite à {place}.", "Je m'appelle {name} et j'habite à {place}.",
                "{name} et {name2} vont à {place} demain.", "{name} a {age} ans.",
                "{name} visitera {place} la semaine prochaine."),
    "it": _same("{name} abita a {place}.", "Mi chiamo {name} e vengo da {place}.",
                "{name} e {name2} vanno a {place} domani.", "{name} ha {age} anni.",
                "{name} visiterà {place} la settimana prossima."),
    "es": _same("{name} vive en {place}.", "Me llamo {name} y soy de {place}.",
                "{name} y {name2} van a {place} mañana.", "{name} tiene {age} años.",
                "{name} visitará {place} la semana que viene."),
    "de": _same("{name} wohnt in {place}.", "Ich heiße {name} und komme aus {place}.",
                "{name} und {name2} fahren morgen nach {place}.", "{name} ist {age} Jahre alt.",
                "{name} besucht nächste Woche {place}."),
    "ja": (("{name}さんは{place}に住んでいます。", "{name}さんわ{place}にすんでいます。"),
           ("はじめまして、{name}です。{place}から来ました。", "はじめまして、{name}です。{place}からきました。"),
           ("{name}さんと{name2}さんは明日{place}へ行きます。", "{name}さんと{name2}さんわあした{place}えいきます。"),
           ("{name}さんは{place}で働いています。", "{name}さんわ{place}ではたらいています。"),
           ("{name}さん、{place}に行ったことがありますか。", "{name}さん、{place}にいったことがありますか。")),
}


def _spanish_before_noun(text: str) -> str:
    """Spanish shortens 'uno' before a noun: veintiuno años -> veintiún años, treinta y uno -> treinta y un."""
    text = re.sub(r"\bveintiuno (?=años)", "veintiún ", text)
    return re.sub(r"\buno (?=años)", "un ", text)


def _spanish_and(text: str) -> str:
    """'y' becomes 'e' before an i sound: Sonia e Isabel."""
    return re.sub(r" y (?=(?:I|Hi)(?![aeo]))", " e ", text)


@lru_cache(maxsize=None)
def ages(language: str) -> tuple[tuple[str, str], ...]:
    return _pairs([number_words(n, language) for n in range(AGE_RANGE[0], AGE_RANGE[1] + 1)])


@lru_cache(maxsize=None)
def name_slots(language: str) -> dict[str, tuple[tuple[str, str], ...]]:
    slots = {"name": tuple((p.text, p.reading) for p in names.people(language)),
             "place": tuple((p.text, p.reading) for p in names.places(language))}
    if language != "ja":
        slots["age"] = ages(language)
    return slots


def names_sentence(rng: random.Random, language: str, split: str) -> Sentence:
    """A sentence about people and places (Faker's, in the language's locale)."""
    post = (lambda s: _spanish_and(_spanish_before_noun(s))) if language == "es" else None
    return draw_sentence(language, NAME_TEMPLATES[language], name_slots(language), rng, split, post)


# -- French ---------------------------------------------------------------------------------------------------------
FRENCH_TEMPLATES = (
    "{name} habite à {place} depuis {count} ans.", "{name} a {age} ans.", "Le train pour {place} part à {hour} heures.",
    "{name} cherche {anp}.", "Il y a {count} {plural} dans {room}.", "{name} et {name2} arrivent à {place} {day}.",
    "Nous sommes le {date} {month}.", "{name} a acheté {count} {plural} pour {price} euros.",
    "Le rendez-vous avec {name} est à {hour} heures.", "{name} travaille à {place} avec {name2}.",
    "{name} a trouvé {anp} dans {room}.", "{name} part pour {place} {day} matin.")  # written as read
FRENCH_DAYS = ("lundi", "mardi", "mercredi", "jeudi", "vendredi", "samedi", "dimanche")
FRENCH_MONTHS = ("janvier", "février", "mars", "avril", "mai", "juin", "juillet", "août", "septembre", "octobre",
                 "novembre", "décembre")
FRENCH_GRAMMAR_SHARE = 0.4  # of the French sentences, the translation grammar's French side (names from Faker)
# numbers said before a noun: 2..20 (no "un", and 21 would be "vingt et une" before a feminine noun), hours likewise
FRENCH_COUNTS, FRENCH_HOURS, FRENCH_PRICES = range(2, 21), (*range(2, 21), 22, 23), range(2, 1000)


@lru_cache(maxsize=None)
def french_slots() -> dict[str, tuple[tuple[str, str], ...]]:
    words = lambda numbers: _pairs([number_words(n, "fr") for n in numbers])  # noqa: E731
    noun_phrases = [f"{'un' if n.fr_gender == 'm' else 'une'} {french_noun_phrase(n, a)}" for n in NOUNS
                    for a in ADJECTIVES]
    return {**name_slots("fr"), "count": words(FRENCH_COUNTS), "hour": words(FRENCH_HOURS),
            "price": words(FRENCH_PRICES), "date": words(range(2, 29)), "anp": _pairs(noun_phrases),
            "plural": _pairs([n.fr_plural for n in NOUNS]),
            "room": _pairs([french_definite(p.fr, p.fr_gender) for p in PLACES]),
            "day": _pairs(FRENCH_DAYS), "month": _pairs(FRENCH_MONTHS)}


def _grammar_french(rng: random.Random) -> str:
    """The French reference of a translation-grammar pair, its English name (Tom, Mary) made a French one."""
    text = random_pair(rng).references["fr"]
    people = french_slots()["name"]
    for english in TRANSLATION_NAMES:
        text = re.sub(rf"\b{english}\b", lambda _: rng.choice(people)[0], text)
    return text


def french_sentence(rng: random.Random, split: str) -> Sentence:
    """Everyday French: the translation grammar's French side or a template with numbers, names and places."""
    want = "test" if split == "test" else "train"
    for _ in range(MAX_TRIES):
        if rng.random() < FRENCH_GRAMMAR_SHARE:
            template, text = "translation", _grammar_french(rng)
        else:
            template = rng.choice(FRENCH_TEMPLATES)
            text, _ = fill((template, template), french_slots(), rng)
        if sentence_split(f"fr:{text}") == want:
            return Sentence(text, text, "fr", template)
    raise RuntimeError(f"no {want} French sentence found in {MAX_TRIES} draws")  # pragma: no cover


# -- Japanese (written, reading) ------------------------------------------------------------------------------------
JAPANESE_SLOTS: dict[str, tuple[tuple[str, str], ...]] = {
    "tfut": (("今日", "きょう"), ("明日", "あした"), ("来週", "らいしゅう"), ("今晩", "こんばん"), ("週末", "しゅうまつ")),
    "tpast": (("昨日", "きのう"), ("先週", "せんしゅう"), ("今朝", "けさ"), ("去年", "きょねん")),
    "food": (("パン", "パン"), ("りんご", "りんご"), ("魚", "さかな"), ("ご飯", "ごはん"), ("ケーキ", "ケーキ"),
             ("すし", "すし"), ("卵", "たまご")),
    "drink": (("お茶", "おちゃ"), ("水", "みず"), ("コーヒー", "コーヒー"), ("牛乳", "ぎゅうにゅう"), ("ジュース", "ジュース")),
    "thing": (("本", "ほん"), ("かばん", "かばん"), ("時計", "とけい"), ("傘", "かさ"), ("靴", "くつ"), ("帽子", "ぼうし"),
              ("辞書", "じしょ"), ("カメラ", "カメラ")),
    "adj": (("高い", "たかい"), ("安い", "やすい"), ("大きい", "おおきい"), ("小さい", "ちいさい"), ("新しい", "あたらしい"),
            ("古い", "ふるい")),
    "animal": (("犬", "いぬ"), ("猫", "ねこ"), ("鳥", "とり")),
    "cute": (("かわいい", "かわいい"), ("小さい", "ちいさい"), ("大きい", "おおきい"), ("元気", "げんき")),
    "vehicle": (("電車", "でんしゃ"), ("バス", "バス"), ("車", "くるま"), ("飛行機", "ひこうき"), ("自転車", "じてんしゃ")),
    "weather": (("晴れ", "はれ"), ("雨", "あめ"), ("雪", "ゆき"), ("くもり", "くもり")),
}
JAPANESE_TEMPLATES = (
    ("{name}さんは{place}に住んでいます。", "{name}さんわ{place}にすんでいます。"),
    ("{name}さんは{tfut}{place}へ行きます。", "{name}さんわ{tfut}{place}えいきます。"),
    ("{name}さんは{tpast}{place}で{thing}を買いました。", "{name}さんわ{tpast}{place}で{thing}おかいました。"),
    ("私は毎朝{food}を食べます。", "わたしわまいあさ{food}おたべます。"),
    ("{name}さんは{drink}を飲みます。", "{name}さんわ{drink}おのみます。"),
    ("この{thing}はとても{adj}です。", "この{thing}わとても{adj}です。"),
    ("{thing}は{price}円です。", "{thing}わ{price}えんです。"),
    ("{name}さんの{animal}はとても{cute}です。", "{name}さんの{animal}わとても{cute}です。"),
    ("{name}さんと{name2}さんは{tfut}{place}で会います。", "{name}さんと{name2}さんわ{tfut}{place}であいます。"),
    ("{place}まで{vehicle}で行きます。", "{place}まで{vehicle}でいきます。"),
    ("{place}は{tfut}{weather}です。", "{place}わ{tfut}{weather}です。"),
    ("{name}さん、{tpast}{place}へ行きましたか。", "{name}さん、{tpast}{place}えいきましたか。"),
    ("{name}さんは{vehicle}で{place}へ帰りました。", "{name}さんわ{vehicle}で{place}えかえりました。"),
    ("{tpast}、{name}さんに{thing}をもらいました。", "{tpast}、{name}さんに{thing}おもらいました。"),
)
YEN = range(100, 10000, 100)  # prices in yen: 百 .. 九千九百


@lru_cache(maxsize=None)
def japanese_slots() -> dict[str, tuple[tuple[str, str], ...]]:
    from num2words import num2words  # the numbers family's dependency (text.number_words) as well

    prices = tuple((num2words(n, lang="ja"), num2words(n, lang="ja", reading=True)) for n in YEN)
    return {**JAPANESE_SLOTS, **name_slots("ja"), "price": prices}


def japanese_sentence(rng: random.Random, split: str) -> Sentence:
    """A Japanese sentence in kanji and kana (the transcript) and its kana reading (what espeak-ng speaks)."""
    return draw_sentence("ja", JAPANESE_TEMPLATES, japanese_slots(), rng, split)


# -- Cantonese (Traditional characters) -----------------------------------------------------------------------------
CANTONESE_SLOTS: dict[str, tuple[tuple[str, str], ...]] = {k: _pairs(v) for k, v in {
    "tfut": ("聽日", "今晚", "下個禮拜", "後日", "星期六"),
    "tpast": ("琴日", "上個禮拜", "今朝", "尋晚"),
    "food": ("飯", "麵", "點心", "魚蛋", "雞蛋仔", "菠蘿包"),
    "drink": ("奶茶", "咖啡", "檸檬茶", "凍檸茶", "水"),
    "mthing": ("本書", "部電話", "隻手錶", "個銀包", "把遮", "條鎖匙", "架單車", "對鞋"),  # measure word + noun
    "adj": ("好靚", "好貴", "好平", "好大", "好細", "好新", "好舊"),
    "animal": ("狗", "貓", "雀仔"),
    "count": ("兩", *(chinese_number(n) for n in range(3, 10))),  # 兩 before a measure word, not 二
    "weather": ("熱", "凍", "大風", "潮濕"),
}.items()}
CANTONESE_TEMPLATES = _same(
    "{name}{tfut}去{place}。", "{name}住喺{place}。", "{name}{tpast}喺{place}買咗一{mthing}。", "{name}好鍾意食{food}。",
    "{name}想飲杯{drink}。", "你識唔識{name}呀？", "呢{mthing}{adj}。", "{name}同{name2}{tfut}一齊去{place}。",
    "{name}話佢{tfut}會嚟。", "{name}屋企有{count}隻{animal}。", "{place}今日好{weather}。", "唔該幫我拎嗰{mthing}。",
    "{name}而家喺{place}做嘢。", "我{tpast}同{name}去咗{place}。", "{name}，你幾時返{place}呀？")


@lru_cache(maxsize=None)
def cantonese_slots() -> dict[str, tuple[tuple[str, str], ...]]:
    return {**CANTONESE_SLOTS, **name_slots("yue")}


def cantonese_sentence(rng: random.Random, split: str) -> Sentence:
    """A Cantonese sentence in Traditional characters, people and places from Faker's zh_TW."""
    return draw_sentence("yue", CANTONESE_TEMPLATES, cantonese_slots(), rng, split)
