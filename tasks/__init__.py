"""Prefect tasks: thin wrappers over features/ and models/ that add caching, retries, artifact I/O and logging."""
