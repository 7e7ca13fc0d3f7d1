"""Multi-horizon LSTM: a shared LSTM encoder over the last ``window`` bars, one sigmoid head per horizon."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from macd_ml.models.learners.sequence import SeededDropout, SequenceModel, SequenceParams


class LSTMNet(nn.Module):
    def __init__(self, n_features: int, hidden: int, n_horizons: int, dropout: float):
        super().__init__()
        self.inp = nn.Linear(n_features, hidden)
        self.encoder = nn.LSTM(hidden, hidden, batch_first=True)
        self.drop = SeededDropout(dropout)
        self.heads = nn.Linear(hidden, n_horizons)  # one logit per horizon

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, L, F) -> (B, H) logits
        out, _ = self.encoder(torch.relu(self.inp(x)))
        return self.heads(self.drop(out[:, -1, :]))


class LSTMModel(SequenceModel):
    name: ClassVar[str] = "lstm"
    Params: ClassVar[type[SequenceParams]] = SequenceParams

    def build_net(self) -> nn.Module:
        p = self.params
        return LSTMNet(len(self.feature_names), p.hidden, len(self.horizons), p.dropout)
