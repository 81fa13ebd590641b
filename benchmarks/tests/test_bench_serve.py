"""bench_serve.py's own logic: the batch-size histogram read from /metrics, its percentiles."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1]


def _bench():
    sys.path.insert(0, str(BENCH))
    try:
        spec = importlib.util.spec_from_file_location("_bench_serve", BENCH / "bench_serve.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(BENCH))


METRICS = """\
credit_compile_batch_size_bucket{le="1.0"} 3.0
credit_compile_batch_size_bucket{le="2.0"} 3.0
credit_compile_batch_size_bucket{le="3.0"} 4.0
credit_compile_batch_size_bucket{le="4.0"} 4.0
credit_compile_batch_size_bucket{le="6.0"} 6.0
credit_compile_batch_size_bucket{le="8.0"} 9.0
credit_compile_batch_size_bucket{le="+Inf"} 10.0
credit_compile_batch_size_count 10.0
credit_compile_generate_calls_total 10.0
"""


def test_the_batch_histogram_counts_calls_per_bucket():
    bench = _bench()
    assert bench.batch_histogram(METRICS) == {"1": 3, "3": 1, "5-6": 2, "7-8": 3, ">8": 1}
    assert bench.metric(METRICS, "credit_compile_generate_calls_total") == 10.0
    assert bench.metric(METRICS, "no_such_metric") == 0.0


def test_percentiles_are_of_the_sorted_values():
    bench = _bench()
    values = [5.0, 1.0, 3.0, 2.0, 4.0]
    assert bench.percentile(values, 50) == 3.0
    assert bench.percentile(values, 99) == 5.0
    assert bench.percentile(values, 0) == 1.0
