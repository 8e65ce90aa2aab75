"""Latency-aware choices: time each layer's possible forms on the target, keep what is fastest.

``forms``: the forms a layer may take and their kernel error, from the mode spectra;
``isolate``: a one-layer model per form, at the layer's real input size;
``oracle``: interleaved timing on the target, cached per (op shape, target, onnxruntime);
``allocate``: the never-slower choice per layer and the rank allocation for a speed-up target.
"""
