"""Audio loading and the 128-bin Whisper log-mel front end, in torch.

`load_audio` turns a file, bytes, a data URL or an array into 16 kHz mono float32; `log_mel_spectrogram` turns a
batch of such waveforms into the features that `WhisperFeatureExtractor(feature_size=128)` computes, plus the mask
of valid frames. Audio token counts live in `qwen2audio.model.audio_encoder` (`audio_token_count`).
"""

from __future__ import annotations

import base64
import binascii
import io
import math
import os
import shutil
import subprocess
import tempfile
from functools import lru_cache
from pathlib import Path

import numpy as np
import soundfile
import soxr
import torch
import torch.nn.functional as F

# hard-coded audio hyperparameters (Whisper / Qwen2-Audio)
SAMPLE_RATE = 16000
N_FFT = 400
HOP_LENGTH = 160
CHUNK_LENGTH = 30
N_MELS = 128
N_SAMPLES = CHUNK_LENGTH * SAMPLE_RATE  # 480000 samples in a 30-second chunk
N_FRAMES = N_SAMPLES // HOP_LENGTH  # 3000 frames in a mel spectrogram input
N_FREQS = N_FFT // 2 + 1  # 201 one-sided FFT bins
MEL_F_MAX = SAMPLE_RATE / 2  # 8000.0 Hz, the top of the mel filterbank
LOG_FLOOR = 1e-10  # mel power is clamped here before log10
DYNAMIC_RANGE = 8.0  # log10 units kept below each example's max (80 dB)

MAX_CHANNELS = 16  # a 2-D array's smaller dim is its channel axis when it is at most this
FFMPEG_TIMEOUT_S = 120  # ffmpeg decodes an hour of audio in seconds; past this something is wrong
# soxr 'VHQ' keeps 28 bits of precision (float32 holds 24) and resamples 30 s of 44.1 kHz in ~6 ms,
# so there is no reason to take 'HQ' (20 bits)
RESAMPLE_QUALITY = "VHQ"


class AudioError(ValueError):
    """Bad audio input; the message says what was wrong and what to do."""


# ---------------------------------------------------------------------------------------------------------------
# Loading


def load_audio(source, sampling_rate: int | None = None) -> np.ndarray:
    """Load `source` as a 16 kHz mono float32 waveform [n].

    source: a path (str/PathLike); raw file bytes (bytes/bytearray/memoryview); a `data:audio/...;base64,...`
    URL; or samples as a numpy array / torch tensor. Encoded sources (wav/flac/ogg/mp3 through soundfile,
    anything else, e.g. webm/opus/m4a/mp4, through ffmpeg) carry their own rate and `sampling_rate` is ignored;
    arrays need it. Arrays may be [n], [n, channels] or [channels, n]: when 2-D, the smaller dim is the channel
    axis if it is at most MAX_CHANNELS (16). Integer PCM (int16, int32, uint8, ...) is scaled to [-1, 1].
    Channels are averaged, and other rates are resampled with soxr.
    """
    if isinstance(source, (np.ndarray, torch.Tensor)):
        if sampling_rate is None:
            raise AudioError("an audio array needs its sampling_rate: call load_audio(array, sampling_rate=...)")
        name, rate = "audio array", sampling_rate
        audio = _array_to_mono(source, name)
    elif isinstance(source, (bytes, bytearray, memoryview)):
        name = "audio bytes"
        audio, rate = _decode(_nonempty(bytes(source), name), name)
    elif isinstance(source, str) and source.startswith("data:"):
        name = "data URL"
        audio, rate = _decode(_nonempty(_parse_data_url(source), name), name)
    elif isinstance(source, (str, os.PathLike)):
        path = Path(source)
        name = f"audio file '{path}'"
        _check_file(path, str(source))
        audio, rate = _decode(path, name)
    else:
        raise AudioError(
            f"cannot load audio from a {type(source).__name__}: "
            "pass a path, file bytes, a data:audio/...;base64 URL, or a numpy array / torch tensor with sampling_rate"
        )
    return _to_16k(audio, rate, name)


