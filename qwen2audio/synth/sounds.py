"""Sound classes rendered in pure numpy at 16 kHz: each label's renderer takes a seeded generator and returns the
signal (float32, peak `PEAK`) and the parameters it drew, so that tests can check the label by measurement."""

from __future__ import annotations

from typing import Callable

import numpy as np

from ..audio import SAMPLE_RATE

PEAK = 0.5  # every rendered sound is scaled to this peak (a loudness task rescales on top)
FADE_SECONDS = 0.01  # raised-cosine ramps at both ends: no clicks at the edges
MIN_SECONDS, MAX_SECONDS = 1.0, 3.0  # length of a sound-class clip
TONE_HZ = (200.0, 2000.0)  # range of a tone's (or a sweep's start/end) frequency
BEEP_SECONDS, BEEP_GAP_SECONDS = 0.12, 0.18  # one beep of a sequence or a count, and the silence after it
CLICK_SECONDS = 0.002  # one click: a 2 ms burst
CLICK_GAP_SECONDS = (0.08, 0.25)  # spacing of a click train


def _time(seconds: float) -> np.ndarray:
    return np.arange(int(round(seconds * SAMPLE_RATE))) / SAMPLE_RATE


def finish(x: np.ndarray, peak: float = PEAK) -> np.ndarray:
    n = min(int(FADE_SECONDS * SAMPLE_RATE), len(x) // 2)
    ramp = 0.5 - 0.5 * np.cos(np.pi * np.arange(n) / n)
    x = x.astype(np.float64)
    x[:n] *= ramp
    x[len(x) - n:] *= ramp[::-1]
    return (x * (peak / max(np.abs(x).max(), 1e-9))).astype(np.float32)


def _coloured_noise(rng: np.random.Generator, n: int, exponent: float) -> np.ndarray:
    """Noise whose power falls as 1/f**exponent (0 white, 1 pink, 2 brown), shaped in the frequency domain."""
    spectrum = np.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n, 1 / SAMPLE_RATE)
    f[0] = f[1]
    return np.fft.irfft(spectrum / f ** (exponent / 2), n)


def tone(freq: float, seconds: float, shape: str = "sine") -> np.ndarray:
    phase = (freq * _time(seconds)) % 1.0
    if shape == "sine":
        return np.sin(2 * np.pi * phase)
    if shape == "square":
        return np.where(phase < 0.5, 1.0, -1.0)
    if shape == "sawtooth":
        return 2 * phase - 1
    raise ValueError(f"unknown wave shape {shape!r}")


def sweep(f0: float, f1: float, seconds: float) -> np.ndarray:
    """A sine whose frequency moves exponentially from f0 to f1."""
    t = _time(seconds)
    k = np.log(f1 / f0) / seconds
    return np.sin(2 * np.pi * f0 * (np.exp(k * t) - 1) / k)


def beeps(count: int, freq: float) -> np.ndarray:
    """`count` sine beeps, each followed by a gap (the last one too, so the clip ends in silence)."""
    beep = finish(tone(freq, BEEP_SECONDS), 1.0)
    gap = np.zeros(int(BEEP_GAP_SECONDS * SAMPLE_RATE), np.float32)
    return np.concatenate([np.concatenate([beep, gap]) for _ in range(count)])


def clicks(count: int, gap: float) -> np.ndarray:
    """`count` 2-ms clicks `gap` seconds apart, with `gap` of silence before the first and after the last."""
    period = int(gap * SAMPLE_RATE)
    x = np.zeros(period * (count + 1), np.float64)
    width = int(CLICK_SECONDS * SAMPLE_RATE)
    for i in range(1, count + 1):
        x[i * period: i * period + width] = 1.0
    return x


def _sound_params(rng: np.random.Generator) -> tuple[float, float]:
    return float(rng.uniform(MIN_SECONDS, MAX_SECONDS)), float(np.exp(rng.uniform(*np.log(TONE_HZ))))


def _sine(rng):
    seconds, f = _sound_params(rng)
    return tone(f, seconds), {"freq": f}


def _square(rng):
    seconds, f = _sound_params(rng)
    return tone(f / 2, seconds, "square"), {"freq": f / 2}


def _sawtooth(rng):
    seconds, f = _sound_params(rng)
    return tone(f / 2, seconds, "sawtooth"), {"freq": f / 2}


def _noise(exponent: float):
    def render(rng):
        seconds, _ = _sound_params(rng)
        return _coloured_noise(rng, len(_time(seconds)), exponent), {"exponent": exponent}
    return render


def _sweep(rising: bool):
    def render(rng):
        seconds, _ = _sound_params(rng)
        low = float(rng.uniform(200, 500))
        high = low * float(rng.uniform(3, 6))
        f0, f1 = (low, high) if rising else (high, low)
        return sweep(f0, f1, seconds), {"f0": f0, "f1": f1}
    return render


def _click_train(rng):
    count = int(rng.integers(5, 15))
    return clicks(count, float(rng.uniform(*CLICK_GAP_SECONDS))), {"count": count}


CHORDS = {"major": (0, 4, 7), "minor": (0, 3, 7), "sus4": (0, 5, 7)}  # semitones above the root


def _chord(rng):
    seconds, _ = _sound_params(rng)
    root = float(rng.uniform(150, 400))
    steps = CHORDS[rng.choice(sorted(CHORDS))]
    freqs = [root * 2 ** (s / 12) for s in steps]
    return sum(tone(f, seconds) for f in freqs), {"freqs": freqs}


def _siren(rng):
    seconds = float(rng.uniform(2.0, MAX_SECONDS))
    centre, depth, rate = float(rng.uniform(600, 1000)), float(rng.uniform(150, 300)), float(rng.uniform(0.5, 2.0))
    t = _time(seconds)
    freq = centre + depth * np.sin(2 * np.pi * rate * t)  # instantaneous frequency, integrated to a phase
    return np.sin(2 * np.pi * np.cumsum(freq) / SAMPLE_RATE), {"centre": centre, "depth": depth, "rate": rate}


def _beep_sequence(rng):
    count = int(rng.integers(3, 7))
    f = float(rng.uniform(600, 1500))
    return beeps(count, f), {"count": count, "freq": f}


SOUNDS: dict[str, Callable[[np.random.Generator], tuple[np.ndarray, dict]]] = {
    "sine tone": _sine, "square wave": _square, "sawtooth wave": _sawtooth,
    "white noise": _noise(0.0), "pink noise": _noise(1.0), "brown noise": _noise(2.0),
    "rising sweep": _sweep(True), "falling sweep": _sweep(False), "click train": _click_train,
    "chord": _chord, "siren": _siren, "beep sequence": _beep_sequence,
}


def render_sound(label: str, rng: np.random.Generator, peak: float = PEAK) -> tuple[np.ndarray, dict]:
    """The signal of sound class `label` (float32, scaled to `peak`) and the parameters drawn for it."""
    if label not in SOUNDS:
        raise ValueError(f"unknown sound {label!r}; known: {', '.join(SOUNDS)}")
    x, params = SOUNDS[label](rng)
    return (finish(x, peak) if label not in ("click train", "beep sequence") else
            (np.asarray(x) * (peak / max(np.abs(x).max(), 1e-9))).astype(np.float32)), params
