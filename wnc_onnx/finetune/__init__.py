"""Fine-tuning a compressed model with ONNX Runtime's training API (paper section 3.3).

Needs the training build of ONNX Runtime in its own environment (``pip install -e
'.[train]'`` in a fresh venv); see ``runtime.require_training``.
"""

from wnc_onnx.data.arrays import ArrayData, load_npz
from wnc_onnx.data.images import ImageFolder, load_image_folder
from wnc_onnx.finetune.history import EpochRecord, History
from wnc_onnx.finetune.trainer import FinetuneConfig, FinetuneInterrupted, finetune

__all__ = [
    "ArrayData",
    "EpochRecord",
    "FinetuneConfig",
    "FinetuneInterrupted",
    "History",
    "ImageFolder",
    "finetune",
    "load_image_folder",
    "load_npz",
]