def _check_file(path: Path, raw: str) -> None:
    if not path.exists():
        hint = " (URLs are not fetched: download the file first)" if raw.startswith(("http://", "https://")) else ""
        raise AudioError(f"audio file '{path}' not found{hint}: check the path")
    if not path.is_file():
        raise AudioError(f"audio path '{path}' is not a file: pass an audio file")
    if path.stat().st_size == 0:
        raise AudioError(f"audio file '{path}' is empty (0 bytes): re-record or re-export it")


def _nonempty(data: bytes, name: str) -> bytes:
    if not data:
        raise AudioError(f"{name} are empty (0 bytes): pass the contents of an audio file")
    return data


def _parse_data_url(url: str) -> bytes:
    header, comma, payload = url.partition(",")
    if not comma or not header.endswith(";base64"):
        raise AudioError("a data URL must look like 'data:audio/wav;base64,<base64 data>'")
    try:
        return base64.b64decode("".join(payload.split()), validate=True)
    except binascii.Error as e:
        raise AudioError(f"data URL holds invalid base64 ({e}): encode the file with base64") from None


def _decode(source: Path | bytes, name: str) -> tuple[np.ndarray, int]:
    """(mono float32 samples, rate) via soundfile, or via ffmpeg for what soundfile cannot read."""
    try:
        with soundfile.SoundFile(str(source) if isinstance(source, Path) else io.BytesIO(source)) as f:
            return f.read(dtype="float32", always_2d=True).mean(axis=1), f.samplerate
    except RuntimeError as e:  # soundfile.LibsndfileError is one
        soundfile_error = getattr(e, "error_string", None) or str(e)
    if shutil.which("ffmpeg") is None:
        raise AudioError(
            f"could not decode {name}: soundfile cannot read it ({soundfile_error}) and ffmpeg is not installed; "
            "install ffmpeg (apt-get install ffmpeg / brew install ffmpeg / conda install ffmpeg) to read "
            "webm/opus/m4a/mp4, or convert the audio to wav/flac"
        )
    if isinstance(source, Path):
        return _ffmpeg_decode(source, name, soundfile_error), SAMPLE_RATE
    # a file, not a pipe: mp4/m4a may keep their index at the end, which ffmpeg cannot seek to in a pipe
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "audio"
        path.write_bytes(source)
        return _ffmpeg_decode(path, name, soundfile_error), SAMPLE_RATE


