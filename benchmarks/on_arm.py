"""Run models on onnxruntime's ARM (aarch64) kernels and check their outputs against x86.

    python benchmarks/on_arm.py model.onnx model.small.onnx [--input-shape x=1,3,224,224]
        [--inputs X.npz] [--input-value NAME=V] [--ort-version 1.26.0] [--tolerance 1e-3]
        [--int8-tolerance 0.02] [--json]

On an x86_64 Linux host it runs the models under emulation: Debian's qemu-user-static
and an arm64 Python 3.11 from Debian's packages, with onnxruntime's aarch64 wheel from
PyPI, set up once in ~/.cache/wnc-onnx/arm/ (``$WNC_ONNX_CACHE``). It needs root for
the first set-up (apt-get installs qemu-user-static and adds the arm64 architecture to
apt's lists). The same inputs go through the host's onnxruntime; the table gives, per
output, the ARM result's error against the x86 one (RMS of the difference over RMS of
the x86 output) and the largest absolute difference. Emulated time is not ARM speed:
under emulation no timing is reported.

On an aarch64 machine (a Raspberry Pi, a Graviton instance, a phone under Termux) the same
command runs natively with the installed onnxruntime and reports real latency (median,
p90, min of --runs runs). With --reference REF.npz it compares with outputs an x86 run
saved with --save-reference REF.npz (same --input-shape / --inputs, same seed).

int8 models (``compress --int8``) run on ARM's integer kernels, which round requantized
values their own way: their outputs are checked against x86 within --int8-tolerance (a few
quantization steps) instead of --tolerance.

Exit 0 when every output is within its tolerance, 1 when one is not, 2 for bad input.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from wnc_onnx.check.verify import compare_output  # noqa: E402
from wnc_onnx.data.feeds import parse_input_shapes, parse_input_values, random_inputs  # noqa: E402
from wnc_onnx.errors import WncError, one_line  # noqa: E402
from wnc_onnx.rewrite.int8_quantize import quantized_nodes  # noqa: E402

RUNNER = Path(__file__).with_name("on_arm_runner.py")
# What Python 3.11 from Debian 12 needs to run numpy and onnxruntime (no sqlite, curses, ...)
DEBS = [
    "python3.11-minimal",
    "libpython3.11-minimal",
    "libpython3.11-stdlib",
    "libc6",
    "libexpat1",
    "zlib1g",
    "libffi8",
    "libssl3",
    "libbz2-1.0",
    "liblzma5",
    "libstdc++6",
    "libgcc-s1",
    "libcrypt1",
]
# Under Debian 12's qemu 7.2, onnxruntime's aarch64 builds up to 1.26 run; 1.30 and newer crash.
DEFAULT_ORT = "1.26.0"
NUMPY = "2.2.6"
ARM = ("aarch64", "arm64")


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def cache_root() -> Path:
    root = os.environ.get("WNC_ONNX_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "wnc-onnx") / "arm"


def _run(cmd: list[str], what: str, fix: str, **kw: object) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, capture_output=True, text=True, **kw)  # type: ignore[call-overload]
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or proc.stdout.strip().splitlines() or ["no output"])[-1]
        raise WncError(f"{what} failed: {last[:200]}", fix)
    return proc


def qemu() -> str:
    found = shutil.which("qemu-aarch64-static")
    if found:
        return found
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise WncError(
            "qemu-aarch64-static is not installed", "sudo apt-get install qemu-user-static (Debian / Ubuntu)"
        )
    say("installing qemu-user-static with apt-get ...")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    _run(
        ["apt-get", "install", "-y", "-q", "qemu-user-static"],
        "apt-get install qemu-user-static",
        "check the network to the Debian mirror, or install it by hand",
        env=env,
    )
    found = shutil.which("qemu-aarch64-static")
    if not found:
        raise WncError("qemu-user-static installed no qemu-aarch64-static", "install qemu-user-static by hand")
    return found


def sysroot(ort_version: str) -> Path:
    """An arm64 root with Python 3.11, numpy and onnxruntime ``ort_version`` (built once)."""
    root = cache_root() / f"ort-{ort_version}"
    if (root / ".ready").is_file():
        return root
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise WncError("the arm64 Python is set up with apt-get, which needs root", "run it once as root (sudo)")
    tmp = Path(tempfile.mkdtemp(prefix="arm-", dir=cache_root().parent if cache_root().parent.exists() else None))
    try:
        archs = _run(["dpkg", "--print-foreign-architectures"], "dpkg", "is this Debian or Ubuntu?").stdout.split()
        if "arm64" not in archs:
            say("adding the arm64 architecture to apt's package lists ...")
            _run(["dpkg", "--add-architecture", "arm64"], "dpkg --add-architecture arm64", "run as root")
            _run(["apt-get", "update", "-q"], "apt-get update", "check the network to the Debian mirror")
        debs = tmp / "debs"
        debs.mkdir()
        say("downloading Debian's arm64 Python 3.11 ...")
        _run(
            ["apt-get", "download", *[f"{p}:arm64" for p in DEBS]],
            "apt-get download",
            "run 'apt-get update' (the arm64 lists may be stale)",
            cwd=debs,
        )
        stage = tmp / "root"
        for deb in sorted(debs.glob("*.deb")):
            _run(["dpkg-deb", "-x", str(deb), str(stage)], f"unpacking {deb.name}", "check the disk space")
        say(f"downloading onnxruntime {ort_version} and numpy {NUMPY} for aarch64 ...")
        wheels = tmp / "wheels"
        platforms = [
            a
            for p in ("manylinux2014_aarch64", "manylinux_2_27_aarch64", "manylinux_2_28_aarch64")
            for a in ("--platform", p)
        ]
        pip = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "-d", str(wheels)]
        aarch64 = [*platforms, "--python-version", "311", "--implementation", "cp"]
        _run(
            [*pip, *aarch64, f"onnxruntime=={ort_version}", f"numpy=={NUMPY}"],
            "pip download of the aarch64 wheels",
            f"check that onnxruntime {ort_version} has an aarch64 wheel on PyPI",
        )
        _run([*pip, "flatbuffers", "packaging"], "pip download", "check the network to PyPI")
        site = stage / "site"
        site.mkdir()
        import zipfile

        for whl in wheels.glob("*.whl"):
            with zipfile.ZipFile(whl) as z:
                z.extractall(site)
        (stage / ".ready").write_text(ort_version + "\n")
        if root.exists():
            shutil.rmtree(root)
        root.parent.mkdir(parents=True, exist_ok=True)
        os.replace(stage, root)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root


def arm_command(ort_version: str) -> tuple[list[str], dict[str, str]]:
    """How to start a Python on ARM: natively, or an arm64 Python under qemu."""
    if platform.machine().lower() in ARM:
        return [sys.executable], dict(os.environ)
    if platform.system() != "Linux":
        raise WncError("emulating ARM needs Linux (qemu-user)", "run this on a Linux host or on the ARM board itself")
    q = qemu()
    root = sysroot(ort_version)
    env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(root / "site"), "HOME": os.environ.get("HOME", "/")}
    return [q, "-L", str(root), str(root / "usr" / "bin" / "python3.11")], env


def compare(ref: dict[str, np.ndarray], got: dict[str, np.ndarray]) -> list[dict[str, object]]:
    """Per output, the ARM result against x86 with --verify's float error (RMS of the
    difference over RMS of the reference); a missing or reshaped output is an infinite error."""
    rows: list[dict[str, object]] = []
    for name, a in ref.items():
        b = got.get(name)
        if b is None or b.shape != a.shape:
            rows.append({"output": name, "shape": list(a.shape), "error": float("inf"), "max_abs": float("inf")})
            continue
        d = compare_output(name, "float", a, b)
        rows.append({"output": name, "shape": d.shape, "error": d.error, "max_abs": d.max_abs})
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="+")
    ap.add_argument("--input-shape", action="append", default=[])
    ap.add_argument("--input-value", action="append", default=[])
    ap.add_argument("--inputs", help="inputs: one array per model input (.npz)")
    ap.add_argument("--ort-version", default=DEFAULT_ORT, help="onnxruntime for the emulated arm64 Python")
    ap.add_argument("--tolerance", type=float, default=1e-3)
    ap.add_argument("--int8-tolerance", type=float, default=0.02, help="for quantized (int8) models")
    ap.add_argument("--runs", type=int, default=50, help="timed runs on real ARM hardware")
    ap.add_argument("--reference", help="on ARM: x86 outputs saved with --save-reference")
    ap.add_argument("--save-reference", help="on x86: save the host's outputs for a later run on a board")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    try:
        return _main(a)
    except WncError as exc:
        print(f"on_arm: error: {exc}", file=sys.stderr)
        return 2


def _main(a: argparse.Namespace) -> int:
    paths = [Path(m) for m in a.models]
    for p in paths:
        if not p.is_file():
            raise WncError(f"model not found: {p}", "check the path")
    try:
        first = onnx.load(str(paths[0]), load_external_data=False)
    except Exception as exc:
        raise WncError(f"cannot read {paths[0]} as an ONNX model: {one_line(exc, 120)}", "pass an .onnx file") from None
    if a.inputs:
        feeds = dict(np.load(a.inputs))
    else:
        shapes = {k: tuple(v) for k, v in parse_input_shapes(a.input_shape).items()}
        feeds = random_inputs(first, shapes, seed=0, values=parse_input_values(a.input_value))
    native = platform.machine().lower() in ARM
    with tempfile.TemporaryDirectory(prefix="wnc-arm-") as tmp:
        inputs = Path(tmp) / "inputs.npz"
        np.savez(inputs, **feeds)
        reference: list[dict[str, np.ndarray]] = []
        if not native:
            import onnxruntime as ort

            for p in paths:
                try:
                    s = ort.InferenceSession(str(p), providers=["CPUExecutionProvider"])
                except Exception as exc:
                    raise WncError(f"onnxruntime cannot load {p}: {one_line(exc, 150)}", "check the model") from None
                outs = s.run(None, {i.name: feeds[i.name] for i in s.get_inputs()})
                reference.append({o.name: v for o, v in zip(s.get_outputs(), outs, strict=True)})
            if a.save_reference:
                np.savez(a.save_reference, **{f"{k}/{n}": v for k, r in enumerate(reference) for n, v in r.items()})
        elif a.reference:
            saved = dict(np.load(a.reference))
            reference = [
                {n.split("/", 1)[1]: v for n, v in saved.items() if n.startswith(f"{k}/")} for k in range(len(paths))
            ]
        cmd, env = arm_command(a.ort_version)
        say(
            ("running natively on " if native else "running under qemu-aarch64 (emulated ARM) on ") + platform.machine()
        )
        targets = [str(p.resolve()) for p in paths]
        notes: list[str] = []
        for _ in range(2):
            run = [*cmd, str(RUNNER), tmp, str(inputs), *targets]
            if native:
                run += ["--time", str(a.runs)]
            proc = subprocess.run(run, capture_output=True, text=True, env=env, timeout=3600)
            last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            found = re.search(r"max supported IR version: (\d+)", proc.stderr)
            if proc.returncode == 0 or found is None or notes:
                break
            # A newer IR version than this onnxruntime reads: the same graph, labelled with the older
            # version (the outputs are compared next, so a model that needed the newer IR would show).
            ir = int(found.group(1))
            targets = []
            for k, p in enumerate(paths):
                m = onnx.load(str(p))
                if m.ir_version > ir:
                    notes.append(f"{p.name}: IR {m.ir_version} written as IR {ir} for onnxruntime {a.ort_version}")
                    m.ir_version = ir
                dst = Path(tmp) / f"model{k}.onnx"
                onnx.save(m, dst)
                targets.append(str(dst))
        if proc.returncode != 0:
            raise WncError(f"the ARM run failed: {last[:200]}", f"try another --ort-version (default {DEFAULT_ORT})")
        for n in notes:
            say(f"note: {n}")
        info = json.loads(proc.stdout.strip().splitlines()[-1])
        outputs = [dict(np.load(Path(tmp) / f"{k}.npz")) for k in range(len(paths))]
    rows = []
    for k, p in enumerate(paths):
        int8 = bool(quantized_nodes(onnx.load(str(p), load_external_data=False)))
        limit = a.int8_tolerance if int8 else a.tolerance
        if reference:
            for r in compare(reference[k], outputs[k]):
                rows.append({"model": p.name, **r, "int8": int8, "tolerance": limit, "passed": r["error"] <= limit})
    timings = [m for m in info["models"] if "median_ms" in m] if native else []
    result = {
        "arm": {
            "machine": info["machine"],
            "onnxruntime": info["onnxruntime"],
            "providers": info["providers"],
            "emulated": not native,
        },
        "outputs": rows,
        "timings": timings if native else "not reported: emulated time is not ARM speed",
        "tolerance": a.tolerance,
        "notes": notes,
    }
    if a.json:
        print(json.dumps(result, indent=1))
    else:
        where = "emulated (qemu-aarch64)" if not native else "native"
        print(
            f"ARM side: {info['machine']} {where}, onnxruntime {info['onnxruntime']}, "
            f"providers {', '.join(info['providers'])}"
        )
        if rows:
            print("| model | output | shape | error vs x86 | max abs | tolerance | ok |")
            print("|---|---|---|---:|---:|---:|---|")
            for r in rows:
                print(
                    f"| {r['model']} | {r['output']} | {r['shape']} | {r['error']:.2e} | {r['max_abs']:.2e} "
                    f"| {r['tolerance']:g}{' (int8)' if r['int8'] else ''} | {'yes' if r['passed'] else 'NO'} |"
                )
        if native:
            for m in timings:
                print(
                    f"{Path(m['model']).name}: median {m['median_ms']:.3f} ms, p90 {m['p90_ms']:.3f} ms, "
                    f"min {m['min_ms']:.3f} ms ({a.runs} runs)"
                )
        else:
            print("timings: not reported (emulated: qemu's time is not ARM speed; run this on an ARM board for it)")
    return 0 if all(r["passed"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
