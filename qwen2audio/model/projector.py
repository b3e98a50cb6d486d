"""The projector from audio-encoder frames to the language model's embedding space: one Linear, no activation."""

from torch import nn


class Projector(nn.Module):
    def __init__(self, audio_dim: int, text_dim: int):
        super().__init__()
        self.linear = nn.Linear(audio_dim, text_dim)

    def forward(self, x):
        return self.linear(x)
