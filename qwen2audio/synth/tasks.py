"""Task families: each draws one item from a seeded `Draw` and returns its audio and exact labels. `TASKS` is the
registry `qwen2audio synth --tasks` chooses from; `kind` is the stage-1 task whose instruction pool
(`data/prompts.INSTRUCTIONS`) the item's prompt comes from."""

from __future__ import annotations

import operator
import random
from dataclasses import dataclass, field, replace
from typing import Any, Callable

import numpy as np

from ..audio import SAMPLE_RATE
from ..data.prompts import draw_instruction, language_name
from . import effects, sentences, sounds
from .fortunes import LANGUAGE_DIRS, fortune_sentences, mandarin_sentences
from .effects import SOX
from .sentences import Sentence
from .speech import (AMPLITUDE, ESPEAK, FESTIVAL, FESTIVAL_VOICES, FLITE, FLITE_STRETCH, FLITE_VOICES, HANZI_VOICES,
                     PITCH_RANGE, RATE_WPM, WHISPER_VARIANTS, Voice, espeak, speak, variants)
from .text import PHRASES, english_sentence, number_item, sentence_split
from .translation import TARGETS, translation_pair
from .world import fact_question, wrong_answers

LANGUAGES = tuple(PHRASES)  # the report's eight: en cmn yue fr it es de ja
GAP_SECONDS = 0.4  # silence between two events of a question
HIGH_HZ, LOW_HZ = (1200.0, 3000.0), (120.0, 300.0)  # a "high" and a "low" tone
LOUDNESS_DB = (10.0, 20.0)  # how much louder the louder of two tones is
COUNT_RANGE = (1, 9)  # how many beeps or clicks a counting item holds
ORDER_EVENTS = ("sine tone", "white noise", "click train", "siren", "chord", "rising sweep")
HELD_OUT_ENGINE_SHARE = 0.5  # of the test split's English sentences, spoken by flite (never heard in training)
FESTIVAL_SHARE = 0.3  # of the training split's English sentences, spoken by festival (the rest by espeak-ng)
STYLES = ("whispering", "fast", "slow", "loud", "normal")
NOISES = ("white noise", "pink noise", "brown noise")  # the beds of noisy speech and of mixed scenes
CONDITIONS = ("noise", "telephone", "reverb")  # what happens to the speech of a noisy-ASR item
SCENE_SNR_DB = (8.0, 20.0)  # speech over a noise bed in a mixed scene
OPERATIONS = {"plus": operator.add, "minus": operator.sub, "times": operator.mul}
SMALL_NUMBERS = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
                 "sixteen seventeen eighteen nineteen twenty").split()
ARITHMETIC_MAX = (20, 12)  # the largest first and second numbers of a spoken arithmetic question
BACKGROUND_SHARE = 0.3  # of the voice-chat questions, spoken over a noise bed
HEDGED_SHARE = 0.5  # of the world-fact questions, answered in SFT by a right but hedged, rambling sentence


@dataclass
class Draw:
    """The randomness of one item: numpy for signals, `random.Random` for choices and instructions."""

    rng: np.random.Generator
    py: random.Random
    split: str
    languages: tuple[str, ...]
    voices: str = "core"  # speech.VOICE_SETS: which espeak-ng variants the training split speaks with


@dataclass
class Item:
    """One clip and its labels. answer: the reference (a transcript or a label); labels: the label set the answer is
    drawn from (empty for open answers); fields: the row's fields (language, question ...) and the voice; voice_chat:
    the instruction is spoken, so the chat turn holds the audio alone (the report's voice-chat mode)."""

    kind: str
    audio: np.ndarray
    answer: str
    labels: tuple[str, ...] = ()
    fields: dict[str, Any] = field(default_factory=dict)
    voice: str | None = None
    voice_chat: bool = False
    wrong: tuple[str, ...] = ()  # worse answers for DPO that the family knows (else corpus.rejected_answer makes one)
    extra_audios: tuple[np.ndarray, ...] = ()  # multi-audio items: the second (third ...) recording
    turns: tuple[tuple[str, str], ...] = ()  # multi-turn items: the (user text, answer) turns before the last one
    instruction: str | None = None  # the last user turn's text, where the family writes it (else drawn from a pool)
    answer_parts: tuple[tuple[str, bool], ...] = ()  # the SFT answer as (text, trained on) parts (empty: all of it)
    decoys: tuple[tuple[tuple[str, bool], ...], ...] = ()  # more SFT answers to the same audio, as parts
    pretrain: tuple[str, str] | None = None  # the stage-1 row's (task, text), where not (kind, answer)
    sft_answer: str | None = None  # the SFT row's answer where not `answer`: right but dispreferred (DPO rejects it)


