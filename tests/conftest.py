"""Test-session setup.

Triton kernels run on the CPU through Triton's interpreter; it must be chosen before the first
`import triton`, which is why this happens here and not in the package (no import-time side
effects in credit_compile itself).
"""

import os

# Under pytest-xdist (`-n auto`) the workers already use every core: an Inductor compile pool of
# subprocesses per worker would only oversubscribe them (a cold run of the cache tests took 3:40
# with the pools, 3:04 without, on 2 cores). Set before torch reads its compiler config.
# Likewise one intra-op thread per worker: two workers of two OpenMP threads each on two cores
# spin against each other (a cold run of the schedule and loop tests took 162 s so, 76 s with one
# thread each, under a load of 5). The processes the tests start inherit it.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")
    os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
from helpers import use_cheap_backend  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

settings.register_profile(
    "ci",
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    derandomize=True,
)
settings.register_profile(
    "dev",
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
settings.load_profile("ci" if os.environ.get("CI") else os.environ.get("HYPOTHESIS_PROFILE", "dev"))


@pytest.fixture(autouse=True)
def _cheap_compile_where_marked(request):
    """`@pytest.mark.cheap_compile` (or a module's `pytestmark`) applies `cheap_compile`, but to
    tests marked `inductor`, and not at all under CREDIT_COMPILE_TEST_INDUCTOR=1 (every test on
    Inductor: what tests/mutation_round.py compares the cheap backend with)."""
    marked = request.node.get_closest_marker
    everywhere = os.environ.get("CREDIT_COMPILE_TEST_INDUCTOR") == "1"
    if marked("cheap_compile") is not None and marked("inductor") is None and not everywhere:
        request.getfixturevalue("cheap_compile")


@pytest.fixture
def cheap_compile(monkeypatch):
    """Optimized models compile their step with dynamo and the FX passes but run the traced graph
    eagerly, without Inductor's code generation (seconds less per compile). For tests of what
    surrounds the compiled step (the step cache, threads, warnings, the CLI's output, verify's
    report); the tests that prove Inductor's code equal to the reference keep Inductor."""
    use_cheap_backend(monkeypatch)
