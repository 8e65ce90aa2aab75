"""Read-only analysis: graph facts, the layers the rules find, rank policy, the numeric core
(``numeric``: no onnx import) and calibration statistics."""