@dataclass(frozen=True)
class TaskFamily:
    name: str
    make: Callable[[Draw], Item]
    description: str
    engines: tuple[str, ...] = ()
    languages: tuple[str, ...] | None = None  # the languages it can speak (None: no speech)
    mean_seconds: float = 2.0  # the typical clip length, to turn --hours into a clip count
    prepare: Callable[[tuple[str, ...]], None] | None = None  # checks (and loads) its data for these languages
    text_rows: Callable[[random.Random], list[dict]] | None = None  # text the LM must know for its answers


def _concat(*parts: np.ndarray) -> np.ndarray:
    gap = np.zeros(int(GAP_SECONDS * SAMPLE_RATE), np.float32)
    out = [parts[0]]
    for p in parts[1:]:
        out += [gap, p]
    return np.concatenate(out).astype(np.float32)


# -- sounds -----------------------------------------------------------------------------------------------------------
def make_sound(d: Draw) -> Item:
    label = d.py.choice(list(sounds.SOUNDS))
    audio, params = sounds.render_sound(label, d.rng)
    return Item("sound", audio, label, tuple(sounds.SOUNDS), {"params": params})


def make_count(d: Draw) -> Item:
    n = d.py.randint(*COUNT_RANGE)
    what = d.py.choice(("beeps", "clicks"))
    if what == "beeps":
        audio = sounds.beeps(n, float(d.rng.uniform(600, 1500)))
    else:
        audio = sounds.clicks(n, float(d.rng.uniform(*sounds.CLICK_GAP_SECONDS)))
    audio = (audio * sounds.PEAK).astype(np.float32)
    labels = tuple(str(i) for i in range(COUNT_RANGE[0], COUNT_RANGE[1] + 1))
    return Item("aqa", audio, str(n), labels, {"question": f"How many {what} are there? Answer with a number."})


def make_pitch(d: Draw) -> Item:
    answer = d.py.choice(("high", "low"))
    freq = float(np.exp(d.rng.uniform(*np.log(HIGH_HZ if answer == "high" else LOW_HZ))))
    audio = sounds.finish(sounds.tone(freq, float(d.rng.uniform(0.8, 2.0))))
    return Item("aqa", audio, answer, ("high", "low"),
                {"question": "Is the pitch of the tone high or low?", "params": {"freq": freq}})


def make_order(d: Draw) -> Item:
    first, second = d.py.sample(ORDER_EVENTS, 2)
    a, _ = sounds.render_sound(first, d.rng)
    b, _ = sounds.render_sound(second, d.rng)
    options = sorted((first, second))
    return Item("aqa", _concat(a, b), first, ORDER_EVENTS,
                {"question": f"Which came first, the {options[0]} or the {options[1]}?",
                 "params": {"seconds": [len(a) / SAMPLE_RATE, len(b) / SAMPLE_RATE]}})


def make_loudness(d: Draw) -> Item:
    answer = d.py.choice(("first", "second"))
    db = float(d.rng.uniform(*LOUDNESS_DB))
    quiet = sounds.PEAK * 10 ** (-db / 20)
    freq = float(d.rng.uniform(300, 1000))
    peaks = (sounds.PEAK, quiet) if answer == "first" else (quiet, sounds.PEAK)
    parts = [sounds.finish(sounds.tone(freq, 0.8), p) for p in peaks]
    return Item("aqa", _concat(*parts), answer, ("first", "second"),
                {"question": "Which tone is louder, the first or the second?", "params": {"db": db}})


# -- speech -----------------------------------------------------------------------------------------------------------
def _voice(d: Draw, language: str, sex: str | None = None, **overrides) -> Voice:
    sex = sex or d.py.choice(("male", "female"))
    variant = d.py.choice(variants(sex, d.split, d.voices))
    return Voice("espeak", language, sex, variant, pitch=d.py.randint(*PITCH_RANGE), **overrides)


def english_voice(d: Draw) -> Voice:
    """Who speaks an English sentence: in training an espeak-ng variant or (FESTIVAL_SHARE) a festival voice; in the
    test split half flite, the engine held out of training, half the held-out espeak-ng variants."""
    if d.split == "test" and d.py.random() < HELD_OUT_ENGINE_SHARE:
        name = d.py.choice(sorted(FLITE_VOICES))
        return Voice(FLITE, "en", FLITE_VOICES[name], name, stretch=round(d.py.uniform(*FLITE_STRETCH), 3))
    if d.split != "test" and d.py.random() < FESTIVAL_SHARE:
        name = d.py.choice(sorted(FESTIVAL_VOICES))
        return Voice(FESTIVAL, "en", FESTIVAL_VOICES[name], name)
    return _voice(d, "en", rate=d.py.randint(RATE_WPM["normal"] - 30, RATE_WPM["normal"] + 30))


