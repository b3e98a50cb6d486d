"""Stage-1 instructions: for each task a pool of natural-language paraphrases, one drawn per sample.

The report replaced Qwen-Audio's hierarchical task tags with natural-language prompts. A task row
`{"audio", "task", "text", "language", ...}` gets one instruction from its task's pool, drawn with a generator seeded
by the row (so a run is reproducible and each epoch may draw another); the placeholders `{language}`,
`{source_language}`, `{target_language}` and `{question}` are filled from the row, and only the paraphrases whose
fields the row has are candidates. The loss falls on the answer only.
"""

from __future__ import annotations

import random
import string
from typing import Any, Mapping

TASK_ALIASES = {
    "transcribe": "asr", "speech_recognition": "asr",
    "ast": "s2tt", "speech_translation": "s2tt", "translation": "s2tt", "st": "s2tt",
    "emotion": "ser", "speech_emotion": "ser",
    "vocal_sound": "vsc", "vocalsound": "vsc",
    "sound_classification": "sound", "aec": "sound", "audio_classification": "sound", "sound_event": "sound",
    "aac": "caption", "audio_caption": "caption", "audio_captioning": "caption",
    "music_caption": "music", "music_captioning": "music",
    "audio_qa": "aqa", "question": "aqa",
    "language_id": "lid", "language_identification": "lid", "slid": "lid",
    "speaker_gender": "gender", "speaker_age": "age",
}

INSTRUCTIONS: dict[str, list[str]] = {
    "asr": [
        "Transcribe the speech.",
        "Write down what is said in the audio.",
        "Recognize the speech and give the transcript.",
        "What does the speaker say? Give the exact words.",
        "Convert this recording to text.",
        "Transcribe the {language} speech into text.",
        "Detect the language and recognize the speech.",
        "Please transcribe this {language} audio.",
    ],
    "s2tt": [
        "Translate the speech into {target_language}.",
        "Listen and translate what is said into {target_language}.",
        "Give a {target_language} translation of the {source_language} speech.",
        "What does the speaker say? Answer in {target_language}.",
        "Translate this {source_language} recording into {target_language} text.",
        "Render the spoken words in {target_language}.",
    ],
    "ser": [
        "Recognize the emotion of the speaker.",
        "What emotion does the speaker express? Answer with one word.",
        "Classify the emotion in this speech.",
        "How does the speaker feel?",
        "Identify the emotion conveyed by the voice.",
        "Recognize the emotion with keywords in English.",
    ],
    "vsc": [
        "Classify the human vocal sound.",
        "What kind of vocal sound is this?",
        "Identify the vocal sound: laughter, sigh, cough, throat clearing, sneeze or sniff.",
        "Which non-speech sound does the person make?",
        "Classify the human vocal sound to VocalSound in English.",
        "Name the vocal sound in the recording.",
    ],
    "sound": [
        "Classify the sound.",
        "What sound is this?",
        "Identify the sound event in the audio.",
        "Which sound can you hear?",
        "Name the source of this sound.",
        "Label the audio with its sound class.",
    ],
    "caption": [
        "Describe the audio.",
        "Generate a caption for this audio.",
        "What can be heard in this recording? Describe it in one sentence.",
        "Write a short description of the sounds.",
        "Caption the audio clip.",
        "Generate the caption in English.",
    ],
    "music": [
        "Describe the music.",
        "Write a caption for this piece of music.",
        "What does this music sound like?",
        "Describe the genre, instruments and mood of the music.",
        "Caption the music clip.",
    ],
    "aqa": [
        "{question}",
        "Listen to the audio and answer: {question}",
        "Answer the question about the audio. {question}",
        "Based on the audio, {question}",
    ],
    "lid": [
        "Which language is spoken?",
        "Identify the language of the speech.",
        "What language does the speaker use?",
        "Detect the spoken language.",
        "Name the language of this recording.",
    ],
    "gender": [
        "What is the gender of the speaker?",
        "Is the speaker male or female?",
        "Identify the speaker's gender.",
        "Classify the speaker's gender.",
    ],
    "age": [
        "How old does the speaker sound?",
        "Estimate the age group of the speaker.",
        "Classify the speaker's age.",
        "What age range is the speaker in?",
    ],
}

LANGUAGES = {
    "en": "English", "zh": "Chinese", "cmn": "Mandarin", "yue": "Cantonese", "fr": "French", "de": "German",
    "es": "Spanish", "it": "Italian", "ja": "Japanese", "ko": "Korean", "ru": "Russian", "pt": "Portuguese",
    "ar": "Arabic", "nl": "Dutch", "sv": "Swedish", "tr": "Turkish", "hi": "Hindi", "id": "Indonesian",
    "vi": "Vietnamese", "th": "Thai", "pl": "Polish", "fa": "Persian", "uk": "Ukrainian", "ca": "Catalan",
    "et": "Estonian", "mn": "Mongolian", "lv": "Latvian", "sl": "Slovenian", "ta": "Tamil", "cy": "Welsh",
}


def canonical_task(task: str) -> str:
    name = task.strip().lower().replace("-", "_").replace(" ", "_")
    name = TASK_ALIASES.get(name, name)
    if name not in INSTRUCTIONS:
        raise ValueError(f"unknown task {task!r}; known: {', '.join(INSTRUCTIONS)} (and aliases "
                         f"{', '.join(sorted(TASK_ALIASES))}); or give the row a 'prompt'")
    return name


def language_name(code: Any) -> str:
    """'en' -> 'English'; an unknown code or a full name is returned as is."""
    return LANGUAGES.get(str(code).lower().strip("<|>"), str(code))


def prompt_fields(task: str, fields: Mapping[str, Any]) -> dict[str, str]:
    """The placeholder values a row provides (language codes become names)."""
    out = {}
    if fields.get("language"):
        out["language"] = out["source_language"] = language_name(fields["language"])
    for key in ("source_language", "target_language"):
        if fields.get(key):
            out[key] = language_name(fields[key])
    if fields.get("question"):
        out["question"] = str(fields["question"])
    return out


def draw_instruction(task: str, fields: Mapping[str, Any], rng: random.Random) -> str:
    """One paraphrase of `task`'s instruction whose placeholders the row can fill, filled in."""
    name = canonical_task(task)
    values = prompt_fields(name, fields)
    usable = [t for t in INSTRUCTIONS[name] if placeholders(t) <= values.keys()]
    if not usable:
        needed = sorted(set().union(*(placeholders(t) for t in INSTRUCTIONS[name])))
        raise ValueError(f"task {name!r} needs one of the fields {', '.join(needed)} in the row")
    return rng.choice(usable).format(**values)


def task_answer(task: str, text: str | None, fields: Mapping[str, Any]) -> str:
    """The answer of a task row: its text; for language ID without text, the language's name."""
    if text is not None:
        return text
    if canonical_task(task) == "lid" and fields.get("language"):
        return language_name(fields["language"])
    raise ValueError(f"a {task!r} row needs 'text' (the answer)")


def sample_rng(seed: int, source: int, epoch: int, line: int) -> random.Random:
    """The generator of one row's draws: the same row in the same epoch always draws the same."""
    return random.Random(f"{seed}:{source}:{epoch}:{line}")


def placeholders(template: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(template) if name}
