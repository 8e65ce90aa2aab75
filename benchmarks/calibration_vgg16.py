"""What --calibration costs on a VGG-16-sized model: time and peak memory for 512 images of 224x224.

    python benchmarks/calibration_vgg16.py [--images 512] [--threads 2]

Writes ``zoo.vgg16()`` (138M weights) to an ONNX file and the images (random crops of
scikit-learn's two sample photos, as PNG) to a temporary folder, then compresses the file in
a fresh child process twice: without data and with ``--calibration FOLDER`` (ImageNet mean /
std), and prints each run's wall time and peak resident memory (the child's ``ru_maxrss``:
reading the model and compressing it), and the difference. The
calibrated run includes reading and decoding the images, running the original model on
them in onnxruntime, the patch statistics, the data-aware fits and the report's output
error on 64 of the images.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def child(path: str, folder: str | None, threads: int) -> None:
    import logging

    import wnc_onnx

    logging.basicConfig(level=logging.INFO, format="  %(message)s", stream=sys.stderr)
    logging.getLogger("wnc_onnx.rewrite.passes.lowrank").setLevel(logging.WARNING)
    t0 = time.perf_counter()
    _, rep = wnc_onnx.compress(path, calibration=folder, calibration_mean=MEAN, calibration_std=STD, threads=threads)
    seconds = time.perf_counter() - t0
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    fitted = sum(1 for r in rep.layers if r.data_error is not None)
    print(
        json.dumps(
            {
                "seconds": seconds,
                "peak_mb": peak_mb,
                "fitted": fitted,
                "notes": rep.warnings,
                "calibration": rep.extras.get("calibration"),
            }
        )
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=512)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--child", nargs=2, default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child is not None:
        child(a.child[0], a.child[1] or None, a.threads)
        return 0
    import onnx
    from calibration_corpus import photo_crops
    from PIL import Image

    from wnc_onnx import zoo

    with tempfile.TemporaryDirectory() as tmp, tempfile.TemporaryDirectory() as where:
        path = str(Path(where) / "vgg16.onnx")
        onnx.save(zoo.vgg16(), path)
        crops = photo_crops(a.images, (3, 224, 224), seed=0)
        for i, c in enumerate(crops):
            Image.fromarray((c.transpose(1, 2, 0) * 255).astype("uint8")).save(Path(tmp) / f"{i:04d}.png")
        results = {}
        for label, folder in (("data-free", ""), (f"--calibration ({a.images} images)", tmp)):
            out = subprocess.run(
                [sys.executable, __file__, "--child", path, folder, "--threads", str(a.threads)],
                capture_output=True,
                text=True,
                check=True,
            )
            sys.stderr.write(out.stderr[-3000:])
            results[label] = json.loads(out.stdout.strip().splitlines()[-1])
    print("| run | seconds | peak memory (MB) | layers fitted to data |")
    print("|---|---|---|---|")
    for label, r in results.items():
        print(f"| {label} | {r['seconds']:.0f} | {r['peak_mb']:.0f} | {r['fitted']} |")
    (free, fit) = results.values()
    print(
        f"\nadded by calibration: {fit['seconds'] - free['seconds']:.0f} s, {fit['peak_mb'] - free['peak_mb']:.0f} MB"
    )
    for note in fit["notes"]:
        print("note:", note)
    print("on the data:", fit["calibration"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