def english_speech(d: Draw, text: str) -> tuple[np.ndarray, Voice, dict[str, float]]:
    """`text` spoken by english_voice, at a drawn speed and gain (small ranges); also returns those two."""
    voice = english_voice(d)
    params = {"speed": round(d.py.uniform(*effects.SPEED_RANGE), 3),
              "gain_db": round(d.py.uniform(*effects.GAIN_DB), 2)}
    return effects.speed_and_gain(speak(text, voice), params["speed"], params["gain_db"]), voice, params


def make_asr(d: Draw) -> Item:
    """An English grammar sentence (see english_voice for who speaks it)."""
    text = english_sentence(d.py, d.split)
    audio, voice, params = english_speech(d, text)
    return Item("asr", audio, text, (), {"language": "en", "params": params}, voice.name)


def make_s2tt(d: Draw) -> Item:
    """English speech of a parallel-grammar sentence, its reference in Chinese, French or German."""
    pair = translation_pair(d.py, d.split)
    target = d.py.choice(TARGETS)
    audio, voice, params = english_speech(d, pair.english)
    fields = {"language": "en", "source_language": "en", "target_language": target, "source_text": pair.english,
              "template": pair.template, "params": params}
    other = d.py.choice([t for t in TARGETS if t != target])
    wrong = (pair.english, pair.references[other])  # for DPO: left untranslated, or in the wrong language
    return Item("s2tt", audio, pair.references[target], (), fields, voice.name, wrong=wrong)


def make_lid(d: Draw) -> Item:
    language = d.py.choice(d.languages)
    voice = _voice(d, language)
    return Item("lid", espeak(d.py.choice(PHRASES[language]), voice), language_name(language),
                tuple(language_name(code) for code in d.languages), {"language": language}, voice.name)


def make_gender(d: Draw) -> Item:
    language = d.py.choice(d.languages)
    sex = d.py.choice(("male", "female"))
    voice = _voice(d, language, sex)
    return Item("gender", espeak(d.py.choice(PHRASES[language]), voice), sex, ("male", "female"),
                {"language": language}, voice.name)


def make_style(d: Draw) -> Item:
    """Speaking style, the emotion-like task: whispering, fast, slow, loud or normal."""
    style = d.py.choice(STYLES)
    sex = d.py.choice(("male", "female"))
    voice = _voice(d, "en", sex)
    if style == "whispering":
        voice = Voice("espeak", "en", sex, WHISPER_VARIANTS[sex], voice.pitch)
    elif style in RATE_WPM:
        voice = Voice("espeak", "en", sex, voice.variant, voice.pitch, rate=RATE_WPM[style])
    elif style == "loud":
        voice = Voice("espeak", "en", sex, voice.variant, voice.pitch, amplitude=AMPLITUDE["loud"])
    question = f"How is the person speaking: {', '.join(STYLES[:-1])} or {STYLES[-1]}?"
    return Item("aqa", espeak(english_sentence(d.py, d.split), voice), style, STYLES,
                {"question": question, "language": "en"}, voice.name)


def make_numbers(d: Draw) -> Item:
    """A number spoken in one of the languages; the transcript is its words in that language."""
    language = d.py.choice(d.languages)
    _, words = number_item(d.py, language, d.split)
    voice = _voice(d, language)
    return Item("asr", espeak(words, voice), words, (), {"language": language}, voice.name)


def make_noisy_asr(d: Draw) -> Item:
    """English speech in noise at a drawn SNR, through a telephone band, or with reverb."""
    item = make_asr(d)
    condition = d.py.choice(CONDITIONS)
    if condition == "noise":
        snr = round(d.py.uniform(*effects.SNR_DB), 1)
        noise, _ = sounds.render_sound(d.py.choice(NOISES), d.rng)
        item.audio = effects.mix_at_snr(item.audio, noise, snr)
        item.fields["snr_db"] = snr
    else:
        item.audio = effects.apply_chain(item.audio, condition)
    item.fields["condition"] = condition
    return item


