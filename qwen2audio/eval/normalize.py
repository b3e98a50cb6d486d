"""ASR text normalisation of the official Qwen2-Audio evaluation, written once here.

`asr_units(text, language)` is the whole per-utterance path of the official `evaluate_asr.py`:
post-processing (`strip_tags`), then yue: Traditional→Simplified; en: Whisper's English normaliser; zh: the
Chinese normaliser, other languages: Whisper's basic normaliser; then punctuation-only tokens dropped, lower case,
and for zh/yue one unit per character. The Whisper normalisers follow openai-whisper's `whisper/normalizers`
(MIT) rule for rule; the Chinese one follows the SpeechIO `cn_tn` normaliser for the cases ASR references hold.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from fractions import Fraction
from pathlib import Path

CHAR_LEVEL_LANGUAGES = ("zh", "yue")  # scored per character
POST_PUNCTUATION = "!,.?;:"  # the official post-processing removes the space before these
SPELLING_FILE = Path(__file__).with_name("english_spelling.tsv")


# -- the official post-processing (evaluate_asr.py `remove_sp`) ----------------------------------------------------
def strip_tags(text: str, language: str = "en") -> str:
    """Strip `<|..|>` tags, collapse spaces, no space before `!,.?;:`; Chinese: no spaces at all."""
    text = re.sub(r"<\|.*?\|>", " ", text)
    text = re.sub(r"\s+", " ", text)
    text = re.sub(f" ?([{re.escape(POST_PUNCTUATION)}])", r"\1", text)
    text = text.lstrip(" ")
    if language == "zh":
        text = re.sub(r"\s+", "", text)
    return text


# -- Whisper's basic normaliser ------------------------------------------------------------------------------------
ADDITIONAL_DIACRITICS = {"œ": "oe", "Œ": "OE", "ø": "o", "Ø": "O", "æ": "ae", "Æ": "AE", "ß": "ss", "ẞ": "SS",
                         "đ": "d", "Đ": "D", "ð": "d", "Ð": "D", "þ": "th", "Þ": "th", "ł": "l", "Ł": "L"}


def remove_symbols_and_diacritics(s: str, keep: str = "") -> str:
    """Marks, symbols and punctuation → space (except `keep`); diacritics dropped (NFKD)."""
    out = []
    for c in unicodedata.normalize("NFKD", s):
        category = unicodedata.category(c)
        if c in keep:
            out.append(c)
        elif c in ADDITIONAL_DIACRITICS:
            out.append(ADDITIONAL_DIACRITICS[c])
        elif category == "Mn":
            continue
        else:
            out.append(" " if category[0] in "MSP" else c)
    return "".join(out)


def remove_symbols(s: str) -> str:
    """Marks, symbols and punctuation → space, diacritics kept (NFKC)."""
    return "".join(" " if unicodedata.category(c)[0] in "MSP" else c for c in unicodedata.normalize("NFKC", s))


def _drop_bracketed(s: str) -> str:
    s = re.sub(r"[<\[][^>\]]*[>\]]", "", s)  # words between brackets
    return re.sub(r"\(([^)]+?)\)", "", s)  # words between parentheses


def basic_normalize(s: str, remove_diacritics: bool = False) -> str:
    """Whisper's BasicTextNormalizer: lower case, bracketed words removed, symbols → spaces, spaces collapsed."""
    s = _drop_bracketed(s.lower())
    s = (remove_symbols_and_diacritics if remove_diacritics else remove_symbols)(s).lower()
    return re.sub(r"\s+", " ", s)


# -- Whisper's English normaliser ----------------------------------------------------------------------------------
ONES = ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve",
        "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen"]
