"""--max-error: the ranks that keep the network's output error on the calibration data under a
budget with the fewest MACs (issue 12).

1. The calibration statistics are gathered once (``calibration.Reuse``, in the run state) and
   every run below reuses them.
2. Options per layer: EVBMF's ranks scaled by ``SCALES`` (clamped to the layer), each run once
   for the whole network, which gives every layer's modelled output error and MACs at that
   scale; and the layer kept whole (no error, all its MACs).
3. Sensitivity, measured on the data: each layer compressed alone at EVBMF's ranks, the
   network's output error (as ``--verify`` normalizes it) over the layer's own error gives
   its gain a_l. The network error is modelled as sqrt(sum_l a_l e_l^2).
4. Allocation: for a multiplier lambda each layer takes the option minimizing
   MACs + lambda a_l e_l^2; lambda is searched so the modelled error meets the budget.
5. The chosen network is built and its error measured on the calibration data; while it is
   over the budget, the modelled budget shrinks by the overshoot and 4-5 run again.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from wnc_onnx.analyze.calibration import Reuse
from wnc_onnx.analyze.graph import with_outputs
from wnc_onnx.analyze.heads import measured
from wnc_onnx.check.verify import compare_output, output_kind
from wnc_onnx.config import CompressConfig
from wnc_onnx.data.feeds import batches_of
from wnc_onnx.errors import WncError
from wnc_onnx.io.session import cpu_session
from wnc_onnx.report import LayerReport, Report
from wnc_onnx.rewrite.pipeline import run_passes
from wnc_onnx.rewrite.state import RunState

log = logging.getLogger(__name__)

SCALES = (0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0)  # of EVBMF's ranks
PROBES = 3  # layers tried alone at the largest scale before the search: an unreachable budget is said early
ROUNDS = 5  # builds of the chosen network before giving up on the budget
TIGHT = 0.8  # a measured error at or above this share of the aim is close enough
SAFETY = 0.9  # aim under the budget: held-out inputs see a little more error than the fitted ones
EVAL_SAMPLES = 256  # calibration samples the network error is measured on (--max-error)
REPORT_SAMPLES = 64  # ... and for the report's line after a plain --calibration run


@dataclass(frozen=True)
class Option:
    scale: float | None  # None: the layer kept whole
    ranks: dict[str, int]
    error: float  # the layer's modelled output error on the data
    macs: int


@dataclass
class Budget:
    target: float
    measured: float = math.inf
    rounds: int = 0
    gains: dict[str, float] = field(default_factory=dict)
    chosen: dict[str, Option] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "measured": self.measured,
            "rounds": self.rounds,
            "layers": {
                name: {
                    "scale": o.scale,
                    "ranks": o.ranks,
                    "modelled_error": o.error,
                    "gain": self.gains.get(name),
                    "macs": o.macs,
                }
                for name, o in self.chosen.items()
            },
        }


def _scaled(rec: LayerReport, scale: float) -> dict[str, int]:
    full = {"R3": rec.S or 1, "R4": rec.T or 1, "R": min(rec.S or 1, rec.T or 1)}
    return {k: int(min(max(1, round(v * scale)), full[k])) for k, v in rec.ranks.items()}


def _spec(ranks: dict[str, int]) -> int | list[int]:
    return [ranks["R3"], ranks["R4"]] if "R3" in ranks else ranks.get("R4", ranks.get("R", 1))


class _Runner:
    """Compresses with the shared statistics and measures the network error on the data: on the
    samples and original outputs that gathering the statistics kept (``Reuse.reference``), or,
    where none were kept, on the first ``samples`` of the source and a run of the original."""

    def __init__(self, model: onnx.ModelProto, cfg: CompressConfig, cache: Reuse, samples: int = EVAL_SAMPLES) -> None:
        self.model, self.cfg, self.cache, self.want = model, cfg, cache, samples
        # the outputs, or for one made by post-processing (ArgMax, TopK, ...) the float tensor it reads
        self.points = measured(model)
        self.names = list(self.points.values())
        self.feeds: list[dict[str, np.ndarray]] = []
        self.ref: list[np.ndarray] = []
        self.builds = 0

    def _reference(self) -> None:
        if self.feeds:
            return
        kept = self.cache.reference
        if kept is not None and kept.samples:
            self.names, self.feeds = kept.names, kept.feeds
            self.ref = [np.concatenate(x)[: self.want] for x in zip(*kept.outputs, strict=True)]
            return
        n = 0
        cfg = self.cfg
        for batch in batches_of(self.cache.source, self.model, mean=cfg.calibration_mean, std=cfg.calibration_std):
            self.feeds.append(batch)
            n += len(next(iter(batch.values())))
            if n >= self.want:
                break
        sess = cpu_session(with_outputs(self.model, self.names), cfg.threads)
        self.ref = [np.concatenate(x) for x in zip(*(sess.run(self.names, f) for f in self.feeds), strict=True)]

    def compress(self, keep_whole: dict[str, str] | None = None, **changes: Any) -> tuple[onnx.ModelProto, Report]:
        """A build with ``changes`` to the options (ranks, include) and ``keep_whole`` layers left whole."""
        self.builds += 1
        state = RunState(calibration=self.cache, keep_whole=dict(keep_whole or {}))
        return run_passes(self.model, replace(self.cfg, **changes), state)

    def measure(self, compressed: onnx.ModelProto) -> dict[str, Any]:
        """The worst output error on the data (as --verify normalizes it) and, where outputs are
        class scores, the share of samples whose top class is unchanged."""
        self._reference()
        sess = cpu_session(with_outputs(compressed, self.names), self.cfg.threads)
        runs = [sess.run(self.names, f) for f in self.feeds]
        got = [np.concatenate([run[i] for run in runs])[: len(r)] for i, r in enumerate(self.ref)]
        worst, top1 = 0.0, None
        for name, a, b in zip(self.names, self.ref, got, strict=True):
            diff = compare_output(name, output_kind(self.model, name, a), a, b)
            worst = max(worst, diff.error if diff.error is not None else 0.0)
            if diff.top1_agreement is not None:
                top1 = diff.top1_agreement if top1 is None else min(top1, diff.top1_agreement)
        found: dict[str, Any] = {"samples": self.samples, "output_error": worst, "top1_agreement": top1}
        moved = {out: at for out, at in self.points.items() if at != out}
        if moved:  # said in the report: an integer output's error means nothing, its scores' does
            found["measured_at"] = moved
        return found

    @property
    def samples(self) -> int:
        self._reference()
        return len(self.ref[0]) if self.ref else 0


def one_shot(source: Any) -> bool:
    """An iterator (a generator): its batches can be read once only."""
    return not isinstance(source, str | Path | Reuse) and iter(source) is source


def on_calibration_data(
    original: onnx.ModelProto, compressed: onnx.ModelProto, cfg: CompressConfig, cache: Reuse
) -> dict[str, Any]:
    """The compressed model's output error against the original on (up to REPORT_SAMPLES of) the
    calibration data: the report's ``extras.calibration``."""
    return _Runner(original, cfg, cache, REPORT_SAMPLES).measure(compressed)


