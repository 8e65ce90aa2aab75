"""benchmarks/on_arm.py: the compressed model runs on onnxruntime's ARM kernels (aarch64
under qemu-user) with outputs matching x86, and no emulated time is reported as speed.

The emulated run changes the system on first use (apt-get installs qemu-user-static and adds
the arm64 architecture; about 150 MB cached), so it runs only when asked:

    WNC_TEST_ARM=1 python -m pytest tests/test_on_arm.py

Otherwise it is skipped with that line as the reason; the bad-input checks always run."""

import json
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import onnx
import pytest

from wnc_onnx import compress
from wnc_onnx.zoo import demo_cnn

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "on_arm.py"


def run(*args, timeout=900):
    return subprocess.run(
        [sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True, timeout=timeout
    )


def test_missing_model_is_one_line_exit_2(tmp_path):
    proc = run(tmp_path / "none.onnx")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "model not found" in proc.stderr
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    proc = run(bad)
    assert proc.returncode == 2 and "cannot read" in proc.stderr and "Traceback" not in proc.stderr


def _emulation_possible() -> str | None:
    if os.environ.get("WNC_TEST_ARM") != "1":
        return "changes the system (apt-get, dpkg architectures): runs only with WNC_TEST_ARM=1"
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
        return "emulated ARM runs are set up on x86_64 Linux"
    if shutil.which("qemu-aarch64-static") is None and (os.geteuid() != 0 or shutil.which("apt-get") is None):
        return "qemu-aarch64-static is not installed and cannot be (needs root and apt-get)"
    if os.geteuid() != 0 and not any((Path.home() / ".cache" / "wnc-onnx" / "arm").glob("ort-*/.ready")):
        return "the arm64 Python is set up with apt-get, which needs root"
    return None


@pytest.mark.skipif(_emulation_possible() is not None, reason=str(_emulation_possible()))
def test_compressed_model_runs_on_arm_kernels_and_matches_x86(tmp_path):
    model = demo_cnn()
    a, b = tmp_path / "demo.onnx", tmp_path / "demo.small.onnx"
    onnx.save(model, a)
    onnx.save(compress(model)[0], b)
    proc = run(a, b, "--tolerance", "1e-4")
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    assert "aarch64 emulated (qemu-aarch64)" in out and "onnxruntime 1.26.0" in out
    rows = [ln for ln in out.splitlines() if ln.startswith("| demo")]
    assert len(rows) == 2 and all(ln.endswith("| yes |") for ln in rows)
    assert "timings: not reported" in out and " ms" not in out  # emulated time is never shown


@pytest.mark.skipif(_emulation_possible() is not None, reason=str(_emulation_possible()))
def test_int8_models_run_on_arm_integer_kernels_and_match_x86_within_int8_rounding(tmp_path):
    """int8 alone and low rank + int8 (calibrated on x86) on ARM's integer kernels: outputs
    within a few quantization steps of x86's, and farther than float rounding would allow only
    by that (the float check stays at its own tolerance)."""
    import numpy as np

    model = demo_cnn()
    data = [{"image": np.random.default_rng(i).standard_normal((4, 3, 32, 32)).astype(np.float32)} for i in range(4)]
    a, b = tmp_path / "demo.int8.onnx", tmp_path / "demo.small.int8.onnx"
    onnx.save(compress(model, int8=True, lowrank=False, calibration=data)[0], a)
    onnx.save(compress(model, int8=True, calibration=data)[0], b)
    proc = run(a, b, "--tolerance", "1e-4", "--int8-tolerance", "0.02", "--json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = json.loads(proc.stdout)["outputs"]
    assert len(rows) == 2 and all(r["int8"] and r["passed"] and r["error"] <= 0.02 for r in rows)