def make_caption(d: Draw) -> Item:
    """A mixed scene and its caption, e.g. "a woman speaks French over pink noise, then a siren"."""
    language, sex = d.py.choice(d.languages), d.py.choice(("male", "female"))
    voice = _voice(d, language, sex)
    audio = espeak(d.py.choice(PHRASES[language]), voice)
    caption = f"a {'man' if sex == 'male' else 'woman'} speaks {language_name(language)}"
    if d.py.random() < 0.6:
        bed = d.py.choice(NOISES)
        noise, _ = sounds.render_sound(bed, d.rng)
        audio = effects.mix_at_snr(audio, noise, d.py.uniform(*SCENE_SNR_DB))
        caption += f" over {bed}"
    if d.py.random() < 0.6:
        event = d.py.choice([e for e in ORDER_EVENTS if e not in NOISES])
        sound, _ = sounds.render_sound(event, d.rng, peak=0.3)
        before = d.py.random() < 0.5
        audio = _concat(sound, audio) if before else _concat(audio, sound)
        caption = f"a {event}, then {caption}" if before else f"{caption}, then a {event}"
    return Item("caption", audio, caption, (), {"language": language}, voice.name)


def arithmetic_question(rng: random.Random, split: str) -> tuple[int, str, int]:
    """(7, "times", 3): 'what is seven times three'; test questions never occur in train."""
    want = "test" if split == "test" else "train"
    while True:
        a, b = rng.randint(0, ARITHMETIC_MAX[0]), rng.randint(0, ARITHMETIC_MAX[1])
        name = rng.choice(sorted(OPERATIONS))
        a, b = (max(a, b), min(a, b)) if name == "minus" else (a, b)
        if sentence_split(spoken_arithmetic(a, name, b)) == want:
            return a, name, b


def arithmetic_words(a: int, name: str, b: int) -> str:
    """'seven times three'."""
    return f"{SMALL_NUMBERS[a]} {name} {SMALL_NUMBERS[b]}"


def spoken_arithmetic(a: int, name: str, b: int) -> str:
    """'what is seven times three': the question as spoken."""
    return f"what is {arithmetic_words(a, name, b)}"


def arithmetic_answer(a: int, name: str, b: int) -> tuple[str, str]:
    """The answer in its two parts, the question restated and the result, without the full stop that ends it:
    ("The answer to seven times three is", " 21")."""
    return f"The answer to {arithmetic_words(a, name, b)} is", f" {OPERATIONS[name](a, b)}"


def is_arithmetic_question(a: int, name: str, b: int) -> bool:
    """Within ARITHMETIC_MAX, and no negative differences."""
    return 0 <= a <= ARITHMETIC_MAX[0] and 0 <= b <= ARITHMETIC_MAX[1] and (name != "minus" or a >= b)


def arithmetic_facts() -> list[tuple[int, str, int]]:
    """Every question the arithmetic family asks (train and test: 741)."""
    return [(a, name, b) for a in range(ARITHMETIC_MAX[0] + 1) for b in range(ARITHMETIC_MAX[1] + 1)
            for name in sorted(OPERATIONS) if is_arithmetic_question(a, name, b)]


def near_miss(a: int, name: str, b: int, rng: random.Random) -> tuple[int, str, int]:
    """Another question: one of the two numbers or the operation changed (a random one now and then)."""
    while True:
        x, op, y = a, name, b
        pick = rng.random()
        if pick < 0.3:
            x = rng.randint(0, ARITHMETIC_MAX[0])
        elif pick < 0.55:
            y = rng.randint(0, ARITHMETIC_MAX[1])
        elif pick < 0.7:
            op = rng.choice(sorted(OPERATIONS))
        else:
            x, op = rng.randint(0, ARITHMETIC_MAX[0]), rng.choice(sorted(OPERATIONS))
            y = rng.randint(0, ARITHMETIC_MAX[1])
        if is_arithmetic_question(x, op, y) and (x, op, y) != (a, name, b):
            return x, op, y


FACT_PROMPTS = ("Tell me an arithmetic fact.", "Some sums, please.", "Give me a few arithmetic facts.",
                "What do you know about small numbers?", "Tell me some sums.")
FACT_PASSES = 30  # each fact's occurrences in text.jsonl (its rows are reread every epoch of the mix)
FACTS_PER_ROW = (1, 8)  # packed: the answer of a text row lists this many facts (~3x fewer tokens per fact than one)


def arithmetic_text_rows(rng: random.Random) -> list[dict]:
    """The arithmetic facts as text chat rows, several to an answer: the knowledge the report's LM brings from its
    text pre-training and this tiny one must be taught (the spoken questions' results are not learnt from audio)."""
    facts = ["".join(arithmetic_answer(*f)) + "." for f in arithmetic_facts()] * FACT_PASSES
    rng.shuffle(facts)
    rows = []
    while facts:
        n = rng.randint(*FACTS_PER_ROW)
        answer, facts = " ".join(facts[:n]), facts[n:]
        rows.append({"messages": [{"role": "user", "content": rng.choice(FACT_PROMPTS)},
                                  {"role": "assistant", "content": answer}]})
    return rows


