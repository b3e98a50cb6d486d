"""qwen2audio.audio: log-mel features against transformers' WhisperFeatureExtractor, and load_audio on real files."""

from __future__ import annotations

import base64
import shutil
import subprocess

import numpy as np
import pytest
import soundfile
import torch

from conftest import dominant_hz
from qwen2audio import audio
from qwen2audio.audio import (
    N_FRAMES,
    N_MELS,
    N_SAMPLES,
    SAMPLE_RATE,
    AudioError,
    load_audio,
    log_mel_spectrogram,
    mel_filters,
)

pytest.importorskip("transformers")
from transformers import WhisperFeatureExtractor  # noqa: E402
from transformers.audio_utils import mel_filter_bank  # noqa: E402

FEATURE_TOL = 1e-4  # max abs difference to the reference features
needs_ffmpeg = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg missing: apt-get install ffmpeg")


@pytest.fixture(scope="module")
def extractor():
    return WhisperFeatureExtractor(feature_size=N_MELS)


def reference(extractor, clips):
    out = extractor(clips, sampling_rate=SAMPLE_RATE, return_tensors="np", padding="max_length",
                    return_attention_mask=True)  # fmt: skip
    return out["input_features"], out["attention_mask"]


def sine(seconds: float, rate: int = SAMPLE_RATE, hz: float = 440.0, amplitude: float = 0.5) -> np.ndarray:
    return (amplitude * np.sin(2 * np.pi * hz * np.arange(round(seconds * rate)) / rate)).astype(np.float32)


def noisy_sine(seconds: float, seed: int = 0) -> np.ndarray:
    noise = 0.01 * np.random.default_rng(seed).standard_normal(round(seconds * SAMPLE_RATE))
    return (sine(seconds) + noise).astype(np.float32)


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    n = min(len(a), len(b))
    return float(np.corrcoef(a[:n], b[:n])[0, 1])


# ---------------------------------------------------------------------------------------------------------------
# Mel filterbank and features


@pytest.mark.parametrize("n_mels", [80, 128])
def test_mel_filters_match_transformers(n_mels):
    ref = mel_filter_bank(num_frequency_bins=201, num_mel_filters=n_mels, min_frequency=0.0, max_frequency=8000.0,
                          sampling_rate=SAMPLE_RATE, norm="slaney", mel_scale="slaney")  # fmt: skip
    ours = mel_filters(n_mels)
    assert ours.shape == (n_mels, 201) and ours.dtype == torch.float32
    assert np.abs(ours.numpy().astype(np.float64) - ref.T).max() <= 1e-7
    assert mel_filters(n_mels) is ours  # cached


CLIPS = {
    "silence": lambda: np.zeros(SAMPLE_RATE, np.float32),
    "white noise": lambda: (0.3 * np.random.default_rng(1).standard_normal(5 * SAMPLE_RATE)).astype(np.float32),
    "0.3 s sine + noise": lambda: noisy_sine(0.3),
    "30 s": lambda: noisy_sine(30.0, seed=2),
    "45 s (truncated)": lambda: noisy_sine(45.0, seed=3),
}


@pytest.mark.parametrize("name", CLIPS)
def test_features_match_whisper_feature_extractor(extractor, name):
    clip = CLIPS[name]()
    features, frame_mask = log_mel_spectrogram(clip)
    ref_features, ref_mask = reference(extractor, clip)
    assert features.shape == (1, N_MELS, N_FRAMES) and features.dtype == torch.float32
    assert frame_mask.shape == (1, N_FRAMES) and frame_mask.dtype == torch.long
    assert np.abs(features.numpy() - ref_features).max() <= FEATURE_TOL
    np.testing.assert_array_equal(frame_mask.numpy(), ref_mask)