TENS = ["twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]
MULTIPLIERS = ["hundred", "thousand", "million", "billion", "trillion", "quadrillion", "quintillion", "sextillion",
               "septillion", "octillion", "nonillion", "decillion"]
_NUMERIC = re.compile(r"^\d+(\.\d+)?$")


class EnglishNumberNormalizer:
    """Spelled-out numbers → digits, as Whisper's: commas removed, suffixes kept (`1960s`, `32nd`), currency words
    after a number become a prefix symbol (`20 dollars` → `$20`), `one oh one` → `101`, `one(s)` kept as words."""

    def __init__(self):
        self.zeros = {"o", "oh", "zero"}
        self.ones = {name: i for i, name in enumerate(ONES, start=1)}
        self.ones_plural = {("sixes" if n == "six" else n + "s"): (v, "s") for n, v in self.ones.items()}
        self.ones_ordinal = {"zeroth": (0, "th"), "first": (1, "st"), "second": (2, "nd"), "third": (3, "rd"),
                             "fifth": (5, "th"), "twelfth": (12, "th"),
                             **{n + ("h" if n.endswith("t") else "th"): (v, "th")
                                for n, v in self.ones.items() if v > 3 and v not in (5, 12)}}
        self.ones_suffixed = {**self.ones_plural, **self.ones_ordinal}
        self.tens = {name: 20 + 10 * i for i, name in enumerate(TENS)}
        self.tens_suffixed = {**{n.replace("y", "ies"): (v, "s") for n, v in self.tens.items()},
                              **{n.replace("y", "ieth"): (v, "th") for n, v in self.tens.items()}}
        self.multipliers = {name: 10 ** (2 if i == 0 else 3 * i) for i, name in enumerate(MULTIPLIERS)}
        self.multipliers_suffixed = {**{n + "s": (v, "s") for n, v in self.multipliers.items()},
                                     **{n + "th": (v, "th") for n, v in self.multipliers.items()}}
        self.decimals = {*self.ones, *self.tens, *self.zeros}
        self.preceding_prefixers = {"minus": "-", "negative": "-", "plus": "+", "positive": "+"}
        self.following_prefixers = {"pound": "£", "pounds": "£", "euro": "€", "euros": "€", "dollar": "$",
                                    "dollars": "$", "cent": "¢", "cents": "¢"}
        self.prefixes = set(self.preceding_prefixers.values()) | set(self.following_prefixers.values())
        self.suffixers = {"per": {"cent": "%"}, "percent": "%"}
        self.specials = {"and", "double", "triple", "point"}
        self.words = {key for mapping in (self.zeros, self.ones, self.ones_suffixed, self.tens, self.tens_suffixed,
                                          self.multipliers, self.multipliers_suffixed, self.preceding_prefixers,
                                          self.following_prefixers, self.suffixers, self.specials)
                      for key in mapping}

    def process_words(self, words: list[str]):  # noqa: C901 (one rule per branch, as the reference)
        prefix = value = None
        skip = False

        def fraction(s):
            try:
                return Fraction(s)
            except (ValueError, ZeroDivisionError):
                return None

        def output(result):
            nonlocal prefix, value
            result = str(result)
            if prefix is not None:
                result = prefix + result
            value = prefix = None
            return result

        padded = [None, *words, None]
        for prev, current, nxt in zip(padded, padded[1:], padded[2:]):
            if skip:
                skip = False
                continue
            next_is_numeric = nxt is not None and _NUMERIC.match(nxt)
            has_prefix = current[0] in self.prefixes
            bare = current[1:] if has_prefix else current
            if _NUMERIC.match(bare):
                f = fraction(bare)
                if value is not None:
                    if isinstance(value, str) and value.endswith("."):  # decimals, ip address parts
                        value = str(value) + str(current)
                        continue
                    yield output(value)
                prefix = current[0] if has_prefix else prefix
                value = f.numerator if f.denominator == 1 else bare
            elif current not in self.words:
                if value is not None:
                    yield output(value)
                yield output(current)
            elif current in self.zeros:
                value = str(value or "") + "0"
            elif current in self.ones:
                ones = self.ones[current]
                if value is None:
                    value = ones
                elif isinstance(value, str) or prev in self.ones:
                    if prev in self.tens and ones < 10:
                        value = value[:-1] + str(ones)
                    else:
                        value = str(value) + str(ones)
                elif ones < 10:
                    value = value + ones if value % 10 == 0 else str(value) + str(ones)
                else:
                    value = value + ones if value % 100 == 0 else str(value) + str(ones)
            elif current in self.ones_suffixed:
                ones, suffix = self.ones_suffixed[current]
                if value is None:
                    yield output(str(ones) + suffix)
                elif isinstance(value, str) or prev in self.ones:
                    if prev in self.tens and ones < 10:
                        yield output(value[:-1] + str(ones) + suffix)
                    else:
                        yield output(str(value) + str(ones) + suffix)
                elif ones < 10:
                    yield output(str(value + ones if value % 10 == 0 else f"{value}{ones}") + suffix)
                else:
                    yield output(str(value + ones if value % 100 == 0 else f"{value}{ones}") + suffix)
                value = None
            elif current in self.tens:
                tens = self.tens[current]
                if value is None:
                    value = tens
                elif isinstance(value, str):
                    value = str(value) + str(tens)
                else:
                    value = value + tens if value % 100 == 0 else str(value) + str(tens)
            elif current in self.tens_suffixed:
                tens, suffix = self.tens_suffixed[current]
                if value is None:
                    yield output(str(tens) + suffix)
                elif isinstance(value, str):
                    yield output(str(value) + str(tens) + suffix)
                else:
                    yield output(str(value + tens if value % 100 == 0 else f"{value}{tens}") + suffix)
            elif current in self.multipliers:
                multiplier = self.multipliers[current]
                if value is None:
                    value = multiplier
                elif isinstance(value, str) or value == 0:
                    f = fraction(value)
                    p = f * multiplier if f is not None else None
                    if f is not None and p.denominator == 1:
                        value = p.numerator
                    else:
                        yield output(value)
                        value = multiplier
                else:
                    value = value // 1000 * 1000 + value % 1000 * multiplier
            elif current in self.multipliers_suffixed:
                multiplier, suffix = self.multipliers_suffixed[current]
                if value is None:
                    yield output(str(multiplier) + suffix)
                elif isinstance(value, str):
                    f = fraction(value)
                    p = f * multiplier if f is not None else None
                    if f is not None and p.denominator == 1:
                        yield output(str(p.numerator) + suffix)
                    else:
                        yield output(value)
                        yield output(str(multiplier) + suffix)
                else:
                    value = value // 1000 * 1000 + value % 1000 * multiplier
                    yield output(str(value) + suffix)
                value = None
            elif current in self.preceding_prefixers:
                if value is not None:
                    yield output(value)
                if nxt in self.words or next_is_numeric:
                    prefix = self.preceding_prefixers[current]
                else:
                    yield output(current)
            elif current in self.following_prefixers:
                if value is not None:
                    prefix = self.following_prefixers[current]
                    yield output(value)
                else:
                    yield output(current)
            elif current in self.suffixers:
                if value is not None:
                    suffix = self.suffixers[current]
                    if isinstance(suffix, dict):
                        if nxt in suffix:
                            yield output(str(value) + suffix[nxt])
                            skip = True
                        else:
                            yield output(value)
                            yield output(current)
                    else:
                        yield output(str(value) + suffix)
                else:
                    yield output(current)
            else:  # and, double, triple, point
                if nxt not in self.words and not next_is_numeric:
                    if value is not None:
                        yield output(value)
                    yield output(current)
                elif current == "and":
                    if prev not in self.multipliers:  # "and" after hundreds, thousands ... is dropped
                        if value is not None:
                            yield output(value)
                        yield output(current)
                elif current in ("double", "triple"):
                    if nxt in self.ones or nxt in self.zeros:
                        value = str(value or "") + str(self.ones.get(nxt, 0)) * (2 if current == "double" else 3)
                        skip = True
                    else:
                        if value is not None:
                            yield output(value)
                        yield output(current)
                elif current == "point":
                    if nxt in self.decimals or next_is_numeric:
                        value = str(value or "") + "."
        if value is not None:
            yield output(value)

    def preprocess(self, s: str) -> str:
        results = []  # "<number> and a half" → "<number> point five"
        segments = re.split(r"\band\s+a\s+half\b", s)
        for i, segment in enumerate(segments):
            if not segment.strip():
                continue
            results.append(segment)
            if i != len(segments) - 1:
                last_word = segment.rsplit(maxsplit=2)[-1]
                results.append("point five" if last_word in self.decimals or last_word in self.multipliers
                               else "and a half")
        s = " ".join(results)
        multipliers = "|".join(sorted(self.multipliers, key=len, reverse=True))
        s = re.sub(rf"\b(?:a\s+half\s+|half\s+(?:a\s+)?)({multipliers})\b", r"0.5 \1", s)  # half a million
        s = re.sub(r"([a-z])([0-9])", r"\1 \2", s)  # a space at number/letter boundaries
        s = re.sub(r"([0-9])([a-z])", r"\1 \2", s)
        return re.sub(r"([0-9])\s+(st|nd|rd|th|s)\b", r"\1\2", s)  # ... but not before a suffix

    def postprocess(self, s: str) -> str:
        def combine_cents(m):
            try:
                return f"{m.group(1)}{m.group(2)}.{int(m.group(3)):02d}"
            except ValueError:
                return m.string

        def extract_cents(m):
            try:
                return f"¢{int(m.group(1))}"
            except ValueError:
                return m.string

        s = re.sub(r"([€£$])([0-9]+) (?:and )?¢([0-9]{1,2})\b", combine_cents, s)  # "$2 and ¢7" → "$2.07"
        s = re.sub(r"[€£$]0.([0-9]{1,2})\b", extract_cents, s)
        return re.sub(r"\b1(s?)\b", r"one\1", s)  # "one(s)", not "1(s)"

    def __call__(self, s: str) -> str:
        s = self.preprocess(s)
        s = " ".join(word for word in self.process_words(s.split()) if word is not None)
        return self.postprocess(s)


@functools.lru_cache(maxsize=1)
def english_spelling() -> dict[str, str]:
    """British → American spellings (Whisper's `english.json`), one `british<TAB>american` pair per line."""
    if not SPELLING_FILE.exists():
        return {}
    pairs = (line.split("\t") for line in SPELLING_FILE.read_text(encoding="utf-8").splitlines() if "\t" in line)
    return {british: american for british, american in pairs}


ENGLISH_IGNORE = r"\b(hmm|mm|mhm|mmm|uh|um)\b"
ENGLISH_REPLACERS = {
    # common contractions
    r"\bwon't\b": "will not", r"\bcan't\b": "can not", r"\blet's\b": "let us", r"\bain't\b": "aint",
    r"\by'all\b": "you all", r"\bwanna\b": "want to", r"\bgotta\b": "got to", r"\bgonna\b": "going to",
    r"\bi'ma\b": "i am going to", r"\bimma\b": "i am going to", r"\bwoulda\b": "would have",
    r"\bcoulda\b": "could have", r"\bshoulda\b": "should have", r"\bma'am\b": "madam",
    # titles and prefixes
    r"\bmr\b": "mister ", r"\bmrs\b": "missus ", r"\bst\b": "saint ", r"\bdr\b": "doctor ",
    r"\bprof\b": "professor ", r"\bcapt\b": "captain ", r"\bgov\b": "governor ", r"\bald\b": "alderman ",
    r"\bgen\b": "general ", r"\bsen\b": "senator ", r"\brep\b": "representative ", r"\bpres\b": "president ",
    r"\brev\b": "reverend ", r"\bhon\b": "honorable ", r"\basst\b": "assistant ", r"\bassoc\b": "associate ",
    r"\blt\b": "lieutenant ", r"\bcol\b": "colonel ", r"\bjr\b": "junior ", r"\bsr\b": "senior ",
    r"\besq\b": "esquire ",
    # perfect tenses
    r"'d been\b": " had been", r"'s been\b": " has been", r"'d gone\b": " had gone", r"'s gone\b": " has gone",
    r"'d done\b": " had done", r"'s got\b": " has got",
    # general contractions
    r"n't\b": " not", r"'re\b": " are", r"'s\b": " is", r"'d\b": " would", r"'ll\b": " will", r"'t\b": " not",
    r"'ve\b": " have", r"'m\b": " am",
}


@functools.lru_cache(maxsize=1)
def _number_normalizer() -> EnglishNumberNormalizer:
    return EnglishNumberNormalizer()


def english_normalize(s: str) -> str:
    """Whisper's EnglishTextNormalizer."""
    s = _drop_bracketed(s.lower())
    s = re.sub(ENGLISH_IGNORE, "", s)
    s = re.sub(r"\s+'", "'", s)  # a space before an apostrophe
    for pattern, replacement in ENGLISH_REPLACERS.items():
        s = re.sub(pattern, replacement, s)
    s = re.sub(r"(\d),(\d)", r"\1\2", s)  # commas between digits
    s = re.sub(r"\.([^0-9]|$)", r" \1", s)  # periods not followed by numbers
    s = remove_symbols_and_diacritics(s, keep=".%$¢€£")
    s = _number_normalizer()(s)
    spelling = english_spelling()
    s = " ".join(spelling.get(word, word) for word in s.split())
    s = re.sub(r"([$¢€£])\s+([0-9])", r"\1\2", s)  # currency and percent stick to their numbers
    s = re.sub(r"([0-9])\s+%", r"\1%", s)
    s = re.sub(r"[.$¢€£]([^0-9])", r" \1", s)  # ... and go where no number is beside them
    s = re.sub(r"([^0-9])%", r"\1 ", s)
    return re.sub(r"\s+", " ", s)


# -- Chinese (SpeechIO cn_tn, the cases ASR references hold) -------------------------------------------------------
CN_DIGITS = "零一二三四五六七八九"
CN_UNITS = ["", "十", "百", "千"]
CN_BIG_UNITS = ["", "万", "亿", "万亿"]
CHINESE_PUNCTUATION = ("！？｡。＂＃＄％＆＇（）＊＋，－／：；＜＝＞＠［＼］＾＿｀｛｜｝～｟｠｢｣､、〃《》「」『』【】〔〕〖〗〘〙〚〛"
                       "〜〝〞〟〰〾〿–—‘’‛“”„‟…‧﹏·〈〉-")
ASCII_PUNCTUATION = "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~"


def digits_to_chinese(digits: str) -> str:
    """'2024' → '二零二四' (years, phone numbers, codes: read digit by digit)."""
    return "".join(CN_DIGITS[int(d)] for d in digits)


def cardinal_to_chinese(number: str) -> str:
    """'123' → '一百二十三', '10' → '十', '10086' → '一万零八十六', '200' → '两百' (cn_tn's `num2chn`)."""
    number = number.lstrip("0")
    if not number:
        return CN_DIGITS[0]
    groups = []  # groups of four digits from the right
    while number:
        groups.insert(0, number[-4:])
        number = number[:-4]
    out, pending_zero = "", False
    for gi, group in enumerate(groups):
        big = CN_BIG_UNITS[len(groups) - 1 - gi] if len(groups) - 1 - gi < len(CN_BIG_UNITS) else ""
        group = group.rjust(4, "0")
        text = ""
        for i, d in enumerate(group):
            if d == "0":
                pending_zero = bool(out or text)
                continue
            if pending_zero:
                text += CN_DIGITS[0]
                pending_zero = False
            text += CN_DIGITS[int(d)] + CN_UNITS[3 - i]
        if text:
            out += text + big
        if group.endswith("0"):
            pending_zero = bool(out)
    out = re.sub(r"^一十", "十", out)
    # cn_tn's alt_two: a 2 before 百/千/万/亿, not after 十 or 零, reads 两 (200 两百, 22000 两万两千, 120000 十二万)
    return re.sub(r"(?<![十零])二(?=[百千万亿])", "两", out)


def _decimal_to_chinese(number: str) -> str:
    whole, _, frac = number.partition(".")
    return cardinal_to_chinese(whole) + ("点" + digits_to_chinese(frac) if frac else "")


def chinese_normalize(text: str) -> str:
    """Numbers → Chinese words (years and long digit strings digit by digit, percentages, fractions, decimals,
    cardinals), then all Chinese and ASCII punctuation → spaces; case and spaces as they were (the official
    settings of cn_tn: no full-width conversion, no case change, no filler removal)."""
    text = re.sub(r"(\d{4})年", lambda m: digits_to_chinese(m.group(1)) + "年", text)
    text = re.sub(r"(\d+(?:\.\d+)?)[%％]", lambda m: "百分之" + _decimal_to_chinese(m.group(1)), text)
    text = re.sub(r"(\d+)/(\d+)", lambda m: cardinal_to_chinese(m.group(2)) + "分之" + cardinal_to_chinese(m.group(1)),
                  text)
    text = re.sub(r"\d{11,}|0\d+", lambda m: digits_to_chinese(m.group(0)), text)  # phone numbers, codes
    text = re.sub(r"\d+(?:\.\d+)?", lambda m: _decimal_to_chinese(m.group(0)), text)
    punctuation = CHINESE_PUNCTUATION + ASCII_PUNCTUATION
    return text.translate(str.maketrans(punctuation, " " * len(punctuation)))


@functools.lru_cache(maxsize=1)
def _t2s():
    try:
        from opencc import OpenCC
    except ImportError as e:  # pragma: no cover - the eval extra brings it
        raise ImportError("Cantonese scoring needs Traditional→Simplified conversion: "
                          "pip install opencc-python-reimplemented (or qwen2audio[eval])") from e
    return OpenCC("t2s")


def traditional_to_simplified(text: str) -> str:
    return _t2s().convert(text)


# -- the official per-utterance path --------------------------------------------------------------------------------
def drop_punctuation_tokens(text: str) -> list[str]:
    """fairseq's EvaluationTokenizer(punctuation_removal=True, lowercase=True): tokens made only of punctuation go."""
    return [t for t in text.lower().split() if not all(unicodedata.category(c)[0] == "P" for c in t)]


def normalize_asr(text: str, language: str) -> str:
    """The normalised text of `evaluate_asr.py` before tokenisation (language: en, zh, yue, fr, ...)."""
    text = strip_tags(text, language)
    if language == "yue":
        text = traditional_to_simplified(text)
    if language == "en":
        text = english_normalize(text)
    if language == "zh":
        return chinese_normalize(text)
    return basic_normalize(text)


def asr_units(text: str, language: str) -> list[str]:
    """What WER counts: words, or characters for zh/yue."""
    tokens = drop_punctuation_tokens(normalize_asr(text, language))
    if language in CHAR_LEVEL_LANGUAGES:
        return list("".join(tokens))
    return tokens


# -- short answers (the synthetic corpus' "exact" and "accuracy" metrics) ----------------------------------------------
NO_SPACE_LANGUAGES = ("zh", "yue", "ja")  # scripts written without spaces: compared with the spaces removed
UNDETERMINED = "und"  # ISO 639's "undetermined": no language rule matches it, so the basic normaliser applies


def _digits_as_words(text: str, language: str) -> str:
    """Digit runs written out (num2words) where the normalisers keep digits, so "21" equals "vingt et un" in
    French; unchanged where num2words is missing or does not know the language."""
    try:
        from num2words import num2words

        return re.sub(r"\d+", lambda m: num2words(int(m.group()), lang=language), text)
    except (ImportError, NotImplementedError, OverflowError):
        return text


def answer_key(text: str, language: str | None = "en") -> str:
    """A short answer reduced to what "the same answer" means: the ASR normalisation of `language` (lower case,
    punctuation and tags gone; English numbers as digits: "twenty-one" → "21"; Chinese digits as Chinese numerals),
    digits written out in words in the other languages, spaces collapsed (removed for zh/yue/ja).
    language=None: the language-neutral basic normaliser."""
    language = language or UNDETERMINED
    if language not in ("en", "zh"):
        text = _digits_as_words(text, language)
    tokens = asr_units(text, language)
    return ("" if language in NO_SPACE_LANGUAGES else " ").join(tokens)


def label_key(text: str) -> str:
    """A label answer compared case-insensitively after stripping whitespace and one trailing period
    ("Sine tone. " → "sine tone")."""
    text = text.strip()
    return (text[:-1] if text.endswith(".") else text).strip().casefold()
