"""Fine-tuning backends: ONNX Runtime training (``ort``) and PyTorch (``torch``)."""