def spoken_question(d: Draw, question: str) -> tuple[np.ndarray, Voice, dict[str, Any]]:
    """A spoken question (english_speech), over a noise bed for BACKGROUND_SHARE of them; and its fields."""
    audio, voice, params = english_speech(d, question)
    fields: dict[str, Any] = {"question": "Answer the spoken question.", "language": "en", "spoken": question,
                              "params": params}
    if d.py.random() < BACKGROUND_SHARE:
        bed = d.py.choice(NOISES)
        noise, _ = sounds.render_sound(bed, d.rng)
        audio = effects.mix_at_snr(audio, noise, d.py.uniform(*SCENE_SNR_DB))
        fields["background"] = bed
    return audio, voice, fields


def make_voice_chat(d: Draw) -> Item:
    """A spoken arithmetic question, sometimes over background noise, answered in text (the voice-chat mode) by
    restating the question heard, then its result. Trained so that the result comes from the restated text, never
    from the audio: a result learnt from the audio is memorised per training question and held-out questions stay
    unanswered. So the result is left out of the SFT loss; a decoy answer to the same
    audio restates another question (no loss) and gives that one's result (loss): a result read from the audio is
    wrong there; the facts themselves are text rows (arithmetic_text_rows); stage 1 transcribes the question."""
    a, name, b = arithmetic_question(d.py, d.split)
    question = spoken_arithmetic(a, name, b)
    audio, voice, fields = spoken_question(d, question)
    restated, result = arithmetic_answer(a, name, b)
    decoy_restated, decoy_result = arithmetic_answer(*near_miss(a, name, b, d.py))
    off = OPERATIONS[name](a, b) + d.py.choice((-2, -1, 1, 2, 10))
    wrong = (f"{restated} {off}.", f"Let me think about this step by step. You asked {question}. Numbers can be "
             f"added, subtracted or multiplied, and in this case the result should be{result}, if I heard you right.")
    return Item("aqa", audio, f"{restated}{result}.", (), fields, voice.name, voice_chat=True, wrong=wrong,
                answer_parts=((restated, True), (result, False), (".", True)),
                decoys=(((decoy_restated, False), (decoy_result + ".", True)),), pretrain=("asr", question))


def make_facts(d: Draw) -> Item:
    """A spoken question about the corpus' small world (world.FACTS), answered with one short sentence. Half of them
    are answered in SFT by a right but hedged, rambling sentence, and their DPO pair prefers the short one to it: SFT
    leaves the style open (what the model says is a coin toss per question), so DPO has outputs to move, measured on
    the held-out pairs (the report's stage 3 aligns style and factuality; a preference SFT already settled moves
    log-probabilities, not answers)."""
    question, fact = fact_question(d.py, d.split)
    audio, voice, fields = spoken_question(d, question)
    fields["relation"] = fact.relation
    mistake, rambling = wrong_answers(fact, d.py)
    hedged = d.py.random() < HEDGED_SHARE
    return Item("aqa", audio, fact.answer(), (), fields, voice.name, voice_chat=True,
                wrong=(rambling,) if hedged else (mistake, rambling), sft_answer=rambling if hedged else None)


# -- conversations ----------------------------------------------------------------------------------------------------
SEXES = ("male", "female")
DIALOG_QUESTIONS = ("lid", "gender", "asr")  # what the turns of a multi-turn conversation ask about one recording


def make_dialog(d: Draw) -> Item:
    """A two-turn conversation about one recording: e.g. "<audio>Which language is spoken?" -> "French", then
    "Is the speaker male or female?" -> "female" (the turns ask two of: language, speaker sex, transcript)."""
    language, sex = d.py.choice(d.languages), d.py.choice(SEXES)
    phrase = d.py.choice(PHRASES[language])
    voice = _voice(d, language, sex)
    answers = {"lid": (language_name(language), tuple(language_name(c) for c in d.languages)),
               "gender": (sex, SEXES), "asr": (phrase, ())}
    first, last = d.py.sample(DIALOG_QUESTIONS, 2)
    first_turn = (draw_instruction(first, {}, d.py), answers[first][0])
    return Item(last, espeak(phrase, voice), *answers[last], {"language": language, "asked": [first, last]},
                voice.name, turns=(first_turn,), instruction=draw_instruction(last, {}, d.py))


