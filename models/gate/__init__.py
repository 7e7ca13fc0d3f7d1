"""The trade gate (docs/trade-gate.md): which MACD trades the bot takes, and how big.

- ``secondary``: the meta-label model on signal rows (trade outcome labels from ``features/trades.py``);
- ``sizing``: a position size from its probability;
- ``choice``: none / direction / meta / meta-sized, chosen on out-of-fold trades only;
- ``graph``: the shipped model as ``onnx/gate.onnx``.
"""
