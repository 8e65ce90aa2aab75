"""The torch fine-tuning backend (``--backend torch``): the ONNX graph run by PyTorch.

Same loop, data, loss, checkpoints and history as the ONNX Runtime backend; the model is
``torch_graph.GraphModule`` (the graph itself, its trainable initializers as parameters),
on ``--device`` (cuda when available), under DistributedDataParallel when ``torchrun``
starts several processes. The optimizers compute what the ORT backend's generated ones
compute, so that from the same weights and batches both give the same losses:
AdamW as ONNX Runtime training 1.19.2 builds it (betas 0.9 / 0.999, eps 1e-6 added to
sqrt(v) before the bias correction, no weight decay) and plain SGD.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from wnc_onnx.errors import WncError, one_line
from wnc_onnx.finetune.common import MISFIT, finite
from wnc_onnx.finetune.distributed import Dist, join, sum_over

log = logging.getLogger(__name__)

INSTALL = "pip install torch==2.13.0 (the CPU build; a CUDA build for GPUs, see pytorch.org)"
BETAS, EPS = (0.9, 0.999), 1e-6


def require_torch() -> str:
    """torch's version; a WncError with the install command when it is missing."""
    try:
        import torch
    except ImportError:
        raise WncError("--backend torch needs PyTorch, which is not installed", INSTALL) from None
    return str(torch.__version__)


