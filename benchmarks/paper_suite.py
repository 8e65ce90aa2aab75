"""The paper's Table 1 on this machine: the four networks' decomposed layers, measured.

Kim et al. measured AlexNet, VGG-S, GoogLeNet and VGG-16 on a Titan X and a Galaxy S6.
This builds the layers of their Tables 2-5 (shapes and ranks from
../shared/paper/kim2016_tables.json; each layer is its own branch with its own input,
weights planted at the paper's ranks plus noise so EVBMF has structure to find),
compresses them

  paper     with the paper's ranks (--ranks),
  paper16   the paper's ranks rounded up to multiples of 16,
  defaults  with wnc-onnx's defaults (EVBMF ranks),
  latency   with --latency-aware on top of the defaults, chosen for each thread count
            it is measured at (a model chosen for 1 thread is measured at 1 thread),

and measures every variant against the original with ``wnc_onnx.bench`` (interleaved
rounds, in one run per thread count): weights, MACs, latency, measured and theoretical
speed-up, and their ratio (efficiency).

``vgg16_chain`` is the whole VGG-16 as one chain at 224 x 224 (``wnc_onnx.zoo.vgg16``:
13 convs, pools, 3 FC layers), where only the 12 convs of Table 5 are compressed
(conv1_1 and the FC layers stay whole, as in the paper's Table 5).

    python benchmarks/paper_suite.py [--nets vgg16,alexnet,vgg_s,googlenet,vgg16_chain] [--threads 1,2]
        [--rounds 7] [--session-option session.intra_op.allow_spinning=0] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import onnx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from wnc_onnx import compress  # noqa: E402
from wnc_onnx.bench import BenchConfig, measure  # noqa: E402
from wnc_onnx.io.session import parse_session_options  # noqa: E402
from wnc_onnx.zoo import TableLayer, table_model, vgg16  # noqa: E402

TABLES = ROOT.parent / "shared" / "paper" / "kim2016_tables.json"
FIELDS = ("name", "kind", "S", "T", "D", "groups", "stride", "pad", "in_hw", "out_hw", "R3", "R4")


def paper_ranks(rows: list[dict], multiple: int = 1) -> dict[str, object]:
    def up(r: int, full: int) -> int:
        return min(full, -(-r // multiple) * multiple)

    out: dict[str, object] = {}
    for r in rows:
        s, t = r["S"], r["T"]
        full_s = s * r["D"] * r["D"] if r["kind"] == "fc" and r["D"] == 1 else s
        if r["R3"] is not None:
            out[r["name"]] = [up(r["R3"], s), up(r["R4"], t)]
        else:
            out[r["name"]] = up(r["R4"], min(full_s, t) if r["kind"] == "fc" else t)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nets", default="vgg16,alexnet,vgg_s,googlenet")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--session-option", action="append", default=[])
    ap.add_argument("--json", help="write every figure as JSON")
    a = ap.parse_args()
    tables = json.loads(TABLES.read_text())
    threads = tuple(int(t) for t in a.threads.split(","))
    options = parse_session_options(a.session_option)
    print(f"load before: {os.getloadavg()[0]:.2f}", flush=True)
    results = []
    with tempfile.TemporaryDirectory(prefix="wnc-paper-") as tmp:
        for net in a.nets.split(","):
            chain = net == "vgg16_chain"
            rows = tables["networks"]["vgg16" if chain else net]
            if chain:  # only the convs of Table 5: conv1_1 and the FC layers stay whole
                model = vgg16(image=224)
                scope = {"op_types": ("Conv",), "exclude": "^conv1_1$"}
            else:
                model = table_model([TableLayer(**{k: r[k] for k in FIELDS}) for r in rows], planted=True)
                scope = {}
            orig = Path(tmp) / f"{net}.onnx"
            onnx.save(model, orig)
            variants: dict[str, tuple[Path, object]] = {}
            for name, kwargs in (
                ("paper", {"ranks": paper_ranks(rows)}),
                ("paper16", {"ranks": paper_ranks(rows, 16)}),
                ("defaults", {}),
            ):
                out, rep = compress(model, **kwargs, **scope)
                path = Path(tmp) / f"{net}.{name}.onnx"
                onnx.save(out, path)
                variants[name] = (path, rep)
            for t in threads:
                out, rep = compress(model, latency_aware=True, threads=t, session_options=options, **scope)
                path = Path(tmp) / f"{net}.latency{t}.onnx"
                onnx.save(out, path)
                variants[f"latency@{t}"] = (path, rep)
            for t in threads:
                names = [n for n in variants if not n.startswith("latency@") or n == f"latency@{t}"]
                res = measure(
                    [orig, *(variants[n][0] for n in names)],
                    BenchConfig(threads=(t,), rounds=a.rounds, memory=False, session_options=options),
                )
                base = res.runs[0]
                for n, run in zip(names, res.runs[1:], strict=True):
                    rep = variants[n][1]
                    tot = rep.totals  # type: ignore[attr-defined]
                    theo = tot.macs_before / tot.macs_after if tot.macs_after else None
                    results.append(
                        {
                            "net": net,
                            "variant": n,
                            "threads": t,
                            "weights": [tot.params_before, tot.params_after],
                            "macs": [tot.macs_before, tot.macs_after],
                            "original_ms": round(base.median_ms, 3),
                            "ms": round(run.median_ms, 3),
                            "speedup": round(run.speedup, 3),
                            "speedup_range": [round(x, 3) for x in run.speedup_range],
                            "theoretical": round(theo, 3) if theo else None,
                            "efficiency": round(run.speedup / theo, 3) if theo else None,
                            "decomposed": tot.decomposed,
                            "layers": tot.layers,
                            "spread": [round(base.spread, 3), round(run.spread, 3)],
                        }
                    )
                    r = results[-1]
                    print(
                        f"{net:9s} {n:11s} t={t} weights {tot.params_before / 1e6:.2f}M->{tot.params_after / 1e6:.2f}M "
                        f"MACs {tot.macs_before / 1e6:.0f}M->{tot.macs_after / 1e6:.0f}M x{theo:.2f}  "
                        f"{base.median_ms:.2f} -> {run.median_ms:.2f} ms  x{run.speedup:.2f} "
                        f"({run.speedup_range[0]:.2f}-{run.speedup_range[1]:.2f})  eff {r['efficiency']:.2f}  "
                        f"decomposed {tot.decomposed}/{tot.layers}",
                        flush=True,
                    )
    print(f"load after: {os.getloadavg()[0]:.2f}")
    print()
    head = ("net", "variant", "threads", "weights", "MACs (theoretical)", "original ms", "compressed ms")
    print("| " + " | ".join(head) + " | measured | efficiency |")
    print("|---|---|---:|---|---|---:|---:|---|---:|")
    for r in results:
        w, m = r["weights"], r["macs"]
        print(
            f"| {r['net']} | {r['variant']} | {r['threads']} | {w[0] / 1e6:.2f}M -> {w[1] / 1e6:.2f}M "
            f"| {m[0] / 1e6:.0f}M -> {m[1] / 1e6:.0f}M (x{r['theoretical']:.2f}) | {r['original_ms']:.2f} "
            f"| {r['ms']:.2f} | x{r['speedup']:.2f} ({r['speedup_range'][0]:.2f}-{r['speedup_range'][1]:.2f}) "
            f"| {r['efficiency']:.2f} |"
        )
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
