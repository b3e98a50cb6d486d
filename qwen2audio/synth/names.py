"""People's names and places from Faker, one locale per language of the report, for the sentences of
synth/sentences.py. Each pool is a fixed number of Faker draws from a fixed seed, filtered to what the language's
espeak-ng voice reads as written, deduplicated and sorted: fixed by the installed Faker alone, and drawn from with the
item's own `random.Random` afterwards (Faker's generator is never used while items are rendered).

Japanese names come with their kana reading (Faker's name pairs), which is what espeak-ng speaks (it reads no kanji);
Faker has no readings for Japanese places, so those few are listed here with theirs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from .speech import EngineError

FAKER_LOCALES = {"en": "en_US", "cmn": "zh_CN", "yue": "zh_TW", "fr": "fr_FR", "it": "it_IT", "es": "es_ES",
                 "de": "de_DE", "ja": "ja_JP"}  # zh_TW: Traditional characters, as Cantonese is written
POOL_SEED = 0
POOL_DRAWS = 400  # draws per pool (the pools hold the distinct ones: ~50 to ~400 names)
SEXES = ("male", "female")
LATIN = r"[A-Za-zÀ-ÖØ-öø-ÿ]+(?:[ '-][A-Za-zÀ-ÖØ-öø-ÿ]+)*"  # letters (with accents), inner spaces, hyphens, apostrophes
WRITTEN = {"en": LATIN, "fr": LATIN, "it": LATIN, "es": LATIN, "de": LATIN,
           "cmn": r"[\u4e00-\u9fff]{2,4}", "yue": r"[\u4e00-\u9fff]{2,4}", "ja": r"[\u3040-\u30ff\u4e00-\u9fff]+"}
KANA = re.compile(r"[\u3040-\u30ff]+")
# Japanese places (Faker's have no reading): written form, hiragana reading
JAPANESE_PLACES = (("東京", "とうきょう"), ("大阪", "おおさか"), ("京都", "きょうと"), ("横浜", "よこはま"),
                   ("名古屋", "なごや"), ("札幌", "さっぽろ"), ("福岡", "ふくおか"), ("神戸", "こうべ"),
                   ("奈良", "なら"), ("広島", "ひろしま"), ("仙台", "せんだい"), ("沖縄", "おきなわ"))


@dataclass(frozen=True)
class Name:
    """A person's name or a place as written, and as the speech engine is given it (kana for Japanese)."""

    text: str
    reading: str
    sex: str | None = None  # people only


def _faker(language: str):
    try:
        from faker import Faker
    except ImportError:
        raise EngineError("names and places need the Python package Faker: pip install Faker "
                          "(or qwen2audio[synth])") from None
    if language not in FAKER_LOCALES:
        raise ValueError(f"no Faker locale for language {language!r}; known: {', '.join(FAKER_LOCALES)}")
    fake = Faker(FAKER_LOCALES[language])
    fake.seed_instance(POOL_SEED)
    for provider in fake.get_providers():
        # it_IT builds its `cities` list from a set, so its order (and every seeded draw from it) followed the
        # process' string hash seed: sorted, the pool is fixed by the installed Faker alone
        if isinstance(getattr(provider, "cities", None), list):
            provider.cities = sorted(provider.cities)
    return fake


def _draws(draw, n: int = POOL_DRAWS) -> list:
    return [draw() for _ in range(n)]


def _keep(names, language: str) -> tuple[Name, ...]:
    written = re.compile(WRITTEN[language])
    return tuple(sorted({n for n in names if written.fullmatch(n.text) and (language != "ja" or KANA.fullmatch(
        n.reading))}, key=lambda n: (n.text, n.reading, n.sex or "")))


@lru_cache(maxsize=None)
def people(language: str) -> tuple[Name, ...]:
    """Names of people: given names (Chinese: family and given name; Japanese: family names with their reading,
    spoken with さん)."""
    fake = _faker(language)
    if language == "ja":
        return _keep((Name(text, kana, None) for text, kana, _ in _draws(fake.last_name_pair)), language)
    out = []
    for sex in SEXES:
        given = getattr(fake, f"first_name_{sex}")
        if language in ("cmn", "yue"):
            out += [Name(family + first, family + first, sex) for family, first in
                    zip(_draws(fake.last_name), _draws(given))]
        else:
            out += [Name(n, n, sex) for n in _draws(given)]
    return _keep(out, language)


PLACE_PROVIDERS = {"en": ("city", "state"), "cmn": ("province", "city_name"), "yue": ("city",), "fr": ("city",),
                   "it": ("city",), "es": ("city",), "de": ("city",)}  # the Faker methods a language's places come from
PLACE_SHAPES = {"fr": re.compile(r".+[ -].+")}  # fr_FR's one-word towns are family names; its compounds read as towns


@lru_cache(maxsize=None)
def places(language: str) -> tuple[Name, ...]:
    """Towns and regions a sentence can be about (for French, Italian, Spanish and German towns only, which take the
    plain preposition: à Lyon, a Roma, en Lugo, in Bonn)."""
    if language == "ja":
        return tuple(Name(text, reading) for text, reading in JAPANESE_PLACES)
    fake = _faker(language)
    shape = PLACE_SHAPES.get(language, re.compile(".+"))
    return _keep((Name(p, p) for method in PLACE_PROVIDERS[language] for p in _draws(getattr(fake, method))
                  if shape.fullmatch(p)), language)


def load(languages) -> None:
    """Fill the pools of these languages (before worker processes fork, so each worker has them)."""
    for language in languages:
        people(language)
        places(language)
