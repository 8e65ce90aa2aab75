"""The ONNX Runtime training backend: runtime checks, training artifacts, the run object."""
