"""Deployment helpers: serving the retrain flow with a nightly schedule."""