ORDINALS = ("first", "second")
COMPARE_QUESTIONS = ("louder", "language", "siren", "same_language")


def make_compare(d: Draw) -> Item:
    """Two recordings and a question about both: which is louder / in a given language / has a siren, or whether
    both are in the same language."""
    what = d.py.choice(COMPARE_QUESTIONS)
    which = d.py.randrange(2)  # the recording the answer points at
    if what == "siren":
        other = d.py.choice([e for e in ORDER_EVENTS if e != "siren"])
        clips = [sounds.render_sound("siren" if i == which else other, d.rng)[0] for i in range(2)]
        question, answer, labels = "Which recording has a siren, the first or the second?", ORDINALS[which], ORDINALS
        fields: dict[str, Any] = {"events": ["siren" if i == which else other for i in range(2)]}
    else:
        same = what == "same_language" and d.py.random() < 0.5
        languages = [d.py.choice(d.languages)] * 2 if same or len(d.languages) < 2 else d.py.sample(d.languages, 2)
        clips = [espeak(d.py.choice(PHRASES[lang]), _voice(d, lang)) for lang in languages]
        fields = {"languages": languages}
        if what == "louder":
            db = round(d.py.uniform(*LOUDNESS_DB), 2)
            clips[1 - which] = clips[1 - which] * np.float32(10 ** (-db / 20))
            question, answer, labels = ("Which recording is louder, the first or the second?", ORDINALS[which],
                                        ORDINALS)
            fields["db"] = db
        elif what == "language" and languages[0] != languages[1]:
            question = f"Which recording is in {language_name(languages[which])}, the first or the second?"
            answer, labels = ORDINALS[which], ORDINALS
        else:
            question = "Are both recordings in the same language? Answer yes or no."
            answer, labels = ("yes" if languages[0] == languages[1] else "no"), ("yes", "no")
    fields.update(question=question, compare=what)
    return Item("aqa", clips[0], answer, labels, fields, extra_audios=(clips[1],),
                instruction=d.py.choice((question, f"Listen to both recordings. {question}")))


ENGLISH_ENGINES = (ESPEAK, FESTIVAL, FLITE)  # who speaks english_speech
OPEN_LANGUAGES = ("en", *LANGUAGE_DIRS)  # the languages Debian's fortune packages give sentences in


def make_open_asr(d: Draw) -> Item:
    """An open-domain sentence from the fortune files: out-of-vocabulary words for an honest measurement."""
    language = d.py.choice(d.languages)
    sentence = d.py.choice(fortune_sentences(language)["test" if d.split == "test" else "train"])
    voice = _voice(d, language)
    return Item("asr", espeak(sentence, voice), sentence, (), {"language": language}, voice.name)


def _load_fortunes(languages: tuple[str, ...]) -> None:
    for language in languages:
        if language in OPEN_LANGUAGES:
            fortune_sentences(language)


# -- ASR beyond English, names and places, age ----------------------------------------------------------------------
CHARACTER_SCRIPTS = ("cmn", "yue", "ja")  # written without spaces: a wrong transcript drops a character, not a word
FAKER = "py:faker"
NUM2WORDS = "py:num2words"


def _reader(d: Draw, language: str, sex: str | None = None, **overrides) -> Voice:
    """_voice, with the espeak-ng voice that reads the language's script (HANZI_VOICES: Mandarin from characters)."""
    return replace(_voice(d, language, sex, **overrides), espeak_voice=HANZI_VOICES.get(language, ""))


def character_errors(text: str, rng: random.Random) -> tuple[str, ...]:
    """Worse transcripts of a sentence written without spaces, for DPO: a character dropped, two swapped."""
    letters = [i for i, ch in enumerate(text) if ch.isalpha()]
    i, j = sorted(rng.sample(letters, 2)) if len(letters) > 1 else (0, 0)
    dropped = text[:i] + text[i + 1:]
    swapped = text[:i] + text[j] + text[i + 1:j] + text[i] + text[j + 1:]
    return tuple(w for w in (dropped, swapped) if w != text)