def _feasible(runner: _Runner, start: dict[str, LayerReport], target: float, unfit: tuple[str, ...]) -> None:
    """Before the search (many builds): the ``PROBES`` layers with the least output error on the
    data, each compressed alone at the largest scale of EVBMF's ranks. If none of them keeps
    the network within the budget, no compression is likely to: one WncError now, naming the
    least error found, instead of after the whole search."""
    probes = sorted(start.values(), key=lambda r: r.data_error or 0.0)[:PROBES]
    best: tuple[float, str, dict[str, int]] | None = None
    for r in probes:
        whole = {n: "probe" for n in start if n != r.name} | dict.fromkeys(unfit, "probe")
        for scale in reversed(SCALES):  # the largest ranks that still save something
            ranks = _scaled(r, scale)
            alone, rep = runner.compress(keep_whole=whole, ranks={**runner.cfg.ranks, r.name: _spec(ranks)})
            if rep.layer(r.name).status == "decomposed":
                break
        else:
            continue
        err = runner.measure(alone)["output_error"]
        log.info("--max-error: probe, %s alone at ranks %s: network error %.4g", r.name, ranks, err)
        if err <= SAFETY * target:
            return
        if best is None or err < best[0]:
            best = (err, r.name, ranks)
    if best is not None:
        raise WncError(
            f"--max-error {target:g} cannot be met on the calibration data: the least error found is {best[0]:.3g} "
            f"('{best[1]}' alone at ranks {best[2]}; the {len(probes)} layer(s) with the least error were each tried "
            "alone at the largest ranks that still save weights and MACs)",
            "raise --max-error, or give ranks by hand with --ranks",
        )


