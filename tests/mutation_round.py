"""A mutation-testing round over what the cheap_compile tests cover (a developer tool, not a test).

    python tests/mutation_round.py [--only NAME ...] [--modes cheap inductor]

Each mutant is one edit of a source line; it is killed when the tests named for it fail. Each
runs first as the suite is (`cheap`: tests marked cheap_compile compile without Inductor's code
generation); one that survives runs again with every test on Inductor
(CREDIT_COMPILE_TEST_INDUCTOR=1). The cheap backend must kill every mutant Inductor kills, so a
mutant killed only under Inductor fails the round. Run it from a checkout whose source may be
edited (it restores each file afterwards) and whose package is the one imported (an editable
install of this checkout).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# (name, file, original text, mutated text, tests that should kill it)
MUTANTS = [
    ("cache-keeps-steps-of-a-changed-model", "credit_compile/step_cache.py",
     "if fingerprint != self._fingerprint:", "if False:", ["tests/test_optimize.py"]),
    ("cache-forgets-recent-use", "credit_compile/step_cache.py",
     "self._runners.move_to_end(key)", "pass", ["tests/test_optimize.py"]),
    ("cache-drops-the-newest", "credit_compile/step_cache.py",
     "popitem(last=False)", "popitem(last=True)", ["tests/test_optimize.py"]),
    ("cache-key-without-padding", "credit_compile/step_cache.py",
     "state.gen_start, state.attention_mask is not None,", "state.gen_start,",
     ["tests/test_optimize.py", "tests/test_prompt_buckets.py"]),
    ("cache-size-zero-allowed", "credit_compile/step_cache.py",
     "and value > 0)", "and value >= 0)", ["tests/test_optimize.py"]),
    ("seed-in-the-step-key", "credit_compile/step_cache.py",
     'drop = {"seed": None, ', "drop = {", ["tests/test_optimize.py"]),
    ("initial-state-not-kept-apart", "credit_compile/step_cache.py",
     "initial = {name: t.clone() for name, t in initial.items()}", "initial = dict(initial)",
     ["tests/test_optimize.py", "tests/test_runner.py"]),
    ("warm-up-moves-the-rng", "credit_compile/step_cache.py",
     "with rng_untouched(state.device):  # warm-up", "with torch.no_grad():  # warm-up",
     ["tests/test_optimize.py", "tests/test_runner.py"]),
    ("dropped-step-not-warned", "credit_compile/step_cache.py",
     "            log.warning(\n                \"credit_compile: dropped the compiled step",
     "            log.debug(\n                \"credit_compile: dropped the compiled step",
     ["tests/test_optimize.py"]),
    ("compile-time-reported-twice", "credit_compile/api.py",
     "        runner.compile_seconds = 0.0  # reported once", "        pass  # reported once",
     ["tests/test_optimize.py", "tests/test_runner.py"]),
    ("compile-time-counted-as-decoding", "credit_compile/api.py",
     '"decode_seconds": elapsed - compiled_inside,', '"decode_seconds": elapsed,',
     ["tests/test_optimize.py", "tests/test_runner.py"]),
    ("re-entry-allowed", "credit_compile/api.py",
     "if self._lock_owner == threading.get_ident():", "if False:",
     ["tests/test_optimize.py", "tests/test_streaming.py"]),
    ("precompile-moves-the-rng", "credit_compile/api.py",
     "with self._exclusive(), rng_untouched(device):", "with self._exclusive():",
     ["tests/test_optimize.py"]),
    ("precompile-padded-without-padding", "credit_compile/api.py",
     "            attention_mask[:, 0] = 0\n", "            pass\n",
     ["tests/test_optimize.py", "tests/test_prompt_buckets.py"]),
    ("recompile-not-warned", "credit_compile/runner.py",
     "            if phase in self._compiled:\n                log.warning(",
     "            if False:\n                log.warning(", ["tests/test_runner.py"]),
    ("fallback-not-marked-eager", "credit_compile/runner.py",
     '        self.kind = "eager"\n\n    def ensure_compiled', "\n    def ensure_compiled",
     ["tests/test_runner.py", "tests/test_optimize.py"]),
    ("precompile-compiles-nothing", "credit_compile/runner.py",
     "            if phase not in self._compiled and not self.fell_back:",
     "            if False:", ["tests/test_optimize.py", "tests/test_runner.py"]),
    ("verify-compares-the-last-call-only", "credit_compile/verify.py",
     "differing = next((out for out in outputs\n", "differing = next((out for out in outputs[-1:]\n",
     ["tests/test_verify.py"]),
    ("verify-one-timed-call", "credit_compile/verify.py",
     "(len(seconds) < min_calls or sum(seconds) < budget_seconds)", "len(seconds) < 1",
     ["tests/test_verify.py"]),
    ("verify-ok-ignores-nfe", "credit_compile/verify.py",
     "return self.tokens_equal and self.nfe_reference == self.nfe_optimized",
     "return self.tokens_equal", ["tests/test_verify.py", "tests/test_cli.py"]),
    ("batch-bucket-pads-with-the-first-row", "credit_compile/prompt_buckets.py",
     "torch.cat([t, t[-1:].expand(added, -1)])", "torch.cat([t, t[:1].expand(added, -1)])",
     ["tests/test_prompt_buckets.py"]),
    ("batch-bucket-rounds-down", "credit_compile/prompt_buckets.py",
     "return -(-n // multiple) * multiple", "return (n // multiple) * multiple or multiple",
     ["tests/test_prompt_buckets.py"]),
    ("cli-verify-exit-ignores-the-verdict", "credit_compile/cli.py",
     "return 0 if report.ok else 1", "return 0", ["tests/test_cli.py"]),
    ("cli-no-compile-ignored", "credit_compile/cli.py",
     'compile=not getattr(args, "no_compile", False)', "compile=True", ["tests/test_cli.py"]),
]


def run_tests(tests: list[str], inductor: bool, timeout: float) -> bool:
    """Whether the tests pass (a timeout counts as a kill: the mutant hung them)."""
    env = dict(os.environ, CREDIT_COMPILE_TEST_INDUCTOR="1" if inductor else "0")
    env.pop("CI", None)
    try:
        done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
                               "-n", "0", *tests], cwd=ROOT, env=env, capture_output=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        return False
    return done.returncode == 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", help="mutant names (default: all)")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per test run")
    parser.add_argument("--out", help="append a JSON line per mutant here")
    args = parser.parse_args(argv)
    chosen = [m for m in MUTANTS if not args.only or m[0] in args.only]
    lost, survived = [], []
    for name, file, old, new, tests in chosen:
        path = ROOT / file
        source = path.read_text()
        if source.count(old) != 1:
            print(f"{name}: its text is not in {file} exactly once; update the mutant", flush=True)
            return 2
        row = {"mutant": name, "file": file}
        try:
            path.write_text(source.replace(old, new))
            for mode in ("cheap", "inductor"):
                start = time.perf_counter()
                killed = not run_tests(tests, mode == "inductor", args.timeout)
                row[mode] = {"killed": killed, "seconds": round(time.perf_counter() - start, 1)}
                if killed:
                    break
        finally:
            path.write_text(source)
        if not row["cheap"]["killed"]:
            (lost if row["inductor"]["killed"] else survived).append(name)
        print(json.dumps(row), flush=True)
        if args.out:
            with open(args.out, "a") as out:
                out.write(json.dumps(row) + "\n")
    print(f"{len(chosen) - len(lost) - len(survived)}/{len(chosen)} killed by the suite as it is; "
          f"killed under Inductor only: {lost}; survived both: {survived}")
    return 1 if lost else 0


if __name__ == "__main__":
    sys.exit(main())
