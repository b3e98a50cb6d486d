"""Feature extraction speed: our `log_mel_spectrogram` vs transformers' `WhisperFeatureExtractor(feature_size=128)`.

    .venv/bin/python bench/bench_features.py [--repeats 21] [--device cpu]

Each case runs once to warm up, then `--repeats` times, alternating ours and theirs; the median wall time of each
is printed with the ratio (reference time / our time = "x faster") and the max abs difference of the features.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from transformers import WhisperFeatureExtractor

from qwen2audio.audio import SAMPLE_RATE, log_mel_spectrogram
from qwen2audio.machine import median_times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=21)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    cases = {
        "8 clips x 10 s": [(0.1 * rng.standard_normal(10 * SAMPLE_RATE)).astype(np.float32) for _ in range(8)],
        "1 clip x 30 s": [(0.1 * rng.standard_normal(30 * SAMPLE_RATE)).astype(np.float32)],
        "1 clip x 5 s": [(0.1 * rng.standard_normal(5 * SAMPLE_RATE)).astype(np.float32)],
    }
    fe = WhisperFeatureExtractor(feature_size=128)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}")
    print(f"{'case':<16} {'ours ms':>9} {'transformers ms':>16} {'speed-up':>9} {'max abs diff':>13}")
    for name, clips in cases.items():

        def ours():
            features, _ = log_mel_spectrogram(clips, device=args.device)
            return features.cpu().numpy()

        def theirs():
            out = fe(clips, sampling_rate=SAMPLE_RATE, return_tensors="np", padding="max_length",
                     return_attention_mask=True)  # fmt: skip
            return out["input_features"]

        t_ours, t_theirs = median_times([ours, theirs], args.repeats)
        diff = np.abs(ours() - theirs()).max()
        print(f"{name:<16} {t_ours * 1e3:>9.1f} {t_theirs * 1e3:>16.1f} {t_theirs / t_ours:>8.1f}x {diff:>13.2e}")


if __name__ == "__main__":
    main()
