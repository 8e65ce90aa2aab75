"""Fine-tuning throughput of the two backends as ``wnc-onnx finetune`` runs them, side by side.

    .venv-train/bin/python benchmarks/bench_finetune_backends.py            # about 4 minutes on 2 cores
    .venv-train/bin/python benchmarks/bench_finetune_backends.py --nets digits,mnist --rounds 3

For each network (the digits CNN at 8x8 and the MNIST CNN at 28x28 of ``examples/digits_cnn.py``,
briefly trained so that VBMF finds structure, and ``zoo.vgg16`` at 224x224, random weights),
compressed with the defaults, it times training steps (forward, backward, AdamW update) of:

- ``ort``: the ORT backend's run object at 1 and 2 threads;
- ``torch``: the torch backend's run object (``TorchRun``, the same graph and AdamW formula) at 1
  and 2 threads;
- ``proc1``: the torch backend in one process of one thread started by ``torchrun``, and ``ddp2``:
  in two such processes (gloo, DistributedDataParallel), every process with the same batch, so
  a step of ``ddp2`` trains twice the images. Both are fresh processes every round, timed the
  same way (rank 0, after warm-up steps; start-up not counted): ``ddp2 / proc1`` is the
  scaling, free of anything the benchmark's own process does differently.

Rounds are interleaved (the order flips every round). Tables give median
images/s with the range over rounds, and ratios of medians. Needs the training environment.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "examples"))

SETTLE_S = 0.3


def _run_object(model: onnx.ModelProto, backend: str, threads: int, work: Path) -> Any:
    from wnc_onnx.finetune.distributed import from_env
    from wnc_onnx.finetune.trainer import FinetuneConfig, _start

    cfg = FinetuneConfig(backend=backend, threads=threads, device="cpu" if backend == "torch" else None)
    run = _start(model, [], cfg, from_env(), None, work, model.graph.output[0].name)
    run.set_lr(1e-4)
    run.train_mode()
    return run


def _rate(run: Any, batches: list[tuple[np.ndarray, np.ndarray]], steps: int, warmup: int) -> float:
    for i in range(warmup):
        run.step(*batches[i % len(batches)], "warm-up")
    t0 = time.perf_counter()
    for i in range(steps):
        run.step(*batches[i % len(batches)], "timed")
    return steps * len(batches[0][0]) / (time.perf_counter() - t0)


def worker(model_path: str, data_path: str, steps: int, warmup: int, out: str) -> int:
    """One torchrun process: time ``steps`` steps; rank 0 writes the images/s of all processes."""
    import torch

    from wnc_onnx.finetune.distributed import any_of, from_env, leave

    torch.set_num_threads(1)
    dist = from_env()
    data = np.load(data_path)
    batches = [(data["x"][i], data["y"][i]) for i in range(len(data["x"]))]
    with tempfile.TemporaryDirectory() as tmp:
        run = _run_object(onnx.load(model_path), "torch", 1, Path(tmp))
        any_of(dist, False)  # every process is ready
        rate = _rate(run, batches, steps, warmup)
    if dist.main:
        Path(out).write_text(json.dumps({"rate": rate * dist.world}))
    leave()
    return 0


def _procs_rate(procs: int, model_path: Path, data_path: Path, steps: int, warmup: int) -> float:
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    assert torchrun, "torchrun is not in this environment"
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "rate.json"
        cmd = [torchrun, "--standalone", "--nproc_per_node", str(procs), __file__, "--worker", str(model_path),
               str(data_path), str(steps), str(warmup), str(out)]  # fmt: skip
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
        subprocess.run(cmd, check=True, env=env, capture_output=True, timeout=1800)
        return float(json.loads(out.read_text())["rate"])


def _nets(names: list[str]) -> dict[str, tuple[onnx.ModelProto, tuple[int, ...], int]]:
    """name -> (compressed model, sample shape, classes)."""
    import digits_cnn
    import torch

    import wnc_onnx
    from wnc_onnx.zoo import vgg16

    out = {}
    for name in names:
        if name in ("digits", "mnist"):
            x, y, _, _ = digits_cnn.load(name, seed=0)
            torch.manual_seed(0)
            net = digits_cnn.train(digits_cnn.build(name), x, y, epochs=2, seed=0)
            model = digits_cnn.to_onnx(net, int(digits_cnn.ARCH[name]["side"]))
            out[name] = (wnc_onnx.compress(model)[0], tuple(x.shape[1:]), 10)
        elif name == "vgg16":
            model = vgg16()
            model.ir_version = min(model.ir_version, 10)
            out[name] = (wnc_onnx.compress(model)[0], (3, 224, 224), 1000)
        else:
            raise SystemExit(f"unknown net {name!r}: digits, mnist, vgg16")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nets", default="digits,mnist,vgg16")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--worker", nargs=5, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        m, d, steps, warmup, out = a.worker
        return worker(m, d, int(steps), int(warmup), out)
    import onnxruntime
    import torch

    torch.set_num_interop_threads(1)
    load = os.getloadavg()[0]
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load {load:.2f} at start")
    print(f"torch {torch.__version__}, onnxruntime {onnxruntime.__version__}\n")
    settings = {"digits": (64, 60, 5), "mnist": (64, 30, 3), "vgg16": (4, 3, 1)}  # batch, timed steps, warm-up
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for name, (model, shape, classes) in _nets(a.nets.split(",")).items():
            batch, steps, warmup = settings[name]
            rng = np.random.default_rng(0)
            batches = [
                (rng.standard_normal((batch, *shape)).astype(np.float32), rng.integers(0, classes, batch))
                for _ in range(4)
            ]
            model_path, data_path = work / f"{name}.onnx", work / f"{name}.npz"
            onnx.save(model, model_path)
            np.savez(data_path, x=np.stack([b[0] for b in batches]), y=np.stack([b[1] for b in batches]))
            sides: dict[str, Any] = {}
            for backend in ("ort", "torch"):
                for threads in (1, 2):
                    sides[f"{backend} {threads}t"] = _run_object(model, backend, threads, work / f"{name}-{backend}")
            rates: dict[str, list[float]] = {k: [] for k in [*sides, "proc1 (1t)", "ddp2 (2x1t)"]}
            for r in range(a.rounds):
                order = list(rates) if r % 2 == 0 else list(rates)[::-1]
                for side in order:
                    time.sleep(SETTLE_S)
                    if side.startswith(("proc1", "ddp2")):
                        procs = 2 if side.startswith("ddp2") else 1
                        rates[side].append(_procs_rate(procs, model_path, data_path, steps, warmup))
                    else:
                        torch.set_num_threads(int(side.split()[1][0]))
                        rates[side].append(_rate(sides[side], batches, steps, warmup if r == 0 else 1))
                print(f"{name} round {r + 1}/{a.rounds} done (load {os.getloadavg()[0]:.2f})", flush=True)
            med = {k: statistics.median(v) for k, v in rates.items()}
            rows.append((name, batch, rates, med))
            del sides
    print(f"\nload at the end {os.getloadavg()[0]:.2f}\n")
    print("| network | batch | " + " | ".join(rows[0][2]) + " | torch/ort (best of each) | ddp2 / proc1 |")
    print("|---|---|" + "---|" * (len(rows[0][2]) + 2))
    for name, batch, rates, med in rows:
        cells = [f"{med[k]:.1f} ({min(v):.1f}-{max(v):.1f})" for k, v in rates.items()]
        best_t = max(med["torch 1t"], med["torch 2t"])
        best_o = max(med["ort 1t"], med["ort 2t"])
        print(f"| {name} | {batch} | " + " | ".join(cells) + f" | {best_t / best_o:.2f} | "
              f"{med['ddp2 (2x1t)'] / med['proc1 (1t)']:.2f} |")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
