"""How good a run is: the metrics.json schema, AUC and its standard error, the gated backtest, drift (PSI), the
report and its plots. Imports nothing else of models/ (docs/architecture.md)."""
