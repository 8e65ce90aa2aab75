"""The PyTorch backend: the ONNX graph run by torch (``graph``, ``ops``) and the run object (``run``).

Nothing here imports torch at import time except ``graph`` and ``ops``, which ``run`` loads when a
run starts."""
