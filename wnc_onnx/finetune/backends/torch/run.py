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
from wnc_onnx.finetune.common import MISFIT, Scores, finite, write_back
from wnc_onnx.finetune.distributed import Dist, join, sum_over
from wnc_onnx.finetune.sources import ModelSpec

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
        spec: ModelSpec,
        objective: Any = None,
    ) -> None:
        import torch

        from wnc_onnx.finetune.backends.torch import losses
        from wnc_onnx.finetune.backends.torch.graph import GraphModule

        self.losses, self.spec, self.objective = losses, spec, objective
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

    def _inputs(self, feeds: dict[str, np.ndarray]) -> list[Any]:
        return [self.torch.from_numpy(np.ascontiguousarray(feeds[p.name])).to(self.device) for p in self.spec.inputs]

    def _tensor(self, a: np.ndarray) -> Any:
        return self.torch.from_numpy(np.ascontiguousarray(a)).to(self.device)

    def _want(self) -> list[str]:
        want = [self.spec.train_tensor] if self.spec.loss is not None else []
        return list(dict.fromkeys(want + (self.objective.tensors if self.objective is not None else [])))

    def _loss(self, out: dict[str, Any], y: Any, targets: dict[str, np.ndarray] | None) -> Any:
        """The label loss, the distillation objective, or ``alpha`` of the one and the rest of the other."""
        label = self.losses.label_loss(self.cfg.loss, out[self.spec.train_tensor], y) if y is not None else None
        if targets is None or self.objective is None:
            return label
        teacher = {name: self._tensor(v) for name, v in targets.items()}
        distill = self.losses.distill_loss(self.objective, out, teacher)
        if label is None:
            return distill
        alpha = float(self.objective.alpha or 0.0)
        return alpha * label + (1 - alpha) * distill

    @contextlib.contextmanager
    def _running(self, what: str) -> Iterator[None]:
        """An op form the backend lacks, or a run-time failure (data that do not fit), as one WncError."""
        try:
            yield
        except NotImplementedError as exc:
            raise WncError(f"the torch backend cannot run this model: {one_line(exc)}", "use --backend ort") from None
        except RuntimeError as exc:
            raise WncError(f"{what}: {one_line(exc, 240)}", MISFIT) from None

    def step(
        self, feeds: dict[str, np.ndarray], y: np.ndarray | None, targets: dict[str, np.ndarray] | None, where: str
    ) -> float:
        with self._running(f"training step failed at {where}"):
            out = self.model(*self._inputs(feeds), want=self._want())
            loss = self._loss(out, self._tensor(y) if y is not None else None, targets)
            loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return finite(float(loss.item()), where)

    def evaluate(self, source: Any, teacher: Any = None) -> Scores:
        """The training loss on ``source``, the accuracy where its batches hold class labels, and
        the top-1 agreement with the teacher where there is one."""
        self.net.eval()
        total, correct, seen, agree, positions = 0.0, 0, 0, 0, 0
        term = self.objective.agreement_term() if self.objective is not None else None
        scored = source.spec.train_tensor if source.spec.loss == "cross_entropy" else None
        want = list(dict.fromkeys(self._want() + ([scored] if scored else [])))
        with self.torch.no_grad():
            for feeds, y in source.epoch(0):
                targets = teacher(feeds) if teacher is not None else None
                with self._running(f"evaluating {source.label} failed"):
                    out = self.net(*self._inputs(feeds), want=want)
                    yt = self._tensor(y) if y is not None else None
                    loss = self._loss(out, yt if self.spec.loss is not None else None, targets)
                n = len(next(iter(feeds.values())))
                total += float(loss.item()) * n
                if scored is not None and yt is not None:
                    correct += int((out[scored].argmax(1) == yt).sum().item())
                if term is not None and targets is not None:
                    a, b = self.losses.agreement(term.axis, out[term.tensor], self._tensor(targets[term.tensor]))
                    agree, positions = agree + a, positions + b
                seen += n
        self.model.train()
        total, correct_f, seen_f, agree_f, pos_f = sum_over(self.dist, [total, correct, seen, agree, positions])
        return Scores(total / seen_f, correct_f / seen_f if scored else None, agree_f / pos_f if pos_f else None)

    def export(self, model: onnx.ModelProto | None, work: Path, output_name: str) -> onnx.ModelProto:
        """``model`` (the graph trained) with the trained values in its initializers."""
        assert model is not None, "the torch backend writes into the graph it trained"
        tuned = onnx.ModelProto()
        tuned.CopyFrom(model)
        write_back(tuned, self.values())
        return tuned