def _ffmpeg_decode(path: Path, name: str, soundfile_error: str) -> np.ndarray:
    cmd = ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-i", str(path),
           "-f", "f32le", "-ac", "1", "-ar", str(SAMPLE_RATE), "-"]  # fmt: skip
    try:
        out = subprocess.run(cmd, capture_output=True, timeout=FFMPEG_TIMEOUT_S, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise AudioError(f"ffmpeg took over {FFMPEG_TIMEOUT_S} s to decode {name}: check the file") from None
    if out.returncode != 0:
        lines = out.stderr.decode(errors="replace").replace(f"{path}: ", "").strip().splitlines()
        raise AudioError(
            f"could not decode {name}: unknown format or damaged file (soundfile: {soundfile_error}; "
            f"ffmpeg: {lines[-1] if lines else f'exit code {out.returncode}'}); pass wav/flac/ogg/mp3, or "
            "anything ffmpeg can read"
        )
    return np.frombuffer(out.stdout, dtype=np.float32)


def _array_to_mono(array: np.ndarray | torch.Tensor, name: str) -> np.ndarray:
    """[n], [n, channels] or [channels, n] samples, float or integer PCM -> float32 [n] in [-1, 1]."""
    if isinstance(array, torch.Tensor):
        array = array.detach().cpu()
        array = (array.float() if array.dtype == torch.bfloat16 else array).numpy()
    if array.ndim == 2:
        channel_axis = int(np.argmin(array.shape))
        if array.shape[channel_axis] > MAX_CHANNELS:
            raise AudioError(
                f"{name} of shape {array.shape} has no channel axis of at most {MAX_CHANNELS}: "
                "pass [n], [n, channels] or [channels, n] samples"
            )
    elif array.ndim != 1:
        raise AudioError(f"{name} has shape {array.shape}: pass [n], [n, channels] or [channels, n] samples")
    if np.issubdtype(array.dtype, np.integer):  # PCM: full scale is 2**(bits-1); unsigned is offset by it
        if array.dtype.itemsize > 4:
            raise AudioError(f"{name} has dtype {array.dtype}: cast integer PCM to its width (int16, int32) first")
        full_scale = 2.0 ** (8 * array.dtype.itemsize - 1)
        offset = full_scale if np.issubdtype(array.dtype, np.unsignedinteger) else 0.0
        array = (array.astype(np.float64) - offset) / full_scale
    elif not np.issubdtype(array.dtype, np.floating):
        raise AudioError(f"{name} has dtype {array.dtype}: pass float samples or integer PCM")
    if array.ndim == 2:
        array = array.mean(axis=channel_axis)
    return array.astype(np.float32)


def _to_16k(audio: np.ndarray, rate, name: str) -> np.ndarray:
    """Check the samples and the rate, and resample to SAMPLE_RATE."""
    if isinstance(rate, bool) or not isinstance(rate, (int, float, np.number)) or not rate > 0:
        raise AudioError(f"sampling_rate must be a positive number of Hz, got {rate!r} for {name}")
    if audio.size == 0:
        raise AudioError(f"{name} holds 0 samples after decoding: pass audio that is not empty")
    if not np.isfinite(audio).all():
        raise AudioError(f"{name} contains NaN or infinite samples: clean or re-export the audio")
    if rate != SAMPLE_RATE:
        audio = soxr.resample(audio, rate, SAMPLE_RATE, quality=RESAMPLE_QUALITY)
        if audio.size == 0:
            raise AudioError(f"{name} is too short to resample from {rate} Hz: pass a longer clip")
    return np.ascontiguousarray(audio, dtype=np.float32)


# ---------------------------------------------------------------------------------------------------------------
# Mel filterbank (as transformers' `mel_filter_bank(..., norm="slaney", mel_scale="slaney")`, in float64)

MIN_LOG_HZ = 1000.0  # the Slaney scale is linear below 1 kHz, logarithmic above
MIN_LOG_MEL = 15.0  # = 3 * MIN_LOG_HZ / 200
MEL_LOGSTEP = 27.0 / np.log(6.4)  # mels per natural-log unit of Hz above 1 kHz


def _hz_to_mel(hz: np.ndarray) -> np.ndarray:
    hz = np.asarray(hz, dtype=np.float64)
    log_part = MIN_LOG_MEL + np.log(np.maximum(hz, MIN_LOG_HZ) / MIN_LOG_HZ) * MEL_LOGSTEP
    return np.where(hz >= MIN_LOG_HZ, log_part, 3.0 * hz / 200.0)


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    mel = np.asarray(mel, dtype=np.float64)
    log_part = MIN_LOG_HZ * np.exp((np.log(6.4) / 27.0) * (np.maximum(mel, MIN_LOG_MEL) - MIN_LOG_MEL))
    return np.where(mel >= MIN_LOG_MEL, log_part, 200.0 * mel / 3.0)


@lru_cache(maxsize=None)
def mel_filters(n_mels: int = N_MELS, device: torch.device | str | None = None) -> torch.Tensor:
    """Slaney-scale, Slaney-normalised triangular filters [n_mels, N_FREQS] over 0..MEL_F_MAX Hz, float32."""
    fft_hz = np.linspace(0, SAMPLE_RATE // 2, N_FREQS)
    edge_hz = _mel_to_hz(np.linspace(_hz_to_mel(0.0), _hz_to_mel(MEL_F_MAX), n_mels + 2))  # [n_mels + 2]
    slopes = edge_hz[None, :] - fft_hz[:, None]  # [N_FREQS, n_mels + 2]
    rising = -slopes[:, :-2] / np.diff(edge_hz)[:-1]
    falling = slopes[:, 2:] / np.diff(edge_hz)[1:]
    weights = np.maximum(0.0, np.minimum(rising, falling))  # [N_FREQS, n_mels]
    weights *= 2.0 / (edge_hz[2:] - edge_hz[:-2])  # Slaney norm: equal area per filter
    device = torch.device(device or "cpu")
    return torch.from_numpy(weights.T.astype(np.float32)).to(device)


# ---------------------------------------------------------------------------------------------------------------
# Log-mel spectrogram


def log_mel_spectrogram(
    audio, n_mels: int = N_MELS, device=None, padding: int = N_SAMPLES, truncate: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Whisper log-mel features of one 16 kHz waveform [n] (numpy or torch) or a list of them.

    Each waveform is zero-padded to `padding` samples (30 s); a longer one is cut to it when `truncate`
    (as the reference does), else AudioError. Returns features [B, n_mels, padding // HOP_LENGTH] float32 and
    frame_mask [B, padding // HOP_LENGTH] long with ceil(samples / HOP_LENGTH) leading ones.
    """
    waves = list(audio) if isinstance(audio, (list, tuple)) else [audio]
    if not waves or padding <= N_FFT // 2:
        raise AudioError(f"need at least one waveform and padding > {N_FFT // 2} samples")
    if device is None:
        device = waves[0].device if isinstance(waves[0], torch.Tensor) else "cpu"
    device = torch.device(device)
    waves = _check_waveforms(waves, padding, truncate, device)
    n_frames = padding // HOP_LENGTH

    power = _power_spectrogram(waves, padding)  # [B, N_FREQS, <= n_frames]
    mel = mel_filters(n_mels, device) @ power  # [B, n_mels, <= n_frames]
    log_spec = mel.clamp(min=LOG_FLOOR).log10()
    log_spec = F.pad(log_spec, (0, n_frames - log_spec.shape[-1]), value=math.log10(LOG_FLOOR))  # skipped: power 0
    log_spec = torch.maximum(log_spec, log_spec.amax(dim=(1, 2), keepdim=True) - DYNAMIC_RANGE)
    features = (log_spec + 4.0) / 4.0

    lengths = torch.tensor([w.numel() for w in waves], device=device)
    frame_mask = (torch.arange(n_frames, device=device) < (lengths[:, None] + HOP_LENGTH - 1) // HOP_LENGTH).long()
    return features, frame_mask


def _check_waveforms(waves: list, padding: int, truncate: bool, device: torch.device) -> list[torch.Tensor]:
    """1-D float32 tensors on `device`, cut to `padding` samples (float32 first, as the reference rounds them)."""
    waves = [torch.as_tensor(np.ascontiguousarray(w) if isinstance(w, np.ndarray) else w) for w in waves]
    waves = [w.to(device, torch.float32) for w in waves]
    for i, w in enumerate(waves):
        if w.ndim != 1 or w.numel() == 0:
            raise AudioError(
                f"waveform {i} has shape {tuple(w.shape)}: pass non-empty 1-D 16 kHz mono waveforms "
                "(load_audio gives them), or a list of them for a batch"
            )
        if w.numel() > padding and not truncate:
            raise AudioError(
                f"waveform {i} is {w.numel() / SAMPLE_RATE:.1f} s, over the {padding / SAMPLE_RATE:g} s window: "
                f"split it into windows of at most {padding / SAMPLE_RATE:g} s, or pass truncate=True to cut it"
            )
    return [w[:padding] for w in waves]


def _power_spectrogram(waves: list[torch.Tensor], padding: int) -> torch.Tensor:
    """|STFT|^2 [B, N_FREQS, F <= padding // HOP_LENGTH] of the waveforms zero-padded to `padding` samples
    (periodic Hann window, centred frames with reflect padding).

    Frames that start half a window past the longest waveform see only zero padding: their FFTs are skipped
    (the caller fills in power 0). The STFT runs on a prefix ending in N_FFT // 2 + 1 zeros, whose right
    reflection is zeros, as is the whole window's (its last N_FFT // 2 + 1 samples are zero too); so the prefix's
    frames equal the whole window's.
    """
    width = min(max(w.numel() for w in waves) + N_FFT // 2 + 1, padding)
    device = waves[0].device
    # float64: float32 FFTs drift by up to ~1e-4 near the -8 floor (cancellation); MPS has no float64
    x = torch.zeros(len(waves), width, dtype=torch.float32 if device.type == "mps" else torch.float64, device=device)
    for i, w in enumerate(waves):
        x[i, : w.numel()] = w
    window = torch.hann_window(N_FFT, dtype=x.dtype, device=x.device)
    stft = torch.stft(x, N_FFT, HOP_LENGTH, window=window, center=True, pad_mode="reflect", return_complex=True)
    stft = stft[..., : padding // HOP_LENGTH]  # the whole window has padding // HOP_LENGTH + 1 frames: drop the last
    return (stft.real**2 + stft.imag**2).float()  # no cancellation past the FFT: float32 is exact enough
