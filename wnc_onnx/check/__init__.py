"""Checking a rewrite: outputs compared in onnxruntime (``verify``) and latency choices measured on
the target (``latency``)."""
