"""What ships on top of the learners: the logistic building blocks, calibration, the predictor document and the
regularised meta-stacking chosen on out-of-fold rows (docs/architecture.md)."""
