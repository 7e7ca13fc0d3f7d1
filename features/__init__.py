"""Pure data code: ingest + validation, synthetic markets, indicators, features, labels, folds.

Nothing here imports prefect, tasks/ or flows/ (docs/architecture.md).
"""
