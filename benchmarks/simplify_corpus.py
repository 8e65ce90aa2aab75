"""What onnx-simplifier (onnxsim) changes for wnc-onnx on the real-model corpus (issue 22).

    python benchmarks/simplify_corpus.py [--threads 1] [--models a,b] [--json results.json]
        [--sim-timeout 600]

Needs ``pip install onnxsim`` beside the ``[runtime]`` extra. For every model of
tests/corpus.py, at the corpus inputs (tests/corpus.py's ``verify_inputs``, else random
normal floats at the sizes of benchmarks/corpus_latency.py, 64 for other unknown dims):

- ``onnxsim.simplify(model)`` as is ("sim": what ``wnc-onnx --simplify`` runs first), and,
  where a data input has dynamic dims, once more with those inputs fixed to the corpus
  shapes (``overwrite_input_shapes``, "sim+shapes");
  each in a child process (a crash or hang of onnxsim's C++ core costs one row, not the run),
  timed, any failure kept as one line; the result checked with ``onnx.checker`` (full check)
  and run with onnxruntime on the same inputs as the original (worst relative RMS error over
  the outputs; next to the original's own noise floor, its outputs with onnxruntime's graph
  optimizations off against on; a model onnxruntime will not load is retried with them off);
- ``wnc_onnx.inspect`` of the original and of each simplified model: nodes, layers found,
  planned, skipped (and the commonest reasons), MACs before / after (the known part where
  some layer's size is unknown), weights;
- ``wnc_onnx.compress`` with the defaults of each: layers decomposed, MACs ratio, and the
  compressed model's output error against the ORIGINAL model (onnxruntime, same inputs).

Prints one markdown row per model and variant, the skip reasons, and a summary.
Only wnc_onnx's public API is used (``inspect``, ``compress``).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
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

DEFAULT_BATCH, DEFAULT_DIM = 1, 64  # as wnc_onnx's random inputs fill other unknown dims
CHANGED = 1e-4  # a simplified model whose outputs move more than this (relative RMS) is flagged


# --------------------------------------------------------------------------- onnxsim (child)


def _child(args: list[str]) -> int:
    """python simplify_corpus.py --child IN OUT SHAPES_JSON: simplify, save, print one JSON line."""
    src, dst, shapes_json = args
    shapes = json.loads(shapes_json) or None
    import onnxsim

    model = onnx.load(src)
    t0 = time.perf_counter()
    try:
        sim, ok = onnxsim.simplify(model, overwrite_input_shapes=shapes)
    except Exception as exc:  # noqa: BLE001 - any failure is a result here
        print(json.dumps({"error": one_line(exc), "seconds": time.perf_counter() - t0}))
        return 0
    seconds = time.perf_counter() - t0
    onnx.save(sim, dst)
    print(json.dumps({"error": None, "check_ok": bool(ok), "seconds": seconds}))
    return 0


def simplify(path: Path, shapes: dict[str, list[int]] | None, out: Path, timeout: float) -> dict[str, Any]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", str(path), str(out), json.dumps(shapes or {})]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:g} s", "seconds": timeout}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode or not lines:
        tail = (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
        return {"error": f"onnxsim process died (rc {proc.returncode}): {tail[:300]}", "seconds": None}
    return json.loads(lines[-1])


# --------------------------------------------------------------------------- helpers


def one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:300]}"


def data_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    weights = {t.name for t in model.graph.initializer}
    return [vi for vi in model.graph.input if vi.name not in weights]


def has_dynamic_dims(model: onnx.ModelProto) -> bool:
    return any(
        not (d.HasField("dim_value") and d.dim_value > 0)
        for vi in data_inputs(model)
        for d in vi.type.tensor_type.shape.dim
    )


def random_feeds(model: onnx.ModelProto, sizes: dict[str, tuple[int, ...]], seed: int = 0) -> dict[str, np.ndarray]:
    """Random normal floats / small integers per data input, dynamic dims from ``sizes`` or defaults."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for vi in data_inputs(model):
        tt = vi.type.tensor_type
        if vi.name in sizes:
            shape = list(sizes[vi.name])
        else:
            shape = [
                d.dim_value
                if d.HasField("dim_value") and d.dim_value > 0
                else (DEFAULT_BATCH if i == 0 else DEFAULT_DIM)
                for i, d in enumerate(tt.shape.dim)
            ]
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type)
        if np.issubdtype(dtype, np.floating):
            feeds[vi.name] = rng.standard_normal(shape).astype(dtype)
        elif dtype == np.bool_:
            feeds[vi.name] = rng.integers(0, 2, shape).astype(bool)
        else:
            feeds[vi.name] = rng.integers(0, 4, shape).astype(dtype)
    return feeds


