"""Test-session setup for the benchmark harness's tests (the package's are in tests/conftest.py).

Under pytest-xdist the workers already use every core: an Inductor compile pool of subprocesses
per worker would only oversubscribe them. Set before torch reads its compiler config.
"""

import os

if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")
