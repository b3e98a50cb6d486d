"""A small parallel grammar for speech translation: English sentences (spoken) with exact references in Chinese
(Simplified), French and German. Each template is written once per language; the lexicon carries what agreement needs
(French and German gender and plural, French elision and adjective position, German declension, Chinese measure
words), so every reference is grammatical. Train and test differ by the hash of the English sentence."""

from __future__ import annotations

import random
from dataclasses import dataclass

from .text import MAX_TRIES, sentence_split

TARGETS = ("zh", "fr", "de")
VOWELS = tuple("aeiouhéèêâ")  # French elision: l'arbre, l'école


@dataclass(frozen=True)
class Noun:
    en: str
    en_plural: str | None  # None: the English plural is not among the common words, so no plural template uses it
    zh: str
    measure: str  # 只 本 辆 ...
    fr: str
    fr_plural: str
    fr_gender: str  # m | f
    de: str
    de_plural: str
    de_gender: str  # m | f | n


@dataclass(frozen=True)
class Adjective:
    en: str
    zh_attr: str  # before a noun: 小 / 红色的
    zh_pred: str  # as a predicate: 很小 / 是红色的
    fr: tuple[str, str, str, str]  # m, f, m plural, f plural
    fr_before: bool  # petit chien, chien rouge
    de: str  # the stem (predicative form)


@dataclass(frozen=True)
class Place:
    en: str
    zh: str
    fr: str
    fr_gender: str
    de: str
    de_gender: str


NOUNS = (
    Noun("dog", "dogs", "狗", "只", "chien", "chiens", "m", "Hund", "Hunde", "m"),
    Noun("cat", None, "猫", "只", "chat", "chats", "m", "Katze", "Katzen", "f"),
    Noun("bird", "birds", "鸟", "只", "oiseau", "oiseaux", "m", "Vogel", "Vögel", "m"),
    Noun("horse", None, "马", "匹", "cheval", "chevaux", "m", "Pferd", "Pferde", "n"),
    Noun("book", "books", "书", "本", "livre", "livres", "m", "Buch", "Bücher", "n"),
    Noun("car", "cars", "车", "辆", "voiture", "voitures", "f", "Auto", "Autos", "n"),
    Noun("house", "houses", "房子", "座", "maison", "maisons", "f", "Haus", "Häuser", "n"),
    Noun("table", None, "桌子", "张", "table", "tables", "f", "Tisch", "Tische", "m"),
    Noun("chair", None, "椅子", "把", "chaise", "chaises", "f", "Stuhl", "Stühle", "m"),
    Noun("door", "doors", "门", "扇", "porte", "portes", "f", "Tür", "Türen", "f"),
    Noun("window", "windows", "窗户", "扇", "fenêtre", "fenêtres", "f", "Fenster", "Fenster", "n"),
    Noun("letter", "letters", "信", "封", "lettre", "lettres", "f", "Brief", "Briefe", "m"),
    Noun("apple", None, "苹果", "个", "pomme", "pommes", "f", "Apfel", "Äpfel", "m"),
    Noun("tree", "trees", "树", "棵", "arbre", "arbres", "m", "Baum", "Bäume", "m"),
    Noun("ball", "balls", "球", "个", "balle", "balles", "f", "Ball", "Bälle", "m"),
    Noun("key", None, "钥匙", "把", "clé", "clés", "f", "Schlüssel", "Schlüssel", "m"),
    Noun("cup", None, "杯子", "个", "tasse", "tasses", "f", "Tasse", "Tassen", "f"),
    Noun("bag", None, "包", "个", "sac", "sacs", "m", "Tasche", "Taschen", "f"),
)
ADJECTIVES = (
    Adjective("small", "小", "很小", ("petit", "petite", "petits", "petites"), True, "klein"),
    Adjective("big", "大", "很大", ("grand", "grande", "grands", "grandes"), True, "groß"),
    Adjective("red", "红色的", "是红色的", ("rouge", "rouge", "rouges", "rouges"), False, "rot"),
    Adjective("blue", "蓝色的", "是蓝色的", ("bleu", "bleue", "bleus", "bleues"), False, "blau"),
    Adjective("green", "绿色的", "是绿色的", ("vert", "verte", "verts", "vertes"), False, "grün"),
    Adjective("black", "黑色的", "是黑色的", ("noir", "noire", "noirs", "noires"), False, "schwarz"),
    Adjective("white", "白色的", "是白色的", ("blanc", "blanche", "blancs", "blanches"), False, "weiß"),
    Adjective("yellow", "黄色的", "是黄色的", ("jaune", "jaune", "jaunes", "jaunes"), False, "gelb"),
)
PLACES = (
    Place("kitchen", "厨房", "cuisine", "f", "Küche", "f"),
    Place("garden", "花园", "jardin", "m", "Garten", "m"),
    Place("room", "房间", "chambre", "f", "Zimmer", "n"),
    Place("school", "学校", "école", "f", "Schule", "f"),
    Place("office", "办公室", "bureau", "m", "Büro", "n"),
    Place("park", "公园", "parc", "m", "Park", "m"),
)
NAMES = {"Tom": "汤姆", "John": "约翰", "Peter": "彼得", "David": "大卫", "Paul": "保罗", "Mary": "玛丽",
         "Sam": "萨姆", "Max": "马克斯", "Grace": "格蕾丝", "Rose": "罗丝", "Ben": "本", "Alex": "亚历克斯"}