def node_counts(graph: onnx.GraphProto) -> tuple[int, int]:
    """(nodes of the main graph, nodes including every subgraph)."""
    total = 0
    stack = [graph]
    while stack:
        g = stack.pop()
        total += len(g.node)
        for n in g.node:
            for a in n.attribute:
                if a.type == onnx.AttributeProto.GRAPH:
                    stack.append(a.g)
                elif a.type == onnx.AttributeProto.GRAPHS:
                    stack.extend(a.graphs)
    return len(graph.node), total


def check(model: onnx.ModelProto) -> str:
    try:
        onnx.checker.check_model(model, full_check=True)
        return "ok"
    except Exception as exc:  # noqa: BLE001
        full = one_line(exc)
    try:
        onnx.checker.check_model(model)
        return f"ok without full_check ({full[:160]})"
    except Exception as exc:  # noqa: BLE001
        return f"fails: {one_line(exc)[:200]}"


def run(
    model: onnx.ModelProto, feeds: dict[str, np.ndarray], threads: int, optimize: bool = True
) -> dict[str, np.ndarray]:
    import onnxruntime as ort

    so = ort.SessionOptions()
    if not optimize:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    missing = [n for n in names if n not in feeds]
    if missing:
        raise RuntimeError(f"no feed for input(s) {missing}")
    outs = sess.run(None, {n: feeds[n] for n in names})
    return {o.name: v for o, v in zip(sess.get_outputs(), outs, strict=True)}


def rel_rms(ref: dict[str, np.ndarray], got: dict[str, np.ndarray]) -> tuple[float | None, str]:
    """Worst relative RMS error over the reference's outputs; (None, why) when not comparable."""
    worst = 0.0
    for name, a in ref.items():
        if name not in got:
            return None, f"output {name} missing"
        b = got[name]
        if np.shape(a) != np.shape(b):
            return None, f"output {name} shape {np.shape(a)} vs {np.shape(b)}"
        a64, b64 = np.asarray(a, np.float64), np.asarray(b, np.float64)
        if a64.size == 0:
            continue
        diff = float(np.sqrt(np.mean((a64 - b64) ** 2)))
        scale = float(np.sqrt(np.mean(a64**2)))
        if not np.isfinite(diff):
            return float("nan"), f"output {name} not finite"
        err = diff / scale if scale > 0 else (0.0 if diff == 0 else float("inf"))
        worst = max(worst, err)
    return worst, ""


def error_vs(ref: Any, model: onnx.ModelProto, feeds: dict[str, np.ndarray], threads: int) -> tuple[float | None, str]:
    """(worst relative RMS error against ``ref``, note); when onnxruntime's default session fails,
    the error with its graph optimizations off, and the failure in the note."""
    if ref is None:
        return None, "the original did not run"
    try:
        return rel_rms(ref, run(model, feeds, threads))
    except Exception as exc:  # noqa: BLE001
        failure = one_line(exc)
    try:
        err, why = rel_rms(ref, run(model, feeds, threads, optimize=False))
    except Exception:  # noqa: BLE001
        return None, f"onnxruntime fails: {failure}"
    return err, f"runs only with ORT graph optimizations off (default session: {failure})"


def normalise_reason(reason: str) -> str:
    return re.sub(r"\d+(\.\d+)?", "N", reason.strip())[:90] or "(none)"


