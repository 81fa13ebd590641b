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
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# (name, file, original text, mutated text, the tests (pytest -k) that should kill it): by test
# name, so the round holds wherever the tests live.
MUTANTS = [
    ("cache-keeps-steps-of-a-changed-model", "credit_compile/step_cache.py",
     "if fingerprint != self._fingerprint:", "if False:",
     "changed_between_calls_drops or changed_through_the_wrapped or loaded_weights_are_decoded"),
    ("cache-forgets-recent-use", "credit_compile/step_cache.py",
     "self._runners.move_to_end(key)", "pass", "least_recently_used"),
    ("cache-drops-the-newest", "credit_compile/step_cache.py",
     "popitem(last=False)", "popitem(last=True)", "least_recently_used"),
    ("cache-key-without-padding", "credit_compile/step_cache.py",
     "state.block_start, state.attention_mask is not None,", "state.block_start,",
     "precompile_padded or serves_every_length or padded_batch_and_an_unpadded"),
    ("cache-size-zero-allowed", "credit_compile/step_cache.py",
     "and value > 0)", "and value >= 0)", "max_cached_steps"),
    ("seed-in-the-step-key", "credit_compile/step_cache.py",
     'drop = {"seed": None, ', "drop = {", "options_the_step_does_not_read"),
    ("initial-state-not-kept-apart", "credit_compile/step_cache.py",
     "initial = {name: t.clone() for name, t in initial.items()}", "initial = dict(initial)",
     "second_call_reuses_state or concurrent_calls or precompile_pays or unrolled_replay_protocol"),
    ("warm-up-moves-the-rng", "credit_compile/step_cache.py",
     "with rng_untouched(state.device):  # warm-up", "with torch.no_grad():  # warm-up",
     "rng or unrolled_replay_protocol"),
    ("dropped-step-not-warned", "credit_compile/step_cache.py",
     "            log.warning(\n                \"credit_compile: dropped the compiled step",
     "            log.debug(\n                \"credit_compile: dropped the compiled step",
     "says_so_when_it_compiles_again or least_recently_used"),
    ("compile-time-reported-twice", "credit_compile/api.py",
     "        runner.compile_seconds = 0.0  # reported once", "        pass  # reported once",
     "decode_seconds or precompile_pays or each_output_carries or reported_by_the_call"),
    ("compile-time-counted-as-decoding", "credit_compile/api.py",
     '"decode_seconds": elapsed - compiled_inside,', '"decode_seconds": elapsed,',
     "decode_seconds"),
    ("re-entry-allowed", "credit_compile/api.py",
     "if self._lock_owner == threading.get_ident():", "if False:",
     "inside_generate or from_on_block or inside_its_own"),
    ("precompile-moves-the-rng", "credit_compile/api.py",
     "with self._exclusive(), rng_untouched(device):", "with self._exclusive():",
     "precompile_leaves_the_callers_rng"),
    ("precompile-padded-without-padding", "credit_compile/api.py",
     "            attention_mask[:, 0] = 0\n", "            pass\n",
     "precompile_padded"),
    ("recompile-not-warned", "credit_compile/runner.py",
     "            if phase in self._compiled:\n                log.warning(",
     "            if False:\n                log.warning(", "recompile"),
    ("fallback-not-marked-eager", "credit_compile/runner.py",
     '        self.kind = "eager"\n\n    def ensure_compiled', "\n    def ensure_compiled",
     "on_compile_error or falling_back"),
    ("precompile-compiles-nothing", "credit_compile/runner.py",
     "            if phase not in self._compiled and not self.fell_back:",
     "            if False:", "precompile"),
    ("verify-compares-the-last-call-only", "credit_compile/verify.py",
     "differing = next((out for out in outputs\n", "differing = next((out for out in outputs[-1:]\n",
     "verify"),
    ("verify-one-timed-call", "credit_compile/verify.py",
     "(len(seconds) < min_calls or sum(seconds) < budget_seconds)", "len(seconds) < 1",
     "verify or time_calls"),
    ("verify-ok-ignores-nfe", "credit_compile/verify.py",
     "return self.tokens_equal and self.nfe_reference == self.nfe_optimized",
     "return self.tokens_equal", "verify"),
    ("batch-bucket-pads-with-the-first-row", "credit_compile/prompt_buckets.py",
     "torch.cat([t, t[-1:].expand(added, -1)])", "torch.cat([t, t[:1].expand(added, -1)])",
     "batch_padding or batch_bucket"),
    ("batch-bucket-rounds-down", "credit_compile/prompt_buckets.py",
     "return -(-n // multiple) * multiple", "return (n // multiple) * multiple or multiple",
     "batch_bucket or batch_padding"),
    ("cli-verify-exit-ignores-the-verdict", "credit_compile/cli.py",
     "return 0 if report.ok else 1", "return 0", "test_cli and verify"),
    ("cli-no-compile-ignored", "credit_compile/cli.py",
     'compile=not getattr(args, "no_compile", False)', "compile=True", "test_cli and compile"),
    # The compiled path only (the reference runs no pass): the equality properties over shapes
    # and configs, which run on the cheap backend, must see it.
    ("head-pass-reverses-the-block", "passes/block_sliced_lm_head.py",
     'sliced = graph.call_method("index_select", (hidden, 1, positions))',
     'sliced = graph.call_method("index_select", (hidden, 1, graph.call_method("flip", '
     '(positions, 0))))', "tokens_equal_the_reference"),
]


def run_tests(selection: str, inductor: bool, timeout: float) -> bool:
    """Whether the tests pass (a timeout counts as a kill: the mutant hung them)."""
    env = dict(os.environ, CREDIT_COMPILE_TEST_INDUCTOR="1" if inductor else "0")
    env.pop("CI", None)
    try:
        done = subprocess.run([str(Path(sys.executable).with_name("pytest")), "-q", "-x", "-p",
                               "no:cacheprovider", "-n", "0", "-k", selection, "tests"],
                              cwd=ROOT, env=env, capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return False
    if done.returncode == 5:
        raise SystemExit(f"pytest -k {selection!r} selects no test: update the mutant")
    return done.returncode == 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", help="mutant names (default: all)")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per test run")
    parser.add_argument("--out", help="append a JSON line per mutant here")
    args = parser.parse_args(argv)
    # A stopped round restores the file it mutated (the finally below runs).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    chosen = [m for m in MUTANTS if not args.only or m[0] in args.only]
    lost, survived = [], []
    for name, file, old, new, selection in chosen:
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
                killed = not run_tests(selection, mode == "inductor", args.timeout)
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
