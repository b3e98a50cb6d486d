"""The small world of the voice-chat facts: a fixed table of facts (colours of things, capitals, animal sounds, days
and months in order, opposites, legs of animals), each asked in a few phrasings and answered with one short sentence.
The phrasing is split between train and test by its hash, so a test question is a phrasing (and a voice) never
heard in training, of a fact that training states in other words."""

from __future__ import annotations

import random
from dataclasses import dataclass

from .text import MAX_TRIES, sentence_split

DAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
MONTHS = ("january", "february", "march", "april", "may", "june", "july", "august", "september", "october",
          "november", "december")
COLOURS = {"the sky": "blue", "grass": "green", "snow": "white", "a banana": "yellow", "coal": "black",
           "milk": "white", "a tomato": "red", "a lemon": "yellow", "the sun": "yellow", "blood": "red"}
CAPITALS = {"france": "paris", "germany": "berlin", "italy": "rome", "spain": "madrid", "japan": "tokyo",
            "china": "beijing", "england": "london", "russia": "moscow", "egypt": "cairo", "greece": "athens"}
SOUNDS = {"a dog": "woof", "a cat": "meow", "a cow": "moo", "a duck": "quack", "a sheep": "baa", "a pig": "oink"}
OPPOSITES = {"hot": "cold", "big": "small", "up": "down", "fast": "slow", "old": "new", "happy": "sad",
             "day": "night", "open": "closed", "light": "dark", "early": "late"}
LEGS = {"a dog": "four", "a bird": "two", "a spider": "eight", "a cat": "four", "a horse": "four", "an ant": "six",
        "a chicken": "two", "a fish": "no"}
# relation -> phrasings of the spoken question ({x}: the subject)
PHRASINGS = {
    "colour": ("what colour is {x}", "what is the colour of {x}", "tell me the colour of {x}",
               "which colour does {x} have"),
    "capital": ("what is the capital of {x}", "which city is the capital of {x}", "name the capital of {x}",
                "tell me the capital city of {x}"),
    "sound": ("what sound does {x} make", "what does {x} say", "which sound does {x} make",
              "how does {x} sound"),
    "after": ("what day comes after {x}", "which day is after {x}", "what is the day after {x}",
              "tell me the day after {x}"),
    "before": ("what day comes before {x}", "which day is before {x}", "what is the day before {x}",
               "tell me the day before {x}"),
    "month": ("what month comes after {x}", "which month is after {x}", "what is the month after {x}",
              "tell me the month after {x}"),
    "opposite": ("what is the opposite of {x}", "tell me the opposite of {x}", "which word means the opposite of {x}",
                 "what word is the opposite of {x}"),
    "legs": ("how many legs does {x} have", "tell me how many legs {x} has", "count the legs of {x}",
             "how many legs has {x} got"),
}


# relation -> the answer sentence: {X} the subject capitalised, {T}/{V} subject/value as names, {v} the value
ANSWERS = {"colour": "{X} is {v}.", "capital": "The capital of {T} is {V}.", "sound": "{X} says {v}.",
           "after": "{V} comes after {T}.", "before": "{V} comes before {T}.", "month": "{V} comes after {T}.",
           "opposite": "The opposite of {x} is {v}.", "legs": "{X} has {v} legs."}


@dataclass(frozen=True)
class Fact:
    relation: str
    subject: str
    value: str  # the key word of the answer

    def answer(self, value: str | None = None) -> str:
        """The short answer sentence (with another value: the same sentence, wrong)."""
        v = value or self.value
        return ANSWERS[self.relation].format(x=self.subject, X=self.subject[0].upper() + self.subject[1:],
                                             T=_title(self.subject), V=_title(v), v=v)


def _title(word: str) -> str:
    return " ".join(w.capitalize() for w in word.split())


def all_facts() -> list[Fact]:
    """Every fact of the world, in a fixed order."""
    facts = [Fact("colour", x, v) for x, v in COLOURS.items()]
    facts += [Fact("capital", x, v) for x, v in CAPITALS.items()]
    facts += [Fact("sound", x, v) for x, v in SOUNDS.items()]
    facts += [Fact("after", d, DAYS[(i + 1) % 7]) for i, d in enumerate(DAYS)]
    facts += [Fact("before", d, DAYS[i - 1]) for i, d in enumerate(DAYS)]
    facts += [Fact("month", m, MONTHS[(i + 1) % 12]) for i, m in enumerate(MONTHS)]
    facts += [Fact("opposite", a, b) for a, b in OPPOSITES.items()]
    facts += [Fact("opposite", b, a) for a, b in OPPOSITES.items()]
    facts += [Fact("legs", x, v) for x, v in LEGS.items()]
    return facts


FACTS = tuple(all_facts())


def fact_question(rng: random.Random, split: str) -> tuple[str, Fact]:
    """A spoken question of `split` (its phrasing never occurs in the other split) and its fact."""
    want = "test" if split == "test" else "train"
    for _ in range(MAX_TRIES):
        fact = rng.choice(FACTS)
        question = rng.choice(PHRASINGS[fact.relation]).format(x=fact.subject)
        if sentence_split(question) == want:
            return question, fact
    raise RuntimeError(f"no {want} question found in {MAX_TRIES} draws")  # pragma: no cover


def wrong_answers(fact: Fact, rng: random.Random) -> tuple[str, str]:
    """For DPO: the value of another fact of the same relation (a confident mistake) and a rambling answer."""
    other = rng.choice(sorted({f.value for f in FACTS if f.relation == fact.relation and f.value != fact.value}))
    rambling = (f"That is an interesting question. There are many things to say about {fact.subject}, and people "
                f"often disagree, but I believe the answer might be {fact.value}, although I am not completely sure.")
    return fact.answer(other), rambling