# two..ten: English, Chinese before a measure word (两 not 二), French, German
NUMBERS = {2: ("two", "两", "deux", "zwei"), 3: ("three", "三", "trois", "drei"), 4: ("four", "四", "quatre", "vier"),
           5: ("five", "五", "cinq", "fünf"), 6: ("six", "六", "six", "sechs"), 7: ("seven", "七", "sept", "sieben"),
           8: ("eight", "八", "huit", "acht"), 9: ("nine", "九", "neuf", "neun"), 10: ("ten", "十", "dix", "zehn")}
TIMES = {"today": ("今天", "aujourd'hui", "heute"), "tomorrow": ("明天", "demain", "morgen"),
         "tonight": ("今晚", "ce soir", "heute Abend")}
# subject -> verb -> (English, Chinese, French, German); "{name}" is a person's name (third person singular)
VERBS = {
    "I": {"have": ("I have", "我有", "j'ai", "ich habe"), "see": ("I see", "我看到", "je vois", "ich sehe"),
          "want": ("I want", "我想要", "je veux", "ich will"), "find": ("I find", "我找到", "je trouve", "ich finde")},
    "we": {"have": ("we have", "我们有", "nous avons", "wir haben"),
           "see": ("we see", "我们看到", "nous voyons", "wir sehen"),
           "want": ("we want", "我们想要", "nous voulons", "wir wollen"),
           "find": ("we find", "我们找到", "nous trouvons", "wir finden")},
    "{name}": {"have": ("{name} has", "{zh_name}有", "{name} a", "{name} hat"),
               "see": ("{name} sees", "{zh_name}看到", "{name} voit", "{name} sieht"),
               "want": ("{name} wants", "{zh_name}想要", "{name} veut", "{name} will"),
               "find": ("{name} finds", "{zh_name}找到", "{name} trouve", "{name} findet")},
}
DE_ARTICLES = {"nom": {"m": "der", "f": "die", "n": "das"}, "acc": {"m": "den", "f": "die", "n": "das"},
               "indef_acc": {"m": "einen", "f": "eine", "n": "ein"}, "in": {"m": "im", "f": "in der", "n": "im"},
               "to": {"m": "zum", "f": "zur", "n": "zum"}}
DE_INDEF_ACC_ENDING = {"m": "en", "f": "e", "n": "es"}  # einen kleinen, eine kleine, ein kleines
TEMPLATES = ("is_adj", "are_adj", "has_a", "is_in", "counts", "going", "adj_is_in")


@dataclass(frozen=True)
class Pair:
    """An English sentence (spoken, lower case, no punctuation) and its references per target language."""

    template: str
    english: str
    references: dict[str, str]


def french_definite(word: str, gender: str) -> str:
    return f"l'{word}" if word.startswith(VOWELS) else f"{'le' if gender == 'm' else 'la'} {word}"


def _fr_to(word: str, gender: str) -> str:
    """à + the definite article: au parc, à la cuisine, à l'école."""
    return f"à l'{word}" if word.startswith(VOWELS) else (f"au {word}" if gender == "m" else f"à la {word}")


def french_noun_phrase(noun: Noun, adj: Adjective, plural: bool = False) -> str:
    form = adj.fr[(2 if plural else 0) + (noun.fr_gender == "f")]
    word = noun.fr_plural if plural else noun.fr
    return f"{form} {word}" if adj.fr_before else f"{word} {form}"


def _sentence(text: str, language: str) -> str:
    """A reference as written: capitalised, with its full stop."""
    if language == "zh":
        return text + "。"
    return text[0].upper() + text[1:] + "."


