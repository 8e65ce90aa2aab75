"""Peak memory of loading and running one model, measured in a child process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Mapping

import numpy as np

# The child imports onnxruntime and loads the inputs first: that is its baseline. The
# peak resident set after creating the session and running it, less the baseline, is
# what the model costs.
# VmHWM, not ru_maxrss: the latter survives fork + exec and would carry the parent's peak.
_CHILD = """
import json, sys
import numpy as np
import onnxruntime
from wnc_onnx.io.session import session
def hwm():
    with open("/proc/self/status") as fh:
        return next(int(ln.split()[1]) for ln in fh if ln.startswith("VmHWM:"))
a = json.loads(sys.argv[1])
feeds = dict(np.load(a["feeds"]))
base = hwm()
s = session(a["model"], a["provider"], a["threads"], a["options"], a["graph_opt"])
for _ in range(3):
    s.run(None, feeds)
print(json.dumps({"base_kib": base, "peak_kib": hwm()}))
"""


def peak_memory(
    model: str | os.PathLike[str],
    feeds: Mapping[str, np.ndarray],
    provider: str,
    threads: int,
    options: Mapping[str, str],
    graph_opt: str,
) -> tuple[int | None, str]:
    """(bytes above the child's baseline, '') or (None, why)."""
    if sys.platform != "linux":
        return None, "peak memory is measured on Linux only"
    with tempfile.TemporaryDirectory(prefix="wnc-onnx-mem-") as folder:
        path = os.path.join(folder, "feeds.npz")
        np.savez(path, **dict(feeds))  # type: ignore[arg-type]
        args = {
            "model": str(model),
            "feeds": path,
            "provider": provider,
            "threads": threads,
            "options": dict(options),
            "graph_opt": graph_opt,
        }
        proc = subprocess.run(
            [sys.executable, "-c", _CHILD, json.dumps(args)], capture_output=True, text=True, timeout=600
        )
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return None, f"memory run failed: {last[:200]}"
    found = json.loads(proc.stdout.strip().splitlines()[-1])
    return max(0, found["peak_kib"] - found["base_kib"]) * 1024, ""
