"""A compact Temporal Fusion Transformer for multi-horizon classification (Lim et al., 2021), in plain torch
so it exports to ONNX.

    variable selection (softmax weights over features, per bar) ─► LSTM encoder ─► gated skip + norm
    ─► interpretable multi-head self-attention (shared values, causal mask), queried at the last bar
    ─► gated skip + norm ─► GRN ─► one sigmoid head per horizon

Compactness choices (documented, not hidden): no static covariates and no decoder (we classify the last bar);
the variable-selection network embeds each feature linearly, so the weighted sum collapses to two matmuls
instead of one GRN per variable. The loss is BCE: a quantile/median loss on 0/1 labels collapses to a
constant, which is how the system we replace ended up emitting 0.0.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import nn

from macd_ml.models.learners.params import SequenceParams, TFTParams
from macd_ml.models.learners.sequence import SeededDropout, SequenceModel


class GLU(nn.Module):
    def __init__(self, d_in: int, d_out: int):
        super().__init__()
        self.lin = nn.Linear(d_in, 2 * d_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.lin(x).chunk(2, dim=-1)
        return a * torch.sigmoid(b)


class GRN(nn.Module):
    """Gated residual network: ELU MLP, GLU gate, residual, layer norm."""

    def __init__(self, d_in: int, d_hidden: int, d_out: int, dropout: float):
        super().__init__()
        self.skip = nn.Linear(d_in, d_out) if d_in != d_out else nn.Identity()
        self.fc1 = nn.Linear(d_in, d_hidden)
        self.fc2 = nn.Linear(d_hidden, d_hidden)
        self.drop = SeededDropout(dropout)
        self.gate = GLU(d_hidden, d_out)
        self.norm = nn.LayerNorm(d_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc2(nn.functional.elu(self.fc1(x)))
        return self.norm(self.skip(x) + self.gate(self.drop(h)))


class VariableSelection(nn.Module):
    """Per-bar softmax weights over the F inputs; each input embedded linearly to d_model."""

    def __init__(self, n_features: int, d_model: int, dropout: float):
        super().__init__()
        self.weights_grn = GRN(n_features, d_model, n_features, dropout)
        self.emb_w = nn.Parameter(torch.randn(n_features, d_model) / math.sqrt(n_features))
        self.emb_b = nn.Parameter(torch.zeros(n_features, d_model))
        self.post = GRN(d_model, d_model, d_model, dropout)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        w = torch.softmax(self.weights_grn(x), dim=-1)  # (B, L, F)
        # sum_f w_f * (x_f * W_f + b_f)  ==  (w * x) @ W + w @ B
        emb = (w * x) @ self.emb_w + w @ self.emb_b
        return self.post(emb), w


class InterpretableAttention(nn.Module):
    """Multi-head attention whose heads share one value projection and are averaged (TFT's interpretable MHA)."""

    def __init__(self, d_model: int, n_heads: int, dropout: float):
        super().__init__()
        self.n_heads = n_heads
        self.d_head = max(1, d_model // n_heads)
        self.q = nn.Linear(d_model, self.d_head * n_heads)
        self.k = nn.Linear(d_model, self.d_head * n_heads)
        self.v = nn.Linear(d_model, self.d_head)
        self.out = nn.Linear(self.d_head, d_model)
        self.drop = SeededDropout(dropout)

    def forward(self, query: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        """``query`` holds the last Lq bars of ``memory`` (B, L, d); each query bar attends to bars <= itself."""
        b, lq, _ = query.shape
        length = memory.shape[1]
        q = self.q(query).view(b, lq, self.n_heads, self.d_head).transpose(1, 2)  # (B, h, Lq, d)
        k = self.k(memory).view(b, length, self.n_heads, self.d_head).transpose(1, 2)  # (B, h, L, d)
        v = self.v(memory).unsqueeze(1)  # (B, 1, L, d): one value projection shared by every head
        scores = q @ k.transpose(-1, -2) / math.sqrt(self.d_head)  # (B, h, Lq, L)
        q_pos = torch.arange(length - lq, length, device=memory.device).unsqueeze(1)
        k_pos = torch.arange(length, device=memory.device).unsqueeze(0)
        scores = scores.masked_fill(k_pos > q_pos, float("-inf"))  # causal: never attend to a later bar
        attn = torch.softmax(scores, dim=-1)
        return self.drop(self.out((attn @ v).mean(dim=1)))  # heads averaged: interpretable weights


class TFTNet(nn.Module):
    def __init__(self, n_features: int, d_model: int, n_heads: int, n_horizons: int, dropout: float):
        super().__init__()
        self.vsn = VariableSelection(n_features, d_model, dropout)
        self.encoder = nn.LSTM(d_model, d_model, batch_first=True)
        self.enc_gate = GLU(d_model, d_model)
        self.enc_norm = nn.LayerNorm(d_model)
        self.attn = InterpretableAttention(d_model, n_heads, dropout)
        self.attn_gate = GLU(d_model, d_model)
        self.attn_norm = nn.LayerNorm(d_model)
        self.ff = GRN(d_model, d_model, d_model, dropout)
        self.out_gate = GLU(d_model, d_model)
        self.out_norm = nn.LayerNorm(d_model)
        self.heads = nn.Linear(d_model, n_horizons)  # one logit per horizon

    def encode_bars(self, x: torch.Tensor) -> torch.Tensor:  # (..., F) -> (..., d): each bar on its own
        """Variable selection, bar by bar (no bar reads another): the trainer computes it once per distinct bar
        of a batch and gathers the windows from it (``SequenceModel``), instead of once per window position."""
        emb, _ = self.vsn(x)
        return emb

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, L, F) -> (B, H) logits
        return self.from_bars(self.encode_bars(x))

    def from_bars(self, emb: torch.Tensor) -> torch.Tensor:  # (B, L, d) encoded bars -> (B, H) logits
        enc, _ = self.encoder(emb)
        enc = self.enc_norm(emb + self.enc_gate(enc))
        # We classify the last bar, so only its query is computed (the causal mask still applies to it;
        # computing every bar's query and reading the last row gives the same numbers, 48x slower).
        last = enc[:, -1:, :]
        att = self.attn_norm(last + self.attn_gate(self.attn(last, enc)))
        out = self.out_norm(last + self.out_gate(self.ff(att)))
        return self.heads(out[:, -1, :])


class TFTModel(SequenceModel):
    name: ClassVar[str] = "tft"
    Params: ClassVar[type[SequenceParams]] = TFTParams
    params: TFTParams

    def build_net(self) -> nn.Module:
        p = self.params
        return TFTNet(len(self.feature_names), p.hidden, p.heads, len(self.horizons), p.dropout)