def test_batch_of_different_lengths(extractor):
    # 479_599 / 479_600 / 479_800 sit at the edge where the skipped all-zero frames start to reach the window's end
    lengths = [4_800, 112_000, 479_599, 479_600, 479_800, N_SAMPLES, 720_000]
    clips = [noisy_sine(n / SAMPLE_RATE, seed=i) for i, n in enumerate(lengths)]
    features, frame_mask = log_mel_spectrogram(clips)
    ref_features, ref_mask = reference(extractor, clips)
    assert features.shape == (len(clips), N_MELS, N_FRAMES)
    assert np.abs(features.numpy() - ref_features).max() <= FEATURE_TOL
    np.testing.assert_array_equal(frame_mask.numpy(), ref_mask)
    assert frame_mask.sum(1).tolist() == [30, 700, 2998, 2998, 2999, 3000, 3000]  # ceil(samples / 160)
    # each example is the same alone as in the batch: the -8 floor is per example
    alone, _ = log_mel_spectrogram(clips[1])
    torch.testing.assert_close(alone[0], features[1], rtol=0, atol=1e-6)


@pytest.mark.parametrize("n", [4_600, 192_000, 479_799, 479_800])
def test_float64_stft_matches_numpy_reference_closely(extractor, n):
    """The STFT runs in float64: we sit within float32 rounding of transformers' float64 numpy path, while its
    default (float32 torch) path drifts by up to ~7e-5 near the -8 floor. The lengths probe the end of the
    skipped all-zero frames (4_600 + 200 is a multiple of the hop; 479_800 is the first with no frame skipped)."""
    clip = noisy_sine(n / SAMPLE_RATE, seed=4)
    clip[-1] = 1.0
    padded = np.pad(clip, (0, N_SAMPLES - len(clip)))[None]
    ref = extractor._np_extract_fbank_features(padded, "cpu")
    features, _ = log_mel_spectrogram(clip)
    assert np.abs(features.numpy() - ref).max() <= 1e-6


def test_torch_input_and_short_padding():
    clip = noisy_sine(2.0)
    from_numpy, _ = log_mel_spectrogram(clip)
    from_torch, _ = log_mel_spectrogram(torch.from_numpy(clip))
    torch.testing.assert_close(from_numpy, from_torch, rtol=0, atol=0)
    negative_stride = np.flip(clip[::-1].copy())  # equal to clip, with a negative stride
    assert negative_stride.strides[0] < 0
    torch.testing.assert_close(from_numpy, log_mel_spectrogram(negative_stride)[0], rtol=0, atol=0)
    features, frame_mask = log_mel_spectrogram([clip], padding=5 * SAMPLE_RATE)
    assert features.shape == (1, N_MELS, 500) and frame_mask.sum() == 200


def test_long_audio_without_truncation_is_refused():
    with pytest.raises(AudioError, match="split"):
        log_mel_spectrogram(np.zeros(N_SAMPLES + 1, np.float32), truncate=False)
    log_mel_spectrogram(np.zeros(N_SAMPLES, np.float32), truncate=False)  # exactly 30 s is fine


@pytest.mark.parametrize("bad", [np.zeros((2, 1000), np.float32), np.zeros(0, np.float32), []])
def test_features_of_bad_waveforms(bad):
    with pytest.raises(AudioError, match="waveform"):
        log_mel_spectrogram(bad)


# ---------------------------------------------------------------------------------------------------------------
# load_audio: formats and sources

DURATION = 1.5


def ffmpeg_encode(src, dst, *codec_args):
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-i", str(src), *codec_args, str(dst)],
                   check=True, timeout=60)  # fmt: skip


def check_sine(x: np.ndarray, duration: float = DURATION, tol_s: float = 0.01):
    assert x.dtype == np.float32 and x.ndim == 1
    assert abs(len(x) - duration * SAMPLE_RATE) <= tol_s * SAMPLE_RATE
    assert abs(dominant_hz(x) - 440.0) < 2.0