def pick_device(name: str | None, dist: Dist) -> Any:
    """``cpu``, ``cuda`` (this process's GPU under torchrun) or None: cuda when there is one."""
    import torch

    if name == "cuda" or (name is None and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise WncError("--device cuda: no CUDA GPU is visible to this torch build", "pass --device cpu")
        count = torch.cuda.device_count()
        if dist.active and dist.local_rank >= count:
            raise WncError(
                f"process {dist.local_rank} on this machine has no GPU of its own ({count} visible)",
                f"start at most {count} processes per machine (torchrun --nproc_per_node {count})",
            )
        return torch.device("cuda", dist.local_rank if dist.active else torch.cuda.current_device())
    return torch.device("cpu")


def _ort_adamw() -> Any:
    import torch

    class OrtAdamW(torch.optim.Optimizer):
        """AdamW as ONNX Runtime training's generated optimizer computes it (adam_mode 1)."""

        def __init__(self, params: Any, lr: float) -> None:
            super().__init__(params, {"lr": lr})

        @torch.no_grad()
        def step(self, closure: Any = None) -> None:  # type: ignore[override]
            b1, b2 = BETAS
            for group in self.param_groups:
                for p in group["params"]:
                    if p.grad is None:
                        continue
                    state = self.state[p]
                    if not state:
                        state["step"] = 0
                        state["m"], state["v"] = torch.zeros_like(p), torch.zeros_like(p)
                    state["step"] += 1
                    k, m, v = state["step"], state["m"], state["v"]
                    m.mul_(b1).add_(p.grad, alpha=1 - b1)
                    v.mul_(b2).addcmul_(p.grad, p.grad, value=1 - b2)
                    size = group["lr"] * math.sqrt(1 - b2**k) / (1 - b1**k)
                    p.addcdiv_(m, v.sqrt().add_(EPS), value=-size)

    return OrtAdamW


class _Weight:
    """A trained initializer as the PQ penalty reads and writes it: ``.data`` as numpy."""

    def __init__(self, param: Any) -> None:
        self.param = param

    @property
    def data(self) -> np.ndarray:
        return self.param.detach().cpu().numpy().copy()

    @data.setter
    def data(self, value: np.ndarray) -> None:
        import torch

        with torch.no_grad():
            self.param.copy_(torch.as_tensor(np.asarray(value), dtype=self.param.dtype))


class TorchRun:
    """The torch objects of one run, with the methods the loop calls (as the ORT backend's)."""

    suffix = ".pt"

    def __init__(
        self,
        model: onnx.ModelProto,
        trainable: list[str],
        cfg: Any,
        dist: Dist,
        state_file: Path | None,
    ) -> None:
        import torch

        from wnc_onnx.finetune.backends.torch.graph import GraphModule

        self.torch, self.dist, self.cfg = torch, dist, cfg
        self.device = pick_device(cfg.device, dist)
        if cfg.threads and self.device.type == "cpu":
            torch.set_num_threads(cfg.threads)
        self.joined = join(dist, self.device)
        self.net = GraphModule(model, trainable).to(self.device)
        self.named = self.net.named_onnx_parameters()
        if not self.named:
            raise WncError("the model has no trainable Conv / Gemm / MatMul weights", "fine-tune a float CNN or MLP")
        self.model: Any = self.net
        if dist.active:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            # the buffers are the graph's constants, equal everywhere: no syncing per forward pass
            newer = "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
            quiet: dict[str, Any] = {"forward_sync_buffers": False} if newer else {"broadcast_buffers": False}
            # gradients in DDP's buckets: one copy less per step
            self.model = DistributedDataParallel(self.net, device_ids=ids, gradient_as_bucket_view=True, **quiet)
        params = list(self.named.values())
        self.optimizer = (
            _ort_adamw()(params, cfg.lr) if cfg.optimizer == "adamw" else torch.optim.SGD(params, lr=cfg.lr)
        )
        if state_file is not None:
            self._load(state_file)
        self.params = {name: _Weight(p) for name, p in self.named.items()}
        log.info(
            "torch backend: %d trained tensors on %s%s",
            len(self.named),
            self.device,
            f", {dist.world} processes" if dist.active else "",
        )

    # -- state -----------------------------------------------------------------------
    def write_state(self, path: Path) -> None:
        state = {
            "weights": {name: p.detach().cpu() for name, p in self.named.items()},
            "optimizer": self.optimizer.state_dict(),
        }
        with open(path, "wb") as f:
            self.torch.save(state, f)

    def _load(self, path: Path) -> None:
        try:
            state = self.torch.load(path, map_location=self.device, weights_only=True)
            weights = state["weights"]
            if set(weights) != set(self.named):
                raise ValueError("its weights are not this model's")
            with self.torch.no_grad():
                for name, p in self.named.items():
                    p.copy_(weights[name])
            self.optimizer.load_state_dict(state["optimizer"])
        except (OSError, KeyError, ValueError, RuntimeError) as exc:
            raise WncError(
                f"cannot resume from {path}: {one_line(exc, 160)}", "delete the checkpoint folder and start fresh"
            ) from None

    def values(self) -> dict[str, np.ndarray]:
        return {name: p.detach().cpu().numpy() for name, p in self.named.items()}

    # -- the loop --------------------------------------------------------------------
    def set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def train_mode(self) -> None:
        self.model.train()

    @contextlib.contextmanager
    def epoch_context(self) -> Iterator[None]:
        """Processes with fewer batches than others take part in the others' gradient averaging (DDP join)."""
        if self.dist.active:
            with self.model.join():
                yield
        else:
            yield

    def _loss(self, out: Any, y: Any) -> Any:
        f = self.torch.nn.functional
        return f.cross_entropy(out, y) if self.cfg.loss == "cross_entropy" else f.mse_loss(out, y)

    def _tensors(self, x: np.ndarray, y: np.ndarray) -> tuple[Any, Any]:
        t = self.torch
        return t.from_numpy(np.ascontiguousarray(x)).to(self.device), t.from_numpy(np.ascontiguousarray(y)).to(
            self.device
        )

    @contextlib.contextmanager
    def _running(self, what: str) -> Iterator[None]:
        """An op form the backend lacks, or a run-time failure (data that do not fit), as one WncError."""
        try:
            yield
        except NotImplementedError as exc:
            raise WncError(f"the torch backend cannot run this model: {one_line(exc)}", "use --backend ort") from None
        except RuntimeError as exc:
            raise WncError(f"{what}: {one_line(exc, 240)}", MISFIT) from None

    def step(self, x: np.ndarray, y: np.ndarray, where: str) -> float:
        xt, yt = self._tensors(x, y)
        with self._running(f"training step failed at {where}"):
            loss = self._loss(self.model(xt), yt)
            loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return finite(float(loss.item()), where)

    def evaluate(self, source: Any, loss: str) -> tuple[float, float | None]:
        self.net.eval()
        total, correct, seen = 0.0, 0, 0
        with self.torch.no_grad():
            for xb, yb in source.epoch(0):
                xt, yt = self._tensors(xb, yb)
                with self._running(f"evaluating {source.label} failed"):
                    out = self.net(xt)
                total += float(self._loss(out, yt).item()) * len(xb)
                if loss == "cross_entropy":
                    correct += int((out.argmax(1) == yt).sum().item())
                seen += len(xb)
        self.model.train()
        total, correct_f, seen_f = sum_over(self.dist, [total, correct, seen])
        return total / seen_f, (correct_f / seen_f if loss == "cross_entropy" else None)

    def export(self, model: onnx.ModelProto | None, work: Path, output_name: str) -> onnx.ModelProto:
        """``model`` (the graph trained) with the trained values in its initializers."""
        from wnc_onnx.finetune.backends.torch.graph import write_back

        assert model is not None, "the torch backend writes into the graph it trained"
        tuned = onnx.ModelProto()
        tuned.CopyFrom(model)
        write_back(tuned, self.values())
        return tuned
