"""Fine-tuning a compressed model with ONNX Runtime's training API (paper section 3.3).

Needs the training build of ONNX Runtime in its own environment (``pip install -e
'.[train]'`` in a fresh venv); see ``runtime.require_training``.
"""

from wnc_onnx.finetune.data import ArrayData, load_npz
from wnc_onnx.finetune.trainer import FinetuneConfig, History, finetune

__all__ = ["ArrayData", "FinetuneConfig", "History", "finetune", "load_npz"]
