"""Pure data code: ingest + validation, synthetic markets, indicators, features, labels, folds.

Nothing here imports prefect, tasks/ or flows/ (DESIGN.md §2).
"""

# Bumped whenever a change alters what features/labels/folds compute; part of every fingerprint and cache key.
CODE_VERSION = "features-2"