def spoken_sentence(d: Draw, sentence: Sentence) -> Item:
    """An ASR item: the sentence's reading spoken by an espeak-ng voice at a drawn rate, speed and gain; the
    transcript is the sentence as written."""
    voice = _reader(d, sentence.language, rate=d.py.randint(RATE_WPM["normal"] - 30, RATE_WPM["normal"] + 30))
    params = {"speed": round(d.py.uniform(*effects.SPEED_RANGE), 3),
              "gain_db": round(d.py.uniform(*effects.GAIN_DB), 2), "template": sentence.template}
    audio = effects.speed_and_gain(espeak(sentence.reading, voice), params["speed"], params["gain_db"])
    fields: dict[str, Any] = {"language": sentence.language, "params": params}
    if sentence.reading != sentence.text:
        fields["reading"] = sentence.reading
    wrong = character_errors(sentence.text, d.py) if sentence.language in CHARACTER_SCRIPTS else ()
    return Item("asr", audio, sentence.text, (), fields, voice.name, wrong=wrong)


def make_names(d: Draw) -> Item:
    """A sentence about people and places (Faker's names in the language's locale) in one of the eight languages."""
    return spoken_sentence(d, sentences.names_sentence(d.py, d.py.choice(d.languages), d.split))


def make_cmn_asr(d: Draw) -> Item:
    """A Mandarin sentence from fortunes-zh (sayings and poems, Simplified characters)."""
    text = d.py.choice(mandarin_sentences()["test" if d.split == "test" else "train"])
    return spoken_sentence(d, Sentence(text, text, "cmn", "fortunes-zh"))


def make_yue_asr(d: Draw) -> Item:
    return spoken_sentence(d, sentences.cantonese_sentence(d.py, d.split))


def make_fr_asr(d: Draw) -> Item:
    return spoken_sentence(d, sentences.french_sentence(d.py, d.split))


def make_ja_asr(d: Draw) -> Item:
    return spoken_sentence(d, sentences.japanese_sentence(d.py, d.split))


AGES = ("child", "adult", "elderly")
CHILD_PITCH = (80, 99)  # espeak-ng -p of a female variant (children's voices: female variants only, see make_age)
CHILD_SPEED = (1.2, 1.4)  # then read faster: pitch and formants rise together, as from a child's shorter vocal tract
ELDERLY_PITCH = {"male": (35, 60), "female": (10, 35)}  # old age lowers women's pitch (men's changes little)
ELDERLY_RATE = (95, 125)  # words per minute: slower than the adults' 130..190
TREMOR_HZ, TREMOR_PITCH, TREMOR_LEVEL = (4.0, 7.0), (0.02, 0.05), (0.2, 0.45)  # effects.tremor of elderly voices


def age_voice(d: Draw, age: str, language: str) -> tuple[Voice, dict[str, Any]]:
    """The espeak-ng voice of an age group and the effects applied after it (speed for children, tremor for
    the elderly). Test-split voices are the held-out variants, as for the other families."""
    normal = RATE_WPM["normal"]
    if age == "child":
        speed = round(d.py.uniform(*CHILD_SPEED), 3)
        voice = replace(_reader(d, language, "female"), pitch=d.py.randint(*CHILD_PITCH),
                        rate=round(d.py.randint(normal - 20, normal + 20) / speed))
        return voice, {"speed": speed}
    sex = d.py.choice(SEXES)
    if age == "adult":
        return _reader(d, language, sex, rate=d.py.randint(normal - 30, normal + 30)), {"speed": 1.0}
    voice = replace(_reader(d, language, sex), pitch=d.py.randint(*ELDERLY_PITCH[sex]),
                    rate=d.py.randint(*ELDERLY_RATE))
    tremor = {"hz": round(d.py.uniform(*TREMOR_HZ), 2), "pitch_depth": round(d.py.uniform(*TREMOR_PITCH), 3),
              "level_depth": round(d.py.uniform(*TREMOR_LEVEL), 3)}
    return voice, {"speed": 1.0, "tremor": tremor}


def make_age(d: Draw) -> Item:
    """Speaker age, the age-like voice attribute: a child (high pitch and formants), an adult, or an elderly speaker
    (slow, shaking voice), saying a names-and-places sentence in one of the languages. Children's voices are drawn
    from female variants alone: before puberty boys and girls speak alike, and a male variant raised to a child's
    pitch would sound like a woman."""
    age, language = d.py.choice(AGES), d.py.choice(d.languages)
    sentence = sentences.names_sentence(d.py, language, d.split)
    voice, params = age_voice(d, age, language)
    params.update(pitch=voice.pitch, rate=voice.rate, gain_db=round(d.py.uniform(*effects.GAIN_DB), 2),
                  text=sentence.text)
    audio = espeak(sentence.reading, voice)
    if "tremor" in params:
        audio = effects.tremor(audio, **params["tremor"])
    audio = effects.speed_and_gain(audio, params["speed"], params["gain_db"])
    return Item("age", audio, age, AGES, {"language": language, "params": params}, voice.name)