def study(
    model: onnx.ModelProto, shapes: dict[str, tuple[int, ...]], feeds: dict[str, np.ndarray], ref: Any, threads: int
) -> dict[str, Any]:
    """inspect + compress of one model (original or simplified), errors against the original's outputs."""
    import wnc_onnx

    out: dict[str, Any] = {}
    out["nodes"], out["nodes_all"] = node_counts(model.graph)
    out["convs"] = sum(n.op_type in ("Conv", "Gemm", "MatMul") for n in model.graph.node)
    shapes_here = {k: v for k, v in shapes.items() if k in {vi.name for vi in data_inputs(model)}}
    try:
        rep = wnc_onnx.inspect(model, input_shapes=shapes_here, threads=threads)
        t = rep.totals
        reasons = collections.Counter(normalise_reason(r.reason) for r in rep.layers if r.status == "skipped")
        out["inspect"] = {
            "layers": t.layers,
            "planned": t.planned,
            "skipped": t.skipped,
            "macs_before": t.macs_before,
            "macs_after": t.macs_after,
            "macs_unknown_layers": t.macs_unknown_layers,
            "macs_known_before": t.macs_known_before,
            "macs_known_after": t.macs_known_after,
            "params_before": t.params_before,
            "params_after": t.params_after,
            "skip_reasons": reasons.most_common(),
            "by_op": dict(collections.Counter(f"{r.op_type}:{r.status}" for r in rep.layers)),
        }
    except Exception as exc:  # noqa: BLE001
        out["inspect"] = {"error": one_line(exc)}
    t0 = time.perf_counter()
    try:
        small, rep = wnc_onnx.compress(model, input_shapes=shapes_here, threads=threads)
        t = rep.totals
        out["compress"] = {
            "seconds": time.perf_counter() - t0,
            "layers": t.layers,
            "decomposed": t.decomposed,
            "macs_before": t.macs_before,
            "macs_after": t.macs_after,
            "macs_known_before": t.macs_known_before,
            "macs_known_after": t.macs_known_after,
            "params_before": t.params_before,
            "params_after": t.params_after,
        }
        out["compress"]["error_vs_original"], out["compress"]["error_note"] = error_vs(ref, small, feeds, threads)
    except Exception as exc:  # noqa: BLE001
        out["compress"] = {"error": one_line(exc), "seconds": time.perf_counter() - t0}
    return out


# --------------------------------------------------------------------------- table


def human(n: float | None) -> str:
    if n is None:
        return "?"
    for unit, f in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= f:
            return f"{n / f:.3g}{unit}"
    return f"{n:.3g}"


def macs_text(i: dict[str, Any]) -> str:
    if "error" in i:
        return "-"
    star = "" if i["macs_before"] is not None else f" ({i['macs_unknown_layers']} unknown)"
    return f"{human(i['macs_known_before'])}->{human(i['macs_known_after'])}{star}"


def err_text(e: float | None, note: str = "") -> str:
    if e is None:
        return note[:60] or "-"
    if note.startswith("runs only with ORT graph optimizations off"):
        return f"{e:.2g} (ORT fails unless its graph optimizations are off)"
    return f"{e:.2g}"


def compress_text(c: dict[str, Any]) -> tuple[str, str, str]:
    if "error" in c:
        return "fails", "-", c["error"][:60]
    before = c["macs_before"] if c["macs_before"] is not None else c["macs_known_before"]
    after = c["macs_after"] if c["macs_before"] is not None else c["macs_known_after"]
    ratio = f"x{before / after:.2f}" if after else "-"
    if c["macs_before"] is None:
        ratio += " (known)"
    return f"{c['decomposed']}/{c['layers']}", ratio, err_text(c.get("error_vs_original"), c.get("error_note", ""))


def row(
    model_id: str,
    variant: str,
    r: dict[str, Any],
    sim: dict[str, Any] | None,
    checker: str = "-",
    noise: float | None = None,
) -> str:
    if sim is not None and sim.get("error"):
        took = f"{sim['seconds']:.1f} s" if sim.get("seconds") is not None else "-"
        return f"| {model_id} | {variant} | fails ({took}): {sim['error'][:120]} " + "| " * 11 + "|"
    i = r["inspect"]
    if "error" in i:
        ins = ("-", "-", "-", "-", "-")
    else:
        ins = (
            str(i["layers"]),
            str(i["planned"]),
            str(i["skipped"]),
            macs_text(i),
            f"{human(i['params_before'])}->{human(i['params_after'])}",
        )
    dec, ratio, cerr = compress_text(r["compress"])
    simcol = "-" if sim is None else f"{sim['seconds']:.1f} s"
    serr = (
        (f"floor {noise:.2g}" if noise is not None else "-")
        if sim is None
        else err_text(sim.get("error_vs_original"), sim.get("error_note", ""))
    )
    chk = checker if sim is None else (sim.get("checker") or "-")
    chk = chk if chk == "ok" else chk[:50]
    return (
        f"| {model_id} | {variant} | {simcol} | {serr} | {chk} | {r['nodes']} ({r['nodes_all']}) | "
        + " | ".join(ins)
        + f" | {dec} | {ratio} | {cerr} |"
    )


