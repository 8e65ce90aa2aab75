"""The CI's own checks: .ci/check_tests.py finds tests that assert nothing."""

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / ".ci" / "check_tests.py"


def _check(folder: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), str(folder)], capture_output=True, text=True, timeout=60)


def test_a_test_without_an_assertion_fails_the_check(tmp_path):
    (tmp_path / "helpers.py").write_text("def same(a, b):\n    assert a == b\n")
    (tmp_path / "test_x.py").write_text(
        "import pytest\n"
        "from helpers import same\n\n"
        "def _local(x):\n    return same(x, x)\n\n"
        "def test_direct():\n    assert 1\n\n"
        "def test_through_helpers():\n    _local(1)\n\n"
        "def test_raises():\n    with pytest.raises(ValueError):\n        int('x')\n\n"
        "def test_numpy():\n    import numpy as np\n    np.testing.assert_allclose(1, 1)\n\n"
        "def test_nothing():\n    x = 1 + 1\n"
    )
    proc = _check(tmp_path)
    assert proc.returncode == 1
    assert proc.stdout.splitlines()[:-1] == [f"no assertion: {tmp_path / 'test_x.py'}::test_nothing"]
    assert "5 tests checked, 1 without an assertion" in proc.stdout


def test_the_suite_passes_the_check():
    proc = _check(Path(__file__).resolve().parent)
    assert proc.returncode == 0, proc.stdout
