"""Release: the ONNX graph exported from a trained model, and ONNX Runtime sessions of it (no torch needed)."""
