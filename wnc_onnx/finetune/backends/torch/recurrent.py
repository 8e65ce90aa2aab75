"""The ONNX recurrent operators (RNN, GRU, LSTM) in PyTorch, for the torch fine-tuning backend.

Semantics of the ONNX specification (opsets 7 to 22): every direction (forward, reverse,
bidirectional), both layouts (opset 14's ``layout``), per-sample ``sequence_lens`` (steps past a
sample's length leave its state alone and write zeros to ``Y``), initial states, LSTM peepholes
and ``input_forget``, GRU ``linear_before_reset``, ``clip``, and every activation with its
``activation_alpha`` / ``activation_beta`` (taken in order by the activations that use them,
else their defaults). The steps run as a Python loop over time: differentiable, and as fast as
the sequence is short (recognizers read tens of steps).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

Attrs = dict[str, Any]

# name -> (function of (x, alpha, beta), default alpha, default beta); None: the parameter is not used
_ACTIVATIONS: dict[str, tuple[Callable[[Any, float, float], Any], float | None, float | None]] = {
    "relu": (lambda x, a, b: torch.relu(x), None, None),
    "tanh": (lambda x, a, b: torch.tanh(x), None, None),
    "sigmoid": (lambda x, a, b: torch.sigmoid(x), None, None),
    "affine": (lambda x, a, b: a * x + b, 1.0, 0.0),
    "leakyrelu": (lambda x, a, b: F.leaky_relu(x, a), 0.01, None),
    "thresholdedrelu": (lambda x, a, b: torch.where(x > a, x, torch.zeros_like(x)), 1.0, None),
    "scaledtanh": (lambda x, a, b: a * torch.tanh(b * x), 1.0, 1.0),
    "hardsigmoid": (lambda x, a, b: torch.clamp(a * x + b, 0.0, 1.0), 0.2, 0.5),
    "elu": (lambda x, a, b: F.elu(x, a), 1.0, None),
    "softsign": (lambda x, a, b: x / (1 + torch.abs(x)), None, None),
    "softplus": (lambda x, a, b: F.softplus(x), None, None),
}
_DEFAULTS = {"RNN": ["Tanh"], "GRU": ["Sigmoid", "Tanh"], "LSTM": ["Sigmoid", "Tanh", "Tanh"]}
_GATES = {"RNN": 1, "GRU": 3, "LSTM": 4}


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _activations(kind: str, a: Attrs, directions: int) -> list[list[Callable[[Any], Any]]]:
    """Per direction, the activations (f, g, h) bound to their alpha and beta."""
    per = len(_DEFAULTS[kind])
    names = [_text(n) for n in a.get("activations", [])] or _DEFAULTS[kind] * directions
    if len(names) == per and directions == 2:
        names = names * 2  # one list given for both directions
    if len(names) != per * directions:
        raise NotImplementedError(f"{kind} with {len(names)} activations for {directions} direction(s)")
    alphas, betas = list(a.get("activation_alpha", [])), list(a.get("activation_beta", []))
    bound: list[Callable[[Any], Any]] = []
    for k, name in enumerate(names):
        key = name.lower()
        if key not in _ACTIVATIONS:
            raise NotImplementedError(f"{kind} activation {name}")
        fn, da, db = _ACTIVATIONS[key]
        if kind == "RNN":  # one value per activation, by position (as onnxruntime reads them)
            alpha = alphas[k] if da is not None and k < len(alphas) else da
            beta = betas[k] if db is not None and k < len(betas) else db
        else:  # taken in order by the activations that use them
            alpha = (alphas.pop(0) if alphas else da) if da is not None else 0.0
            beta = (betas.pop(0) if betas else db) if db is not None else 0.0
        bound.append(_bind(fn, float(alpha or 0.0), float(beta or 0.0)))
    return [bound[d * per : (d + 1) * per] for d in range(directions)]


def _bind(fn: Callable[[Any, float, float], Any], alpha: float, beta: float) -> Callable[[Any], Any]:
    return lambda x: fn(x, alpha, beta)


def _clipped(x: Any, clip: float | None) -> Any:
    return torch.clamp(x, -clip, clip) if clip is not None else x


def _step(kind: str, a: Attrs, acts: list[Callable[[Any], Any]], x: Any, h: Any, c: Any, w: Any) -> tuple[Any, Any]:
    """One time step of one direction: (new hidden state, new cell state)."""
    W, R, Wb, Rb, P = w
    clip = a.get("clip")
    n = h.shape[-1]
    xw = x @ W.T + Wb
    if kind == "RNN":
        return acts[0](_clipped(xw + h @ R.T + Rb, clip)), c
    if kind == "GRU":
        f, g = acts
        hr = h @ R.T
        z = f(_clipped(xw[:, :n] + hr[:, :n] + Rb[:n], clip))
        r = f(_clipped(xw[:, n : 2 * n] + hr[:, n : 2 * n] + Rb[n : 2 * n], clip))
        if a.get("linear_before_reset", 0):
            pre = xw[:, 2 * n :] + r * (hr[:, 2 * n :] + Rb[2 * n :])
        else:
            pre = xw[:, 2 * n :] + (r * h) @ R[2 * n :].T + Rb[2 * n :]
        hh = g(_clipped(pre, clip))
        return (1 - z) * hh + z * h, c
    f, g, hf = acts  # LSTM: gates i, o, f, c; peepholes i, o, f
    gates = xw + h @ R.T + Rb
    gi, go, gf, gc = (gates[:, k * n : (k + 1) * n] for k in range(4))
    pi, po, pf = (P[k * n : (k + 1) * n] for k in range(3))
    i = f(_clipped(gi + pi * c, clip))
    forget = 1 - i if a.get("input_forget", 0) else f(_clipped(gf + pf * c, clip))
    cell = forget * c + i * g(_clipped(gc, clip))
    o = f(_clipped(go + po * cell, clip))
    return o * hf(cell), cell


def recurrent(kind: str) -> Callable[[Attrs, list[Any]], list[Any]]:
    def run(a: Attrs, x: list[Any]) -> list[Any]:
        inputs = x + [None] * (8 - len(x))
        X, W, R, B, lens, h0, c0, P = inputs[:8]
        if kind != "LSTM":
            c0, P = None, None
        layout = int(a.get("layout", 0))
        if layout:
            X = X.transpose(0, 1)  # (batch, seq, in) -> (seq, batch, in)
            h0 = h0.transpose(0, 1) if h0 is not None else None
            c0 = c0.transpose(0, 1) if c0 is not None else None
        direction = _text(a.get("direction", "forward"))
        dirs = 2 if direction == "bidirectional" else 1
        n = int(a.get("hidden_size", R.shape[-1]))
        gates = _GATES[kind]
        seq, batch = X.shape[0], X.shape[1]
        acts = _activations(kind, a, dirs)
        zeros = X.new_zeros((dirs, batch, n))
        h0 = h0 if h0 is not None else zeros
        c0 = c0 if c0 is not None else zeros
        B = B if B is not None else X.new_zeros((dirs, 2 * gates * n))
        P = P if P is not None else X.new_zeros((dirs, 3 * n))
        steps = torch.arange(seq, device=X.device)
        lengths = lens.to(torch.int64) if lens is not None else torch.full((batch,), seq, device=X.device)
        ys, hs, cs = [], [], []
        for d in range(dirs):
            reverse = direction == "reverse" or d == 1
            w = (W[d], R[d], B[d, : gates * n], B[d, gates * n :], P[d])
            h, c = h0[d], c0[d]
            out: list[Any] = [None] * seq
            for t in reversed(range(seq)) if reverse else range(seq):
                h_new, c_new = _step(kind, a, acts[d], X[t], h, c, w)
                live = (steps[t] < lengths).to(X.dtype)[:, None]  # samples whose sequence still runs
                h = live * h_new + (1 - live) * h
                c = live * c_new + (1 - live) * c
                out[t] = live * h_new
            ys.append(torch.stack(out))  # (seq, batch, n)
            hs.append(h)
            cs.append(c)
        Y = torch.stack(ys, dim=1)  # (seq, dirs, batch, n)
        Y_h, Y_c = torch.stack(hs), torch.stack(cs)  # (dirs, batch, n)
        if layout:
            Y, Y_h, Y_c = Y.permute(2, 0, 1, 3), Y_h.transpose(0, 1), Y_c.transpose(0, 1)
        return [Y, Y_h, Y_c] if kind == "LSTM" else [Y, Y_h]

    return run


RECURRENT = {kind: recurrent(kind) for kind in ("RNN", "GRU", "LSTM")}