# --------------------------------------------------------------------------- main


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        return _child(sys.argv[2:])
    from tests.corpus import CORPUS, SIZES, fetch, verify_inputs

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--models", default=",".join(CORPUS))
    ap.add_argument("--sim-timeout", type=float, default=600.0, help="seconds one onnxsim call may take")
    ap.add_argument("--json", help="write every figure as JSON")
    a = ap.parse_args()

    import onnxruntime
    import onnxsim

    import wnc_onnx

    versions = {
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "onnxsim": getattr(onnxsim, "__version__", "?"),
        "wnc_onnx": wnc_onnx.__version__,
        "numpy": np.__version__,
    }
    print(f"load before: {os.getloadavg()[0]:.2f}; threads {a.threads}; {versions}", flush=True)
    results: list[dict[str, Any]] = []
    t_all = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="wnc-simplify-") as tmp:
        for model_id in a.models.split(","):
            t_model = time.perf_counter()
            path = fetch(model_id)
            original = onnx.load(path)
            feeds = verify_inputs(model_id) or random_feeds(original, SIZES.get(model_id, {}), seed=0)
            shapes = {k: tuple(int(x) for x in v.shape) for k, v in feeds.items() if v.ndim and all(v.shape)}
            dynamic = has_dynamic_dims(original)
            res: dict[str, Any] = {"model": model_id, "dynamic_inputs": dynamic, "shapes": shapes}
            res["original_checker"] = check(original)
            try:
                ref = run(original, feeds, a.threads)
                # the noise floor: the original itself with onnxruntime's graph rewrites (BN folding, fusions) off
                res["noise_floor"] = rel_rms(ref, run(original, feeds, a.threads, optimize=False))[0]
            except Exception as exc:  # noqa: BLE001
                ref, res["original_run_error"], res["noise_floor"] = None, one_line(exc), None
            res["original"] = study(original, shapes, feeds, ref, a.threads)
            variants = [("sim", None)]
            if dynamic:
                dyn_names = {
                    vi.name
                    for vi in data_inputs(original)
                    if any(not (d.HasField("dim_value") and d.dim_value > 0) for d in vi.type.tensor_type.shape.dim)
                }
                variants.append(("sim+shapes", {k: list(v) for k, v in shapes.items() if k in dyn_names}))
            res["variants"] = {}
            for name, over in variants:
                out = Path(tmp) / f"{model_id}.{name}.onnx"
                sim = simplify(path, over, out, a.sim_timeout)
                sim["overwrite_input_shapes"] = over
                res["variants"][name] = {"simplify": sim}
                if sim.get("error"):
                    print(f"  {model_id} {name}: onnxsim fails: {sim['error']}", flush=True)
                    continue
                simplified = onnx.load(out)
                sim["checker"] = check(simplified)
                sim["inputs"] = [vi.name for vi in data_inputs(simplified)]
                sim["outputs_same_names"] = [o.name for o in simplified.graph.output] == [
                    o.name for o in original.graph.output
                ]
                sim["error_vs_original"], sim["error_note"] = error_vs(ref, simplified, feeds, a.threads)
                res["variants"][name]["study"] = study(simplified, shapes, feeds, ref, a.threads)
            res["seconds"] = time.perf_counter() - t_model
            results.append(res)
            o = res["original"]
            summary = [f"orig {o['inspect'].get('planned', '?')}/{o['inspect'].get('layers', '?')} planned"]
            for name, v in res["variants"].items():
                s = v.get("study")
                if s:
                    summary.append(
                        f"{name} {s['inspect'].get('planned', '?')}/{s['inspect'].get('layers', '?')} planned, "
                        f"err {err_text(v['simplify'].get('error_vs_original'), v['simplify'].get('error_note', ''))}"
                    )
                else:
                    summary.append(f"{name} fails")
            print(f"{model_id:16s} {res['seconds']:6.1f} s  " + "; ".join(summary), flush=True)
    print(f"load after: {os.getloadavg()[0]:.2f}; {time.perf_counter() - t_all:.0f} s in all")
    if a.json:
        Path(a.json).write_text(json.dumps({"versions": versions, "threads": a.threads, "results": results}, indent=1))

    # ---- the table
    print()
    print(
        "| model | variant | onnxsim | sim err vs orig (original: noise floor) | checker | nodes (with subgraphs) | "
        "layers | planned | "
        "skipped | MACs known before->after (inspect) | weights before->after | decomposed | compress MACs | "
        "compressed err vs orig |"
    )
    print("|---|---|---:|---:|---|---:|---:|---:|---:|---|---|---:|---|---:|")
    for res in results:
        print(row(res["model"], "original", res["original"], None, res["original_checker"], res.get("noise_floor")))
        for name, v in res["variants"].items():
            print(row(res["model"], name, v.get("study", {}), v["simplify"]))

    # ---- skip reasons
    print("\nCommonest skip reasons (inspect; numbers as N):\n")
    print("| model | variant | skipped | reasons (count) |")
    print("|---|---|---:|---|")
    for res in results:
        entries = [("original", res["original"])] + [
            (n, v["study"]) for n, v in res["variants"].items() if "study" in v
        ]
        for name, s in entries:
            i = s["inspect"]
            if "error" in i or not i["skipped"]:
                continue
            text = "; ".join(f"{r} ({c})" for r, c in i["skip_reasons"][:3])
            print(f"| {res['model']} | {name} | {i['skipped']} | {text} |")

    # ---- summary
    print("\nSummary:\n")
    for name in ("sim", "sim+shapes"):
        tried = [r for r in results if name in r["variants"]]
        if not tried:
            continue
        fails = [r["model"] for r in tried if r["variants"][name]["simplify"].get("error")]
        ok = [r for r in tried if "study" in r["variants"][name]]
        changed = []
        for r in ok:
            sim = r["variants"][name]["simplify"]
            err = sim.get("error_vs_original")
            if err is None or not err <= CHANGED or sim.get("error_note"):
                floor = r.get("noise_floor")
                floor_text = f", the original's own noise floor {floor:.2g}" if floor is not None else ""
                changed.append(f"{r['model']} ({err_text(err, sim.get('error_note', ''))}{floor_text})")
        gain, lose, same = [], [], []
        dec_gain, dec_lose = [], []
        for r in ok:
            o, s = r["original"], r["variants"][name]["study"]
            po, ps = o["inspect"].get("planned"), s["inspect"].get("planned")
            if po is not None and ps is not None:
                (gain if ps > po else lose if ps < po else same).append(f"{r['model']} ({po}->{ps})")
            do, ds = o["compress"].get("decomposed"), s["compress"].get("decomposed")
            if do is not None and ds is not None and ds != do:
                (dec_gain if ds > do else dec_lose).append(f"{r['model']} ({do}->{ds})")
        print(
            f"- {name}: tried on {len(tried)} models; onnxsim fails on {len(fails)}"
            + (f": {', '.join(fails)}" if fails else "")
        )
        print(
            f"  - outputs changed beyond {CHANGED:g} relative RMS, or not comparable, or the model runs only with "
            f"onnxruntime's graph optimizations off: {', '.join(changed) or 'none'}"
        )
        print(f"  - more planned (compressible) layers: {', '.join(gain) or 'none'}")
        print(f"  - fewer planned layers: {', '.join(lose) or 'none'}; same: {len(same)}")
        print(
            f"  - more decomposed by compress: {', '.join(dec_gain) or 'none'}; fewer: {', '.join(dec_lose) or 'none'}"
        )
        macs = []
        for r in ok:
            o, s = r["original"]["inspect"], r["variants"][name]["study"]["inspect"]
            if "error" in o or "error" in s:
                continue
            if o["macs_known_before"] != s["macs_known_before"] or o["macs_unknown_layers"] != s["macs_unknown_layers"]:
                macs.append(
                    f"{r['model']} (known {human(o['macs_known_before'])}->{human(s['macs_known_before'])}, "
                    f"unknown layers {o['macs_unknown_layers']}->{s['macs_unknown_layers']})"
                )
        print(f"  - MACs of the model (inspect, before compression) changed: {', '.join(macs) or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