@pytest.mark.parametrize(
    "suffix, rate, subtype",
    [("wav", SAMPLE_RATE, "PCM_16"), ("flac", 44100, "PCM_24"), ("ogg", 48000, "VORBIS"),
     ("mp3", 44100, "MPEG_LAYER_III")],
)
def test_soundfile_formats(tmp_path, suffix, rate, subtype):
    path = tmp_path / f"sine.{suffix}"
    soundfile.write(path, sine(DURATION, rate), rate, subtype=subtype)
    x = load_audio(path)
    lossy = suffix in ("ogg", "mp3")
    check_sine(x, tol_s=0.06 if lossy else 0.0)  # mp3 frames pad the end
    if not lossy:
        assert correlation(x, sine(DURATION)) > 0.999
    np.testing.assert_array_equal(load_audio(str(path)), x)  # str or Path
    np.testing.assert_array_equal(load_audio(path.read_bytes()), x)


@needs_ffmpeg
@pytest.mark.parametrize("suffix, codec", [("webm", ["-c:a", "libopus"]), ("m4a", ["-c:a", "aac"])])
def test_ffmpeg_formats_from_path_and_bytes(tmp_path, suffix, codec):
    wav = tmp_path / "sine.wav"
    soundfile.write(wav, sine(DURATION, 48000), 48000)
    path = tmp_path / f"sine.{suffix}"
    ffmpeg_encode(wav, path, *codec)
    x = load_audio(path)
    check_sine(x, tol_s=0.05)
    np.testing.assert_array_equal(load_audio(path.read_bytes()), x)  # m4a keeps its index at the end: not a pipe


def test_bytes_and_data_url(tmp_path):
    path = tmp_path / "sine.wav"
    soundfile.write(path, sine(DURATION, 22050), 22050)
    data = path.read_bytes()
    x = load_audio(path)
    check_sine(x, tol_s=0.0)
    for source in (data, bytearray(data), memoryview(data), "data:audio/wav;base64," + base64.b64encode(data).decode()):
        np.testing.assert_array_equal(load_audio(source), x)


@pytest.mark.parametrize("rate", [8000, SAMPLE_RATE, 44100, 192000])
def test_array_resampling_keeps_the_sine(rate):
    x = load_audio(sine(DURATION, rate), sampling_rate=rate)
    check_sine(x, tol_s=0.0)
    assert correlation(x, sine(DURATION)) > 0.99


def test_array_from_torch_and_file_at_8khz(tmp_path):
    x = load_audio(torch.from_numpy(sine(DURATION, 8000)), sampling_rate=8000)
    assert correlation(x, sine(DURATION)) > 0.99
    path = tmp_path / "8k.wav"
    soundfile.write(path, sine(DURATION, 8000), 8000)
    assert correlation(load_audio(path), sine(DURATION)) > 0.99


def test_integer_pcm_is_scaled():
    np.testing.assert_allclose(
        load_audio(np.array([32767, -32768, 0, 16384], np.int16), sampling_rate=SAMPLE_RATE),
        [32767 / 32768, -1, 0, 0.5],
    )
    np.testing.assert_allclose(load_audio(np.array([-(2**31), 2**30], np.int32), sampling_rate=SAMPLE_RATE), [-1, 0.5])
    np.testing.assert_allclose(load_audio(np.array([0, 128, 255], np.uint8), sampling_rate=SAMPLE_RATE),
                               [-1, 0, 127 / 128])


def test_stereo_and_8_channels(tmp_path):
    s = sine(DURATION)
    stereo = np.stack([s, 0.5 * s], axis=1)  # [n, 2]
    np.testing.assert_allclose(load_audio(stereo, sampling_rate=SAMPLE_RATE), 0.75 * s, atol=1e-7)
    np.testing.assert_allclose(load_audio(stereo.T, sampling_rate=SAMPLE_RATE), 0.75 * s, atol=1e-7)  # [2, n]
    eight = np.zeros((len(s), 8), np.float32)
    eight[:, 0], eight[:, 5] = s, 0.5  # a sine in one channel, DC in another
    np.testing.assert_allclose(load_audio(eight.T, sampling_rate=SAMPLE_RATE), s / 8 + 0.5 / 8, atol=1e-7)
    path = tmp_path / "8ch.wav"
    soundfile.write(path, eight, SAMPLE_RATE, subtype="FLOAT")
    np.testing.assert_allclose(load_audio(path), s / 8 + 0.5 / 8, atol=1e-7)