def _allocate(options: dict[str, list[Option]], gains: dict[str, float], budget: float) -> dict[str, Option]:
    """Per layer the option minimizing MACs + lam * a e^2, lam searched so sum a e^2 <= budget^2."""

    def pick(lam: float) -> dict[str, Option]:
        return {n: min(opts, key=lambda o: o.macs + lam * gains[n] * o.error**2) for n, opts in options.items()}

    def cost(choice: dict[str, Option]) -> float:
        return sum(gains[n] * o.error**2 for n, o in choice.items())

    lo, hi = 0.0, 1.0
    while cost(pick(hi)) > budget**2 and hi < 1e30:
        hi *= 10
    for _ in range(60):  # bisection on a log scale between lo and hi
        mid = math.sqrt(max(lo, hi * 1e-12) * hi)
        if cost(pick(mid)) > budget**2:
            lo = mid
        else:
            hi = mid
    return pick(hi)


def _macs(chosen: dict[str, Option]) -> int:
    return sum(o.macs for o in chosen.values())


def compress_within(model: onnx.ModelProto, cfg: CompressConfig) -> tuple[onnx.ModelProto, Report]:
    """Compress ``model`` with the fewest MACs whose output error on the calibration data stays
    under ``cfg.max_error``."""
    assert cfg.max_error is not None
    target = float(cfg.max_error)
    # the source is read once: the statistics and the first EVAL_SAMPLES samples are kept for every build
    cfg = replace(cfg, max_error=None)
    runner = _Runner(model, cfg, Reuse(cfg.calibration, keep=EVAL_SAMPLES))
    log.info("--max-error %g: EVBMF's ranks first", target)
    base_model, base = runner.compress()
    # the layers to budget: fitted to the data, ranks not fixed by the user
    start = {
        r.name: r
        for r in base.layers
        if r.status == "decomposed" and r.data_error is not None and r.name not in cfg.ranks
    }
    if not start:
        return base_model, base
    # decomposed without statistics (the data too few for them): their error cannot be budgeted
    unfit = tuple(r.name for r in base.layers if r.status == "decomposed" and r.data_error is None)
    _feasible(runner, start, target, unfit)
    # MACs unknown (a dynamic size without --input-shape): weights stand in for them
    options: dict[str, list[Option]] = {
        n: [Option(None, {}, 0.0, int(r.macs_before or r.params_before or 0))] for n, r in start.items()
    }
    for scale in SCALES:
        ranks = {n: _spec(_scaled(r, scale)) for n, r in start.items()}
        _, rep = (base_model, base) if scale == 1.0 else runner.compress(ranks={**cfg.ranks, **ranks})
        for r in rep.layers:
            known = r.name in options and r.status == "decomposed" and r.data_error is not None
            if known and all(o.ranks != r.ranks for o in options[r.name]):
                cost = int(r.macs_after or r.params_after or 0) if r.macs_before else int(r.params_after or 0)
                options[r.name].append(Option(scale, dict(r.ranks), float(r.data_error or 0), cost))
        log.info("--max-error: options at x%g of EVBMF's ranks", scale)
    gains: dict[str, float] = {}
    for k, (n, r) in enumerate(start.items(), 1):
        alone, _ = runner.compress(include=f"^{re.escape(n)}$", ranks={n: _spec(dict(r.ranks))})
        err = runner.measure(alone)["output_error"]
        gains[n] = (err / r.data_error) ** 2 if r.data_error and r.data_error > 0 else 1.0
        log.info("--max-error: [%d/%d] %s alone: network error %.4g (layer %.4g)", k, len(start), n, err, r.data_error)
    budget = Budget(target, gains=gains)
    aim = SAFETY * target  # the error is measured on the data the factors were fitted to
    modelled = aim
    best: tuple[onnx.ModelProto, Report, dict[str, Any], dict[str, Option]] | None = None  # + its measurement
    why = f"--max-error {target:g}: kept whole (its error would cost more than its MACs save" + (
        ", or the data were too few to measure it)" if unfit else ")"
    )
    low, high = 0.0, math.inf  # modelled budgets known to meet / to miss the aim
    seen: set[tuple[tuple[str, float | None], ...]] = set()
    for budget.rounds in range(1, ROUNDS + 1):
        chosen = _allocate(options, gains, modelled)
        key = tuple(sorted((n, o.scale) for n, o in chosen.items()))
        picked = {n: o for n, o in chosen.items() if o.scale is not None}
        if not picked:
            break
        if key in seen:  # the same network again: move on
            modelled = math.sqrt(low * high) if low > 0 and high < math.inf else modelled * (0.5 if low == 0 else 2)
            continue
        seen.add(key)
        whole = tuple(n for n, o in chosen.items() if o.scale is None)
        fixed: dict[str, Any] = {**cfg.ranks, **{n: _spec(o.ranks) for n, o in picked.items()}}
        result, rep = runner.compress(keep_whole=dict.fromkeys(unfit + whole, why), ranks=fixed)
        measured = runner.measure(result)
        err = measured["output_error"]
        log.info(
            "--max-error: round %d, %d layer(s) compressed, network error %.4g (target %g)",
            budget.rounds,
            len(picked),
            err,
            target,
        )
        if err <= aim:
            low = max(low, modelled)
            if best is None or _macs(chosen) < _macs(best[3]):
                best = (result, rep, measured, chosen)
            if err >= TIGHT * aim:
                break
        else:
            high = min(high, modelled)
        guess = modelled * aim / max(err, 1e-12)  # the error scales about with the modelled budget
        if low > 0 and high < math.inf:
            guess = min(max(guess, low * 1.01), high * 0.99) if low < high else math.sqrt(low * high)
        modelled = guess
    if best is None:  # the least error a compression can have: the least sensitive layer, lightly
        name, option = min(
            ((n, o) for n, opts in options.items() for o in opts if o.scale is not None),
            key=lambda no: gains[no[0]] * no[1].error ** 2,
        )
        chosen = {n: (option if n == name else opts[0]) for n, opts in options.items()}
        keep = unfit + tuple(n for n in options if n != name)
        result, rep = runner.compress(
            keep_whole=dict.fromkeys(keep, why), ranks={**cfg.ranks, name: _spec(option.ranks)}
        )
        measured = runner.measure(result)
        err = measured["output_error"]
        if err > aim:
            raise WncError(
                f"--max-error {target:g} cannot be met on the calibration data: the least error any compression "
                f"gives is {err:.3g} ('{name}' alone at ranks {option.ranks})",
                "raise --max-error, or give ranks by hand with --ranks",
            )
        best = (result, rep, measured, chosen)
    result, rep, measured, chosen = best
    budget.measured, budget.chosen = measured["output_error"], chosen
    info = budget.to_dict()
    info["builds"] = runner.builds
    info["samples"] = runner.samples
    rep.extras["max_error"] = info
    rep.extras["calibration"] = measured
    rep.config["max_error"] = target
    return result, rep
