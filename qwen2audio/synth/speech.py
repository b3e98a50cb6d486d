"""Speech engines: espeak-ng, festival and flite (Debian packages) rendered to 16 kHz float32. A voice is an engine, a
language voice and a variant; some espeak-ng variants are held out of training, festival's English voices are a second
training engine, and flite (English only) is heard in the test split alone: a model is judged on voices and an engine
it never heard."""

from __future__ import annotations

import atexit
import importlib.util
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from ..audio import SAMPLE_RATE

ESPEAK = "espeak-ng"
ESPEAK_VOICES = {"en": "en", "cmn": "cmn", "yue": "yue", "fr": "fr", "it": "it", "es": "es", "de": "de", "ja": "ja"}
# espeak-ng 1.51's "cmn" voice reads most Han characters as their pinyin spelt out in English, tone digits included
# ("jin one tian one" for 今天); "cmn-latn-pinyin" reads them as Mandarin. The ASR-beyond-English, names and age
# families speak Mandarin with it (Voice.espeak_voice); the others keep "cmn", so their audio (and a corpus of them
# alone) does not change when families are added.
HANZI_VOICES = {"cmn": "cmn-latn-pinyin"}
MALE_VARIANTS = ("m1", "m2", "m3", "m4", "m5", "m6", "m7", "m8")
FEMALE_VARIANTS = ("f1", "f2", "f3", "f4", "f5")
WHISPER_VARIANTS = {"male": "whisper", "female": "whisperf"}
TEST_VARIANTS = ("m8", "f5")  # held out of training: test voices are never heard in training
# `synth --voices extended`: espeak-ng's named variants of a stated sex (no robots), training voices only, so that a
# speaker-sex classifier meets many more voices than f1-f4 / m1-m7 before the held-out f5 and m8
EXTENDED_VARIANTS = {"male": ("Denis", "Diogo", "Henrique", "Hugo", "Marco", "antonio", "michel", "miguel", "sandro",
                              "travis", "victor"),
                     "female": ("Alicia", "Andrea", "Annie", "anika", "aunty", "belinda", "grandma", "linda", "steph",
                                "steph2", "steph3")}
VOICE_SETS = ("core", "extended")
RATE_WPM = {"slow": 100, "normal": 160, "fast": 260}  # espeak-ng -s
AMPLITUDE = {"quiet": 40, "normal": 100, "loud": 200}  # espeak-ng -a (0..200)
PITCH_RANGE = (30, 70)  # espeak-ng -p (0..99)
FLITE = "flite"
FLITE_VOICES = {"slt": "female", "rms": "male", "awb": "male", "kal16": "male"}  # 16 kHz voices of Debian's flite
FLITE_STRETCH = (0.85, 1.2)  # flite --setf duration_stretch: < 1 faster, > 1 slower
FESTIVAL = "festival"
# festival's English voices (Debian: festvox-kallpc16k, festvox-kdlpc16k, festvox-us-slt-hts)
FESTIVAL_VOICES = {"kal_diphone": "male", "ked_diphone": "male", "cmu_us_slt_arctic_hts": "female"}
FESTIVAL_PACKAGES = {"kal_diphone": "festvox-kallpc16k", "ked_diphone": "festvox-kdlpc16k",
                     "cmu_us_slt_arctic_hts": "festvox-us-slt-hts"}
FESTIVAL_VOICE_DIR = Path("/usr/share/festival/voices")
FESTIVAL_DONE = "QWEN2AUDIO-DONE"  # what the festival server prints after each utterance
WAV_HEADER_BYTES = 44  # espeak-ng --stdout writes a canonical 44-byte RIFF header (with unset sizes) + int16 PCM


class EngineError(RuntimeError):
    """A speech engine that is not installed."""


PYTHON_ENGINE = "py:"  # an engine named py:MODULE is a Python package, not a program


def require_engine(name: str) -> None:
    """EngineError unless the program (or, for `py:MODULE`, the Python package) is installed."""
    if name.startswith(PYTHON_ENGINE):
        module = name[len(PYTHON_ENGINE):]
        if importlib.util.find_spec(module) is None:
            raise EngineError(f"the Python package {module} is not installed: pip install {module} "
                              f"(or qwen2audio[synth])")
    elif shutil.which(name) is None:
        raise EngineError(f"the program {name} is not installed: apt-get install {name} (or `make system-deps`)")
    elif name == FESTIVAL:
        missing = [v for v in FESTIVAL_VOICES if not any(FESTIVAL_VOICE_DIR.glob(f"*/{v}"))]
        if missing:
            raise EngineError(f"festival voice {missing[0]} is not installed: apt-get install "
                              f"{' '.join(FESTIVAL_PACKAGES[v] for v in missing)} (or `make system-deps`)")


@dataclass(frozen=True)
class Voice:
    engine: str
    language: str  # the report's code (en, cmn, yue ...)
    sex: str  # male | female
    variant: str
    pitch: int = 50
    rate: int = RATE_WPM["normal"]
    amplitude: int = AMPLITUDE["normal"]

    stretch: float = 1.0  # flite's duration_stretch
    espeak_voice: str = ""  # the espeak-ng language voice, where it is not ESPEAK_VOICES[language] (HANZI_VOICES)

    @property
    def espeak_name(self) -> str:
        return self.espeak_voice or ESPEAK_VOICES[self.language]

    @property
    def name(self) -> str:
        """The voice's identity (engine, language, variant): what 'held-out voice' means."""
        if self.engine in (FLITE, FESTIVAL):
            return f"{self.engine}:{self.variant}"
        return f"{self.engine}:{self.espeak_name}+{self.variant}"