def test_8_channels_at_192khz():
    s = sine(DURATION, 192000)
    x = load_audio(np.tile(s[:, None], (1, 8)), sampling_rate=192000)
    check_sine(x, tol_s=0.0)
    assert correlation(x, sine(DURATION)) > 0.99
    assert abs(np.abs(x[1000:-1000]).max() - 0.5) < 0.005


# ---------------------------------------------------------------------------------------------------------------
# load_audio: bad input


def test_missing_file(tmp_path):
    with pytest.raises(AudioError, match="not found") as e:
        load_audio(tmp_path / "nope.wav")
    assert "nope.wav" in str(e.value)


def test_empty_file_and_bytes(tmp_path):
    path = tmp_path / "empty.wav"
    path.write_bytes(b"")
    with pytest.raises(AudioError, match="empty") as e:
        load_audio(path)
    assert "empty.wav" in str(e.value)
    with pytest.raises(AudioError, match="empty"):
        load_audio(b"")


def test_garbage(tmp_path):
    path = tmp_path / "garbage.wav"
    path.write_bytes(b"this is not audio" * 100)
    with pytest.raises(AudioError, match="could not decode") as e:
        load_audio(path)
    assert "garbage.wav" in str(e.value)
    with pytest.raises(AudioError, match="could not decode"):
        load_audio(bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8)))


def test_garbage_without_ffmpeg(monkeypatch):
    monkeypatch.setattr(audio.shutil, "which", lambda name: None)
    with pytest.raises(AudioError, match="ffmpeg is not installed") as e:
        load_audio(b"this is not audio" * 100)
    assert "install" in str(e.value)


def test_ffmpeg_timeout(monkeypatch):
    def hang(cmd, **kwargs):
        raise subprocess.TimeoutExpired(cmd, kwargs["timeout"])

    monkeypatch.setattr(audio.shutil, "which", lambda name: "/usr/bin/ffmpeg")
    monkeypatch.setattr(audio.subprocess, "run", hang)
    with pytest.raises(AudioError, match="took over"):
        load_audio(b"this is not audio" * 100)


def test_zero_samples(tmp_path):
    path = tmp_path / "zero.wav"
    soundfile.write(path, np.zeros(0, np.float32), SAMPLE_RATE)
    assert path.stat().st_size > 0  # a header and no samples
    with pytest.raises(AudioError, match="0 samples") as e:
        load_audio(path)
    assert "zero.wav" in str(e.value)
    with pytest.raises(AudioError, match="0 samples"):
        load_audio(np.zeros(0, np.float32), sampling_rate=SAMPLE_RATE)


@pytest.mark.parametrize("bad_value", [np.nan, np.inf])
def test_nan_and_inf_samples(tmp_path, bad_value):
    x = sine(0.5)
    x[100] = bad_value
    with pytest.raises(AudioError, match="NaN"):
        load_audio(x, sampling_rate=SAMPLE_RATE)
    path = tmp_path / "nan.wav"
    soundfile.write(path, x, SAMPLE_RATE, subtype="FLOAT")
    with pytest.raises(AudioError, match="NaN"):
        load_audio(path)


def test_array_needs_a_positive_sampling_rate():
    with pytest.raises(AudioError, match="sampling_rate"):
        load_audio(sine(0.5))
    for rate in (0, -SAMPLE_RATE, float("nan")):
        with pytest.raises(AudioError, match="positive"):
            load_audio(sine(0.5), sampling_rate=rate)


@pytest.mark.parametrize(
    "source, keyword",
    [
        ("data:audio/wav;base64,@@@not base64@@@", "base64"),
        ("data:audio/wav,plain", "base64"),
        (12345, "cannot load"),
        (np.zeros((2, 3, 100), np.float32), "shape"),
        (np.zeros((100, 100), np.float32), "channel"),
        (np.array(["a", "b"]), "dtype"),
        (np.array([1000, -1000]), "int16"),  # int64: too wide to be PCM
    ],
)
def test_other_bad_sources(source, keyword):
    with pytest.raises(AudioError, match=keyword):
        load_audio(source, sampling_rate=SAMPLE_RATE)
