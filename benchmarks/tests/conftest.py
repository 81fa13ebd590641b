"""Test-session setup for the benchmark harness's tests (the package's are in tests/conftest.py).

Under pytest-xdist the workers already use every core: an Inductor compile pool of subprocesses
per worker would only oversubscribe them. Set before torch reads its compiler config.
"""

import os

if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # tests/conftest.py says why

import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

TESTS = str(Path(__file__).resolve().parents[2] / "tests")
if TESTS not in sys.path:
    sys.path.append(TESTS)


@pytest.fixture
def cheap_compile(monkeypatch):
    """tests/conftest.py's: optimized models compile without Inductor's code generation, for
    tests of a benchmark's own logic (Inductor's code is proven equal in tests/)."""
    from helpers import use_cheap_backend

    use_cheap_backend(monkeypatch)
