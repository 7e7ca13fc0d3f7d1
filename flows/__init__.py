"""Prefect flows composing tasks/, the pipeline config, and the ``macd-ml`` CLI."""
