"""Real files of this machine, typed by their extension: what a file-type detector reads.

The files come from the system's own folders and the Python environment (source, bytecode,
shared objects, fonts, images, compressed man pages, configuration, docs...), walked in sorted
order and drawn with a seeded generator, at most ``per_type`` files of each type, so no type
crowds out the rest. A file's type is its extension's (``EXTENSIONS``): a label that is true
of the file and never comes from a model (``.txt`` and ``.h`` are left out: on this system
most ``.txt`` files are reStructuredText or Markdown, and a header is C or C++ alike).
Files under 64 bytes are left out (too little to type from).

``magika_bytes`` turns a file into Magika's input: the first and the last 1 KiB of it (after
stripping the whitespace at the start of its first 4 KiB block and at the end of its last),
256 as padding, as the package's own feature extraction does (its config: beg_size 1024,
end_size 1024, block_size 4096, padding_token 256).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

EXTENSIONS = {
    ".py": "python", ".pyi": "python", ".pyc": "pythonbytecode", ".c": "c", ".cpp": "cpp",
    ".cc": "cpp", ".hpp": "cpp", ".json": "json", ".png": "png", ".svg": "svg", ".ttf": "ttf",
    ".gz": "gzip", ".so": "elf", ".html": "html", ".htm": "html", ".css": "css", ".js": "javascript",
    ".sh": "shell", ".xml": "xml", ".md": "markdown", ".rst": "rst", ".csv": "csv",
    ".toml": "toml", ".ini": "ini", ".pdf": "pdf", ".jpg": "jpeg", ".jpeg": "jpeg", ".gif": "gif",
    ".zip": "zip", ".whl": "zip", ".pem": "pem", ".pl": "perl", ".pm": "perl", ".rb": "ruby",
    ".tcl": "tcl", ".yaml": "yaml", ".yml": "yaml", ".xz": "xz", ".bz2": "bzip", ".tar": "tar",
    ".npy": "npy", ".npz": "npz", ".onnx": "onnx", ".pkl": "pickle", ".pickle": "pickle", ".ico": "ico",
    ".bmp": "bmp", ".tif": "tiff", ".tiff": "tiff", ".woff": "woff", ".woff2": "woff2", ".otf": "otf",
    ".po": "po", ".go": "go", ".rs": "rust", ".java": "java", ".ts": "typescript", ".lua": "lua",
    ".sql": "sql", ".diff": "diff", ".patch": "diff", ".tex": "latex", ".m4": "m4", ".cmake": "cmake",
    ".awk": "awk", ".jar": "jar", ".ipynb": "ipynb", ".bat": "batch", ".ps1": "powershell",
}  # fmt: skip
ROOTS = ["/usr/share", "/usr/lib", "/usr/include", "/etc", "/usr/bin", sys.prefix]


@dataclass
class Files:
    paths: list[Path]
    types: list[str]  # the extension's type, one per path


def collect(per_type: int = 60, seed: int = 0, roots: list[str] | None = None, min_bytes: int = 64) -> Files:
    """Up to ``per_type`` real files of each type in ``EXTENSIONS`` under ``roots``."""
    by_type: dict[str, list[Path]] = {}
    seen: set[tuple[int, int]] = set()
    for root in roots or ROOTS:
        for folder, dirs, names in os.walk(root):
            dirs.sort()
            for name in sorted(names):
                kind = EXTENSIONS.get(Path(name).suffix.lower())
                path = Path(folder) / name
                if kind is None or path.is_symlink():
                    continue
                try:
                    st = path.stat()
                except OSError:
                    continue
                if st.st_size < min_bytes or (st.st_dev, st.st_ino) in seen:
                    continue
                seen.add((st.st_dev, st.st_ino))
                by_type.setdefault(kind, []).append(path)
    rng = np.random.default_rng(seed)
    paths, types = [], []
    for kind in sorted(by_type):
        found = by_type[kind]
        for k in rng.permutation(len(found))[:per_type]:
            paths.append(found[int(k)])
            types.append(kind)
    return Files(paths, types)


def magika_bytes(path: Path, beg: int = 1024, end: int = 1024, block: int = 4096, pad: int = 256) -> np.ndarray:
    """Magika's (beg + end,) int32 input for one file."""
    with open(path, "rb") as f:
        size = f.seek(0, 2)
        f.seek(0)
        head = f.read(min(block, size)).lstrip()[:beg]
        f.seek(max(0, size - block))
        tail = f.read().rstrip()[-end:] if end else b""
    out = np.full(beg + end, pad, np.int32)
    out[: len(head)] = np.frombuffer(head, np.uint8)
    if tail:
        out[beg + end - len(tail) :] = np.frombuffer(tail, np.uint8)
    return out
