"""Pure model code (no prefect): base learners, meta-learner, ONNX export."""
