"""End-to-end wall time of the command line, from process start to the output written.

    python benchmarks/bench_cli_wall.py [--rounds 5] [--load 12] [--json out.json]

Runs, in interleaved rounds (so machine drift hits every configuration alike):

- ``vgg16 convs``: ``wnc-onnx vgg16.onnx out.onnx --op-types Conv`` on a VGG-16-shaped model
  (13 convs + 3 FC, 553 MB, planted Tucker structure: see bench_vgg16.py); target <= 5 s;
- ``vgg16 full``: the same with the FC layers too; target <= 20 s.

``--load N`` then starts N busy processes (pure Python loops, stopped at the end) and
times the PP-OCRv4 recognizer from the test corpus under that load, with the default
thread choice against ``--threads`` set to every core (what BLAS did by itself before),
plus the same pair without load. Medians, min-max spread and the load average before
and after are printed; nothing here is a unit test.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def timed(args: list[str], env: dict[str, str] | None = None) -> float:
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "wnc_onnx", *args, "-q", "--no-verify"],  # the compression alone, as before 0.2
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
    )
    seconds = time.perf_counter() - start
    if proc.returncode:
        sys.exit(f"wnc-onnx {' '.join(args)} failed:\n{proc.stderr}")
    return seconds


def summary(name: str, values: list[float], target: float | None = None) -> dict[str, float | str]:
    med = statistics.median(values)
    line = f"{name:34s} median {med:6.2f}s  min {min(values):6.2f}s  max {max(values):6.2f}s  (n={len(values)})"
    if target is not None:
        line += f"  target <= {target:g}s: {'met' if med <= target else 'NOT met'}"
    print(line)
    return {"median": med, "min": min(values), "max": max(values), "n": len(values)}


def rounds(configs: dict[str, tuple[list[str], dict[str, str]]], n: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {name: [] for name in configs}
    for r in range(n):
        for name, (args, env) in configs.items():
            times[name].append(timed(args, env))
            print(f"  round {r + 1}/{n} {name}: {times[name][-1]:.2f}s", file=sys.stderr)
    return times


def busy(n: int, seconds: float) -> list[subprocess.Popen[bytes]]:
    code = f"import time\nend = time.time() + {seconds}\nwhile time.time() < end: pass\n"
    return [subprocess.Popen([sys.executable, "-c", code]) for _ in range(n)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--load", type=int, default=0, help="also time the OCR recognizer beside N busy processes")
    ap.add_argument("--skip-vgg", action="store_true", help="only the load measurement")
    ap.add_argument("--json", help="write the figures as JSON")
    a = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    import numpy
    import onnx
    import onnxruntime

    from wnc_onnx import __version__, zoo

    print(
        f"wnc-onnx {__version__}, Python {sys.version.split()[0]}, numpy {numpy.__version__}, onnx {onnx.__version__}, "
        f"onnxruntime {onnxruntime.__version__}, {os.cpu_count()} CPUs; load average before: {os.getloadavg()}"
    )
    figures: dict[str, object] = {"load_before": os.getloadavg(), "cpus": os.cpu_count()}
    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "out.onnx")
        if not a.skip_vgg:
            model = Path(tmp) / "vgg16.onnx"
            onnx.save(zoo.vgg16(), model)
            configs: dict[str, tuple[list[str], dict[str, str]]] = {
                "vgg16 convs": ([str(model), out, "--op-types", "Conv"], {}),
                "vgg16 full": ([str(model), out], {}),
            }
            times = rounds(configs, a.rounds)
            targets = {"vgg16 convs": 5.0, "vgg16 full": 20.0}
            for name, values in times.items():
                figures[name] = summary(name, values, targets.get(name))
        if a.load:
            from tests.corpus import fetch

            rec = str(fetch("ppocr_rec"))
            cores = str(os.cpu_count() or 1)
            configs = {
                "ocr rec, default threads": ([rec, out], {}),
                f"ocr rec, --threads {cores}": ([rec, out, "--threads", cores], {}),
            }
            for name, values in rounds(configs, max(2, a.rounds // 2)).items():
                figures[f"{name}, idle"] = summary(f"{name}, idle", values)
            procs = busy(a.load, 3600)
            try:
                time.sleep(5)  # let the load average and the scheduler see them
                print(f"with {a.load} busy processes, load average {os.getloadavg()}")
                for name, values in rounds(configs, max(2, a.rounds // 2)).items():
                    figures[f"{name}, load {a.load}"] = summary(f"{name}, load {a.load}", values)
            finally:
                for p in procs:
                    p.kill()
    figures["load_after"] = os.getloadavg()
    print(f"load average after: {os.getloadavg()}")
    if a.json:
        Path(a.json).write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
