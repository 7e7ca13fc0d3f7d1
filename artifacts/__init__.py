"""The pure artifact layer every other layer may import: atomic writes, sha256, manifests, verified reads,
signatures, run folders and promotion. No Prefect here (tasks/ adds retries policy and logging on top)."""
