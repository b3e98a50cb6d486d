"""Effects (synth/effects.py): mixing at a signal-to-noise ratio, the telephone band, speed and gain, tremor."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from conftest import dominant_hz
from qwen2audio.audio import SAMPLE_RATE
from qwen2audio.synth import effects, sounds


def test_mixing_snr_and_telephone_band():
    rng = np.random.default_rng(0)
    speechlike = sounds.tone(440.0, 1.0).astype(np.float32) * 0.3
    noise = rng.standard_normal(SAMPLE_RATE * 2)
    mixed = effects.mix_at_snr(speechlike, noise, 6.0, offset=SAMPLE_RATE // 2)
    residual = mixed[:SAMPLE_RATE // 2]  # noise alone before the signal starts
    assert 20 * np.log10(effects.rms(speechlike) / effects.rms(residual)) == pytest.approx(6.0, abs=0.3)
    if shutil.which("sox"):
        phone = effects.apply_chain(noise.astype(np.float32) * 0.1, "telephone")
        power = np.abs(np.fft.rfft(phone)) ** 2
        f = np.fft.rfftfreq(len(phone), 1 / SAMPLE_RATE)
        inside, outside = power[(f > 500) & (f < 3000)].mean(), power[(f < 150) | (f > 4500)].mean()
        assert inside > 100 * outside
        assert np.array_equal(phone, effects.apply_chain(noise.astype(np.float32) * 0.1, "telephone"))


def test_speed_and_gain_change_length_and_level():
    tone = sounds.finish(sounds.tone(440.0, 1.0), 0.3)
    fast = effects.speed_and_gain(tone, 1.08, 0.0)
    assert len(fast) == pytest.approx(len(tone) / 1.08, abs=2)
    assert dominant_hz(fast) == pytest.approx(440 * 1.08, abs=3)
    quiet = effects.speed_and_gain(tone, 1.0, -6.0)
    assert 20 * np.log10(effects.rms(tone) / effects.rms(quiet)) == pytest.approx(6.0, abs=0.01)
    assert np.abs(effects.speed_and_gain(tone, 1.0, 20.0)).max() <= effects.PEAK_LIMIT + 1e-6


def test_tremor_wobbles_pitch_and_level_by_the_drawn_depths():
    tone = sounds.finish(sounds.tone(200.0, 2.0), 0.5)
    shaken = effects.tremor(tone, 5.0, 0.04, 0.4)
    frame = SAMPLE_RATE // 20  # 50 ms: four tremor cycles a second are resolved
    spans = range(SAMPLE_RATE // 5, len(tone) - frame - SAMPLE_RATE // 5, frame // 5)
    freqs = [dominant_hz(np.pad(shaken[i:i + frame], (0, 15 * frame))) for i in spans]  # zero-padded: 1.25 Hz bins
    assert max(freqs) / min(freqs) == pytest.approx(1.04 / 0.96, abs=0.03)
    level = np.array([effects.rms(shaken[i:i + frame // 2]) for i in spans])
    assert 1 - level.min() / level.max() == pytest.approx(0.4, abs=0.06)
    cycle = np.abs(np.fft.rfft(level - level.mean()))
    assert np.fft.rfftfreq(len(level), frame / 5 / SAMPLE_RATE)[np.argmax(cycle)] == pytest.approx(5.0, abs=0.4)