def _render(template: str, rng: random.Random) -> Pair:
    noun, adj, place = rng.choice(NOUNS), rng.choice(ADJECTIVES), rng.choice(PLACES)
    name = rng.choice(sorted(NAMES))
    if template == "is_adj":
        out = (f"the {noun.en} is {adj.en}", f"{noun.zh}{adj.zh_pred}",
               f"{french_definite(noun.fr, noun.fr_gender)} est {adj.fr[noun.fr_gender == 'f']}",
               f"{DE_ARTICLES['nom'][noun.de_gender]} {noun.de} ist {adj.de}")
    elif template == "are_adj":
        noun = rng.choice([n for n in NOUNS if n.en_plural])
        out = (f"the {noun.en_plural} are {adj.en}", f"这些{noun.zh}{adj.zh_pred}",
               f"les {noun.fr_plural} sont {adj.fr[2 + (noun.fr_gender == 'f')]}",
               f"die {noun.de_plural} sind {adj.de}")
    elif template in ("has_a", "counts"):
        subject = rng.choice(sorted(VERBS))
        verb = rng.choice(sorted(VERBS[subject]))
        en, zh, fr, de = (form.format(name=name, zh_name=NAMES[name]) for form in VERBS[subject][verb])
        if template == "has_a":
            g = noun.de_gender
            out = (f"{en} a {adj.en} {noun.en}", f"{zh}一{noun.measure}{adj.zh_attr}{noun.zh}",
                   f"{fr} {'un' if noun.fr_gender == 'm' else 'une'} {french_noun_phrase(noun, adj)}",
                   f"{de} {DE_ARTICLES['indef_acc'][g]} {adj.de}{DE_INDEF_ACC_ENDING[g]} {noun.de}")
        else:
            noun = rng.choice([n for n in NOUNS if n.en_plural])
            n_en, n_zh, n_fr, n_de = NUMBERS[rng.choice(sorted(NUMBERS))]
            out = (f"{en} {n_en} {noun.en_plural}", f"{zh}{n_zh}{noun.measure}{noun.zh}",
                   f"{fr} {n_fr} {noun.fr_plural}", f"{de} {n_de} {noun.de_plural}")
    elif template == "is_in":
        out = (f"the {noun.en} is in the {place.en}", f"{noun.zh}在{place.zh}里",
               f"{french_definite(noun.fr, noun.fr_gender)} est dans {french_definite(place.fr, place.fr_gender)}",
               f"{DE_ARTICLES['nom'][noun.de_gender]} {noun.de} ist {DE_ARTICLES['in'][place.de_gender]} {place.de}")
    elif template == "adj_is_in":
        g = noun.fr_gender
        article = "l'" if adj.fr_before and adj.fr[g == "f"].startswith(VOWELS) else ("le " if g == "m" else "la ")
        fr_np = french_noun_phrase(noun, adj)
        fr_np = f"{article}{fr_np}" if adj.fr_before else french_definite(noun.fr, g) + " " + adj.fr[g == "f"]
        out = (f"the {adj.en} {noun.en} is in the {place.en}", f"{adj.zh_attr}{noun.zh}在{place.zh}里",
               f"{fr_np} est dans {french_definite(place.fr, place.fr_gender)}",
               f"{DE_ARTICLES['nom'][noun.de_gender]} {adj.de}e {noun.de} ist "
               f"{DE_ARTICLES['in'][place.de_gender]} {place.de}")
    elif template == "going":
        time = rng.choice(sorted(TIMES))
        t_zh, t_fr, t_de = TIMES[time]
        out = (f"we are going to the {place.en} {time}", f"我们{t_zh}去{place.zh}",
               f"nous allons {_fr_to(place.fr, place.fr_gender)} {t_fr}",
               f"wir gehen {t_de} {DE_ARTICLES['to'][place.de_gender]} {place.de}")
    else:
        raise ValueError(f"unknown translation template {template!r}; known: {', '.join(TEMPLATES)}")
    english, zh, fr, de = out
    return Pair(template, english, {"zh": _sentence(zh, "zh"), "fr": _sentence(fr, "fr"), "de": _sentence(de, "de")})


def translation_pair(rng: random.Random, split: str) -> Pair:
    """A sentence pair whose English text belongs to `split` (test sentences are never spoken in train)."""
    want = "test" if split == "test" else "train"
    for _ in range(MAX_TRIES):
        pair = _render(rng.choice(TEMPLATES), rng)
        if sentence_split(pair.english) == want:
            return pair
    raise RuntimeError(f"no {want} sentence pair found in {MAX_TRIES} draws")  # pragma: no cover


def random_pair(rng: random.Random) -> Pair:
    """A pair of any split (a caller that splits by another text, e.g. the French side, checks that itself)."""
    return _render(rng.choice(TEMPLATES), rng)
