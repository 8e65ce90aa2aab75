from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def shared_dir() -> Path:
    """../shared beside the checkout (CI puts it there)."""
    return ROOT.parent / "shared"


@pytest.fixture
def tables_json() -> Path:
    path = shared_dir() / "paper" / "kim2016_tables.json"
    if not path.is_file():
        pytest.fail(f"{path} is missing: the test suite needs ../shared beside the checkout")
    return path


@pytest.fixture(autouse=True)
def private_latency_cache(request, tmp_path_factory, monkeypatch):
    """Latency timings go to a cache of the test session's own (``$WNC_ONNX_CACHE``), never the
    user's ~/.cache: a test neither reads timings another run took under load nor leaves its own.
    The ARM emulation test keeps the real cache root (its arm64 Python set-up lives there)."""
    if request.module.__name__.endswith("test_on_arm"):
        return
    monkeypatch.setenv("WNC_ONNX_CACHE", str(tmp_path_factory.getbasetemp() / "wnc-onnx-cache"))
