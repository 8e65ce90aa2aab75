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
