"""From a trained run to something a bot may use: ONNX export with parity, scoring through onnxruntime, the
health checks and champion / challenger promotion (docs/architecture.md)."""
