"""The base learners (LightGBM, XGBoost, cross-asset LightGBM, LSTM, TFT, the fixed reference), their parameters,
their registry and the fold training they share (docs/architecture.md)."""