# The families' prepare: Faker's pools, the sentence slots and the fortunes, loaded before the workers fork (so each
# has them) and checked once (a missing package is one error).
def _load_names(languages: tuple[str, ...]) -> None:
    for language in languages:
        sentences.name_slots(language)


def _only(load: Callable[[], Any]) -> Callable[[tuple[str, ...]], None]:
    """The prepare of a one-language family: its own data whatever --languages holds."""
    def prepare(languages: tuple[str, ...]) -> None:
        load()
    return prepare


TASKS: dict[str, TaskFamily] = {t.name: t for t in [
    TaskFamily("sound", make_sound, "sound classification over 12 synthetic classes", mean_seconds=2.0),
    TaskFamily("count", make_count, "how many beeps or clicks", mean_seconds=1.5),
    TaskFamily("pitch", make_pitch, "is the tone high or low", mean_seconds=1.4),
    TaskFamily("order", make_order, "which of two events came first", mean_seconds=4.4),
    TaskFamily("loudness", make_loudness, "which of two tones is louder", mean_seconds=2.0),
    TaskFamily("asr", make_asr, "English speech recognition (closed-vocabulary grammar)", ENGLISH_ENGINES,
               ("en",), 2.2),
    TaskFamily("lid", make_lid, "spoken language identification", (ESPEAK,), LANGUAGES, 1.5),
    TaskFamily("gender", make_gender, "speaker sex", (ESPEAK,), LANGUAGES, 1.5),
    TaskFamily("numbers", make_numbers, "numbers spoken in eight languages (ASR)", (ESPEAK, "py:num2words"),
               LANGUAGES, 1.6),
    TaskFamily("open_asr", make_open_asr, "open-domain sentences from Debian's fortunes (en, de, es, it)", (ESPEAK,),
               OPEN_LANGUAGES, 4.0, _load_fortunes),
    TaskFamily("noisy_asr", make_noisy_asr, "English ASR in noise (0-20 dB SNR), telephone band or reverb",
               (*ENGLISH_ENGINES, SOX), ("en",), 2.3),
    TaskFamily("caption", make_caption, "captions of mixed scenes: speech, noise beds, events", (ESPEAK,), LANGUAGES,
               3.0),
    TaskFamily("voice_chat", make_voice_chat, "spoken arithmetic questions answered in text (voice-chat mode)",
               ENGLISH_ENGINES, ("en",), 2.0, text_rows=arithmetic_text_rows),
    TaskFamily("style", make_style, "speaking style: whispering, fast, slow, loud, normal", (ESPEAK,), ("en",), 2.5),
    TaskFamily("s2tt", make_s2tt, "speech translation: English speech, references in zh, fr, de", ENGLISH_ENGINES,
               ("en",), 1.7),
    TaskFamily("facts", make_facts, "spoken questions about a small world of facts (voice-chat mode)",
               ENGLISH_ENGINES, ("en",), 2.2),
    TaskFamily("dialog", make_dialog, "two-turn conversations about one recording (language, sex, transcript)",
               (ESPEAK,), LANGUAGES, 1.6),
    TaskFamily("compare", make_compare, "two recordings, one question: louder, language, siren, same language",
               (ESPEAK,), LANGUAGES, 3.6),
    TaskFamily("names", make_names, "people and places (Faker) in sentences of eight languages (ASR)",
               (ESPEAK, FAKER, NUM2WORDS), LANGUAGES, 2.8, _load_names),
    TaskFamily("cmn_asr", make_cmn_asr, "Mandarin sentences from fortunes-zh (ASR, Simplified characters)", (ESPEAK,),
               ("cmn",), 4.3, _only(mandarin_sentences)),
    TaskFamily("yue_asr", make_yue_asr, "Cantonese grammar sentences, Traditional characters (ASR)", (ESPEAK, FAKER),
               ("yue",), 2.6, _only(sentences.cantonese_slots)),
    TaskFamily("fr_asr", make_fr_asr, "French: the translation grammar's side, numbers, Faker names (ASR)",
               (ESPEAK, FAKER, NUM2WORDS), ("fr",), 2.2, _only(sentences.french_slots)),
    TaskFamily("ja_asr", make_ja_asr, "Japanese grammar sentences in kanji and kana, spoken from kana (ASR)",
               (ESPEAK, FAKER, NUM2WORDS), ("ja",), 2.8, _only(sentences.japanese_slots)),
    TaskFamily("age", make_age, "speaker age: child, adult, elderly (pitch, formants, rate, tremor)",
               (ESPEAK, FAKER, NUM2WORDS), LANGUAGES, 3.3, _load_names),
]}
