"""The automatic thread count: free cores, not all cores; capped by the environment."""

import pytest

from wnc_onnx.io import threads


@pytest.fixture(autouse=True)
def fresh(monkeypatch):
    monkeypatch.setattr(threads, "_cached", None)
    for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(threads, "usable_cores", lambda: 4)


def sampled(monkeypatch, idle_fraction):
    samples = iter([(0, 0), (int(1000 * idle_fraction), 1000)])
    monkeypatch.setattr(threads, "_cpu_times", lambda: next(samples))
    monkeypatch.setattr(threads.time, "sleep", lambda s: None)


def test_explicit_count_wins():
    assert threads.resolve(3) == (3, "--threads")


@pytest.mark.parametrize("idle,expected", [(1.0, 4), (0.5, 2), (0.05, 1)])
def test_default_is_the_free_cores(monkeypatch, idle, expected):
    sampled(monkeypatch, idle)
    assert threads.resolve(0)[0] == expected


def test_environment_caps_the_default(monkeypatch):
    sampled(monkeypatch, 1.0)
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "1")
    n, why = threads.resolve(0)
    assert n == 1 and "environment" in why


def test_the_choice_is_kept_briefly(monkeypatch):
    sampled(monkeypatch, 1.0)
    first = threads.resolve(0)
    monkeypatch.setattr(threads, "_cpu_times", lambda: pytest.fail("sampled again"))
    assert threads.resolve(0) == first


def test_without_proc_stat_or_a_load_average_all_cores_are_used(monkeypatch):
    """Platforms without /proc/stat fall back to os.getloadavg; where that is missing too
    (Windows), the count is every usable core, not an AttributeError."""
    monkeypatch.setattr(threads, "_cpu_times", lambda: None)
    monkeypatch.delattr(threads.os, "getloadavg", raising=False)
    assert threads.load_average() is None
    assert threads.free_cores() == 4.0
    assert threads.resolve(0)[0] == 4


def test_without_proc_stat_the_load_average_counts(monkeypatch):
    monkeypatch.setattr(threads, "_cpu_times", lambda: None)
    monkeypatch.setattr(threads.os, "getloadavg", lambda: (2.5, 0.0, 0.0))
    assert threads.free_cores() == 1.5
    assert threads.resolve(0)[0] == 2
