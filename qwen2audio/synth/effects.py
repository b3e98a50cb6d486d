"""Audio effects: mixing at a chosen signal-to-noise ratio (numpy) and sox effect chains (telephone band, reverb,
speed, gain). sox runs with -R (no fresh dither randomness), so the output bytes are the same on every run."""

from __future__ import annotations

import subprocess

import numpy as np
import soxr

from ..audio import SAMPLE_RATE

SOX = "sox"
CHAINS = {  # named sox effect chains
    "telephone": ["sinc", "300-3400"],
    "reverb": ["reverb", "50", "50", "60"],
    "fast": ["tempo", "1.15"],
    "slow": ["tempo", "0.87"],
}
SNR_DB = (0.0, 20.0)  # range of the signal-to-noise ratios drawn for noisy speech
SPEED_RANGE = (0.92, 1.08)  # speed (tempo and pitch together, as sox `speed`) drawn for training speech
GAIN_DB = (-6.0, 3.0)  # gain drawn for speech
PEAK_LIMIT = 0.99


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))


def mix_at_snr(signal: np.ndarray, noise: np.ndarray, snr_db: float, offset: int = 0) -> np.ndarray:
    """`signal` over `noise` (tiled or cut to cover it, scaled so that rms(signal)/rms(noise) is `snr_db`), placed
    `offset` samples into the noise; the sum is scaled down only if it would clip."""
    length = max(len(noise), offset + len(signal))
    bed = np.resize(noise, length).astype(np.float64)
    bed *= rms(signal) / max(rms(bed), 1e-12) * 10 ** (-snr_db / 20)
    bed[offset:offset + len(signal)] += signal
    return (bed / max(1.0, np.abs(bed).max() / 0.99)).astype(np.float32)


def sox(audio: np.ndarray, effects: list[str]) -> np.ndarray:
    """Run `audio` (float32, SAMPLE_RATE, mono) through a sox effect chain."""
    command = [SOX, "-R", "-t", "f32", "-r", str(SAMPLE_RATE), "-c", "1", "-", "-t", "f32", "-", *effects]
    result = subprocess.run(command, input=np.asarray(audio, "<f4").tobytes(), capture_output=True)
    if result.returncode:
        raise RuntimeError(f"sox {' '.join(effects)} failed: {result.stderr.decode(errors='replace').strip()}")
    return np.frombuffer(result.stdout, "<f4").copy()


def apply_chain(audio: np.ndarray, name: str) -> np.ndarray:
    if name not in CHAINS:
        raise ValueError(f"unknown effect chain {name!r}; known: {', '.join(CHAINS)}")
    return sox(audio, CHAINS[name])


def speed_and_gain(audio: np.ndarray, speed: float, gain_db: float) -> np.ndarray:
    """sox `speed S gain G`, done with the SoX resampler in-process (no subprocess per clip): the clip read at
    S times its rate, then scaled by G dB, and scaled down only if it would clip."""
    out = soxr.resample(audio, SAMPLE_RATE * speed, SAMPLE_RATE) if speed != 1 else np.asarray(audio)
    out = out * 10 ** (gain_db / 20)
    return (out / max(1.0, np.abs(out).max() / PEAK_LIMIT)).astype(np.float32)


def tremor(audio: np.ndarray, hz: float, pitch_depth: float, level_depth: float) -> np.ndarray:
    """A shaking voice (the elderly voices of the age family), as the vocal tremor of old age (4-7 Hz): the pitch
    wobbles by +-`pitch_depth` (a fraction; the clip is read at the rate 1 + pitch_depth*cos(2 pi hz t), a time warp
    by linear interpolation) and the level dips by up to `level_depth` (a fraction) at `hz`."""
    t = np.arange(len(audio)) / SAMPLE_RATE
    phase = 2 * np.pi * hz * t
    warped = (t + pitch_depth / (2 * np.pi * hz) * np.sin(phase)) * SAMPLE_RATE
    out = np.interp(warped, np.arange(len(audio)), audio) * (1 - level_depth * (1 + np.sin(phase)) / 2)
    return (out / max(1.0, np.abs(out).max() / PEAK_LIMIT)).astype(np.float32)
