"""Open-domain sentences from Debian's fortune files (`fortunes`, `fortunes-min`, `fortunes-de`, `-es`, `-it`): split
into sentences, cleaned (letters and light punctuation only, no digits or shouting), deduplicated and sorted, so the
pool is fixed by the installed packages. Test and train sentences differ by the hash of the text (`text.sentence_split`).
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path

from .speech import EngineError
from .text import sentence_split

FORTUNE_DIR = Path("/usr/share/games/fortunes")
DPKG_LISTS = Path("/var/lib/dpkg/info")
ENGLISH_PACKAGES = ("fortunes", "fortunes-min")  # English files lie at the top of FORTUNE_DIR
SKIP_FILES = {"art", "ascii-art", "asciiart", "banner"}  # drawings, not sentences
LANGUAGE_DIRS = {"de": "de", "es": "es", "it": "it"}  # the other languages' packages use a subfolder each
WORDS_RANGE = (4, 16)  # sentence length kept, in words
ALLOWED = {
    "en": r"[A-Za-z' ,.!?;:-]+",
    "de": r"[A-Za-zÄÖÜäöüß' ,.!?;:-]+",
    "es": r"[A-Za-zÁÉÍÓÚÑÜáéíóúñü¡¿' ,.!?;:-]+",
    "it": r"[A-Za-zÀÈÉÌÒÙàèéìòù' ,.!?;:-]+",
}
SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def _read(path: Path) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def fortune_files(language: str) -> list[Path]:
    if language == "en":
        names = set()
        for package in ENGLISH_PACKAGES:
            listing = DPKG_LISTS / f"{package}.list"
            if listing.exists():
                names |= {Path(line) for line in listing.read_text().split() if Path(line).parent == FORTUNE_DIR}
        files = [p for p in names if p.suffix == "" and p.is_file()]
    elif language in LANGUAGE_DIRS:
        folder = FORTUNE_DIR / LANGUAGE_DIRS[language]
        files = [p for p in folder.glob("*") if p.suffix in ("", ".fortunes") and p.is_file()] if folder.is_dir() else []
    else:
        raise ValueError(f"no fortune files for language {language!r}; there are: en, {', '.join(LANGUAGE_DIRS)}")
    return sorted(p for p in files if p.name.split(".")[0] not in SKIP_FILES)


def clean_sentences(text: str, language: str) -> list[str]:
    """The sentences of one fortune file's text that a speech engine reads as written."""
    allowed = re.compile(ALLOWED[language])
    out = []
    for fortune in text.split("\n%\n"):
        if "\t" in fortune or "--" in fortune or re.search(r":\S", fortune):  # attributions, tables, "A:" dialogue
            continue
        for sentence in SENTENCE_END.split(" ".join(fortune.split())):
            words = sentence.split()
            if (WORDS_RANGE[0] <= len(words) <= WORDS_RANGE[1] and allowed.fullmatch(sentence)
                    and sentence[0].isupper() and sentence[-1] in ".!?" and not any(w.isupper() and len(w) > 1
                                                                                 for w in words)):
                out.append(sentence)
    return out


@lru_cache(maxsize=None)
def fortune_sentences(language: str) -> dict[str, tuple[str, ...]]:
    """{'train': (...), 'test': (...)}: the language's cleaned, deduplicated, sorted sentences by split."""
    files = fortune_files(language)
    if not files:
        package = "fortunes-min" if language == "en" else f"fortunes-{language}"
        raise EngineError(f"no fortune files for {language}: apt-get install {package}")
    sentences = sorted({s for f in files for s in clean_sentences(_read(f), language)})
    return {split: tuple(s for s in sentences if sentence_split(s) == split) for split in ("train", "test")}


# -- Mandarin: Debian's fortunes-zh (poems, sayings and a few notes; files at the top of FORTUNE_DIR) ----------------
MANDARIN_PACKAGE = "fortunes-zh"
ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")  # the files colour titles, authors and attributions
HAN = r"\u4e00-\u9fff"
MANDARIN_ALLOWED = re.compile(f"[{HAN}，、；：]+[。！？]")  # characters and Chinese punctuation only: no Latin, digits
MANDARIN_END = re.compile(r"(?<=[。！？])")
HAN_RANGE = (6, 24)  # sentence length kept, in characters
SIMPLIFIED = "gb2312"  # GB 2312 encodes Simplified characters only: a fortune it cannot encode is Traditional (or odd)


def mandarin_files() -> list[Path]:
    listing = DPKG_LISTS / f"{MANDARIN_PACKAGE}.list"
    if not listing.exists():
        return []
    paths = {Path(line) for line in listing.read_text().split()}
    return sorted(p for p in paths if p.parent == FORTUNE_DIR and p.suffix == "" and p.is_file()
                  and not p.is_symlink())


def clean_mandarin(text: str) -> list[str]:
    """The short Simplified-Chinese sentences of one fortunes-zh file: wrapped lines joined (Chinese has no spaces
    between words) into paragraphs, which blank lines and the coloured lines (titles, authors) end, then split after
    。！？; whole fortunes outside GB 2312 are skipped."""
    out = []
    for fortune in text.split("\n%\n"):
        try:
            fortune.encode(SIMPLIFIED)
        except UnicodeEncodeError:
            continue
        paragraphs = [[]]
        for line in fortune.splitlines():
            if line.strip() and not ANSI_ESCAPE.search(line):
                paragraphs[-1].append(line.strip())
            elif paragraphs[-1]:
                paragraphs.append([])
        for paragraph in paragraphs:
            for sentence in MANDARIN_END.split("".join(paragraph)):
                characters = len(re.findall(f"[{HAN}]", sentence))
                if MANDARIN_ALLOWED.fullmatch(sentence) and HAN_RANGE[0] <= characters <= HAN_RANGE[1]:
                    out.append(sentence)
    return out


@lru_cache(maxsize=None)
def mandarin_sentences() -> dict[str, tuple[str, ...]]:
    """{'train': (...), 'test': (...)}: fortunes-zh's cleaned, deduplicated, sorted sentences by split."""
    files = mandarin_files()
    if not files:
        raise EngineError(f"no Mandarin fortune files: apt-get install {MANDARIN_PACKAGE}")
    sentences = sorted({s for f in files for s in clean_mandarin(f.read_text(encoding="utf-8"))})
    return {split: tuple(s for s in sentences if sentence_split(s) == split) for split in ("train", "test")}
