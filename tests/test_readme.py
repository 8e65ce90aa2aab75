"""The README's examples run: its Python blocks and its `wnc-onnx` command lines, on the
demo CNN saved as model.onnx (input `image`, layers conv1-conv4, fc1, fc2)."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from PIL import Image

from wnc_onnx.zoo import demo_cnn

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README, flags=re.S)


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    onnx.save(demo_cnn(), tmp_path / "model.onnx")
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "inputs.npz", image=rng.standard_normal((96, 3, 32, 32)).astype("f4"))  # also --calibration
    (tmp_path / "images").mkdir()
    for i in range(24):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(tmp_path / "images" / f"{i}.png")
    (tmp_path / "ranks.json").write_text(json.dumps({"conv2": [12, 20], "fc2": 8}))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_readme_python_examples_run(workdir):
    code = [b for b in blocks("python") if "wnc_onnx.compress" in b]
    assert code, "the README lost its Python API example"
    for block in code:
        exec(compile(block, "README.md", "exec"), {})
    assert (workdir / "model.small.onnx").is_file()


def commands() -> list[list[str]]:
    found = []
    for block in blocks("sh"):
        for line in block.splitlines():
            line = line.split("#", 1)[0].strip()
            # fine-tuning (finetune, --distill) needs torch: the training environment's tests run those
            if line.startswith("wnc-onnx ") and " finetune " not in f" {line} " and "--distill" not in line:
                found.append(shlex.split(line)[1:])
    return found


def test_readme_commands_run(workdir):
    found = commands()
    assert len(found) >= 5
    for args in found:
        proc = subprocess.run(
            [sys.executable, "-m", "wnc_onnx", *args, "-q"], capture_output=True, text=True, timeout=300, cwd=workdir
        )
        assert proc.returncode == 0, (args, proc.stderr)
        assert "Traceback" not in proc.stderr


def test_readme_demo_table_is_what_demo_prints(tmp_path):
    """The demo's table in the README is the one `wnc-onnx demo` prints today."""
    proc = subprocess.run(
        [sys.executable, "-m", "wnc_onnx", "demo", str(tmp_path / "d"), "-q"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    printed = [ln.rstrip() for ln in proc.stdout.splitlines() if ln.startswith(("conv", "fc", "6 of 6"))]
    shown = [ln[4:].rstrip() for ln in README.splitlines() if ln.startswith(("    conv", "    fc", "    6 of 6"))]
    assert printed and printed == shown


def _anchors(text: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to dashes."""
    out = set()
    for line in text.splitlines():
        m = re.match(r"#{1,6} (.+)", line)
        if m:
            out.add(re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-"))
    return out


def test_every_relative_link_and_anchor_resolves():
    pages = [ROOT / "README.md", ROOT / "CHANGELOG.md", *sorted((ROOT / "docs").glob("*.md"))]
    broken = []
    for page in pages:
        text = page.read_text(encoding="utf-8")
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+://|mailto:", target):
                continue
            path, _, anchor = target.partition("#")
            dest = (page.parent / path).resolve() if path else page
            if not dest.exists():
                broken.append(f"{page.name}: {target} (no such file)")
            elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest.read_text(encoding="utf-8")):
                broken.append(f"{page.name}: {target} (no such heading)")
    assert broken == []