def variants(sex: str, split: str, voices: str = "core") -> tuple[str, ...]:
    """The espeak-ng variants of `sex` for `split`: the held-out ones in test; in train the others, plus the named
    variants with voices="extended" (never held out, so the filter keeps them out of test)."""
    pool = MALE_VARIANTS if sex == "male" else FEMALE_VARIANTS
    if voices == "extended":
        pool += EXTENDED_VARIANTS[sex]
    return tuple(v for v in pool if (v in TEST_VARIANTS) == (split == "test"))


def espeak(text: str, voice: Voice) -> np.ndarray:
    """Speak `text` with espeak-ng; float32 at SAMPLE_RATE."""
    command = [ESPEAK, "-v", f"{voice.espeak_name}+{voice.variant}", "-s", str(voice.rate),
               "-p", str(voice.pitch), "-a", str(voice.amplitude), "--stdout", text]
    try:
        data = subprocess.run(command, capture_output=True, check=True).stdout
    except FileNotFoundError:
        raise EngineError(f"the speech engine {ESPEAK} is not installed: apt-get install {ESPEAK}") from None
    if data[:4] != b"RIFF" or len(data) <= WAV_HEADER_BYTES:
        raise RuntimeError(f"{ESPEAK} gave no audio for {text!r} ({voice.name})")
    rate = int.from_bytes(data[24:28], "little")
    pcm = np.frombuffer(data[WAV_HEADER_BYTES:len(data) - (len(data) - WAV_HEADER_BYTES) % 2], "<i2")
    audio = pcm.astype(np.float32) / 32768.0
    return soxr.resample(audio, rate, SAMPLE_RATE).astype(np.float32) if rate != SAMPLE_RATE else audio


def flite(text: str, voice: Voice) -> np.ndarray:
    """Speak English `text` with flite (it writes only to files: a temporary one); float32 at SAMPLE_RATE."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "speech.wav"
        command = [FLITE, "-voice", voice.variant, "--setf", f"duration_stretch={voice.stretch:.3f}", "-t", text,
                   "-o", str(path)]
        try:
            subprocess.run(command, capture_output=True, check=True)
        except FileNotFoundError:
            raise EngineError(f"the program {FLITE} is not installed: apt-get install {FLITE}") from None
        audio, rate = sf.read(path, dtype="float32")
    return soxr.resample(audio, rate, SAMPLE_RATE).astype(np.float32) if rate != SAMPLE_RATE else audio


class FestivalServer:
    """One festival process per worker process, fed Scheme on stdin: its start-up (~0.2 s) costs far more than an
    utterance (~15 ms for a diphone voice), so it is paid once. Each utterance selects its voice afresh, so the audio
    depends on the text and the voice alone, not on what was said before."""

    def __init__(self) -> None:
        self.pid = os.getpid()  # a forked worker must not share its parent's pipes
        self.folder = tempfile.TemporaryDirectory(prefix="qwen2audio-festival-")
        try:
            self.process = subprocess.Popen([FESTIVAL, "--pipe"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                            stderr=subprocess.DEVNULL, text=True)
        except FileNotFoundError:
            raise EngineError(f"the program {FESTIVAL} is not installed: apt-get install {FESTIVAL}") from None

    def say(self, text: str, variant: str) -> np.ndarray:
        path = Path(self.folder.name) / "speech.wav"
        path.unlink(missing_ok=True)
        quoted = text.replace("\\", " ").replace('"', " ")
        self.process.stdin.write(f'(voice_{variant})\n(utt.save.wave (utt.synth (Utterance Text "{quoted}")) '
                                 f'"{path}" \'riff)\n(format t "{FESTIVAL_DONE}\\n")\n(fflush nil)\n')
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if line.strip() != FESTIVAL_DONE or not path.exists():
            raise RuntimeError(f"{FESTIVAL} gave no audio for {text!r} (voice {variant}; is it installed?)")
        audio, rate = sf.read(path, dtype="float32")
        return soxr.resample(audio, rate, SAMPLE_RATE).astype(np.float32) if rate != SAMPLE_RATE else audio

    def close(self) -> None:
        if self.pid == os.getpid() and self.process.poll() is None:
            self.process.stdin.close()
            self.process.wait()
        self.folder.cleanup()


_festival: FestivalServer | None = None


def festival(text: str, voice: Voice) -> np.ndarray:
    """Speak English `text` with a festival voice; float32 at SAMPLE_RATE."""
    global _festival
    if _festival is None or _festival.pid != os.getpid() or _festival.process.poll() is not None:
        _festival = FestivalServer()
        atexit.register(_festival.close)
    return _festival.say(text, voice.variant)


def speak(text: str, voice: Voice) -> np.ndarray:
    engines = {FLITE: flite, FESTIVAL: festival}
    return engines.get(voice.engine, espeak)(text, voice)
