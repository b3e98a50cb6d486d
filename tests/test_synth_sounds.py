"""Sound events (synth/sounds.py): each label checked by measuring the rendered audio."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import count_onsets, dominant_hz
from qwen2audio.audio import SAMPLE_RATE
from qwen2audio.synth import sounds


def _spectral_slope(x: np.ndarray) -> float:
    """Slope of log power against log frequency between 50 Hz and 4 kHz (0 white, -1 pink, -2 brown)."""
    power = np.abs(np.fft.rfft(x)) ** 2
    f = np.fft.rfftfreq(len(x), 1 / SAMPLE_RATE)
    band = (f > 50) & (f < 4000)
    return float(np.polyfit(np.log(f[band]), np.log(power[band] + 1e-20), 1)[0])


@pytest.mark.parametrize("label", ["sine tone", "square wave", "sawtooth wave"])
def test_periodic_waves_have_the_drawn_fundamental(label):
    for seed in range(5):
        audio, params = sounds.render_sound(label, np.random.default_rng(seed))
        assert MIN <= len(audio) / SAMPLE_RATE <= MAX
        assert abs(dominant_hz(audio) - params["freq"]) < 2.0, (label, params)
        assert np.abs(audio).max() == pytest.approx(sounds.PEAK, rel=1e-3)


MIN, MAX = sounds.MIN_SECONDS, sounds.MAX_SECONDS + 1e-3


@pytest.mark.parametrize("label,slope", [("white noise", 0.0), ("pink noise", -1.0), ("brown noise", -2.0)])
def test_noise_colour_by_spectral_slope(label, slope):
    audio, _ = sounds.render_sound(label, np.random.default_rng(3))
    assert _spectral_slope(audio) == pytest.approx(slope, abs=0.2)


@pytest.mark.parametrize("label,rising", [("rising sweep", True), ("falling sweep", False)])
def test_sweep_direction(label, rising):
    for seed in range(4):
        audio, _ = sounds.render_sound(label, np.random.default_rng(seed))
        quarter = len(audio) // 4
        start, end = dominant_hz(audio[:quarter]), dominant_hz(audio[-quarter:])
        assert (end > 1.5 * start) if rising else (start > 1.5 * end)


def test_click_train_and_beep_sequence_counts():
    for seed in range(6):
        rng = np.random.default_rng(seed)
        audio, params = sounds.render_sound("click train", rng)
        assert count_onsets(audio) == params["count"]
        audio, params = sounds.render_sound("beep sequence", rng)
        assert count_onsets(audio) == params["count"]
        assert abs(dominant_hz(audio) - params["freq"]) < 10


def test_chord_has_three_partials_and_siren_wobbles():
    audio, params = sounds.render_sound("chord", np.random.default_rng(0))
    spectrum = np.abs(np.fft.rfft(audio))
    f = np.fft.rfftfreq(len(audio), 1 / SAMPLE_RATE)
    for freq in params["freqs"]:
        near = (f > freq - 3) & (f < freq + 3)
        assert spectrum[near].max() > 0.2 * spectrum.max()
    audio, p = sounds.render_sound("siren", np.random.default_rng(1))
    frame = SAMPLE_RATE // 20
    tracked = [dominant_hz(audio[i:i + frame]) for i in range(0, len(audio) - frame, frame)]
    assert min(tracked) < p["centre"] - 0.5 * p["depth"] and max(tracked) > p["centre"] + 0.5 * p["depth"]
