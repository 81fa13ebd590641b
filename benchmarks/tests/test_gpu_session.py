"""benchmarks/gpu_session.sh, every stage run dry on the CPU (DRY_RUN=1: toy sizes appended after
the stage's own flags, which the scripts still parse and check): a stage broken by a renamed flag
or mode fails here, not on a lent GPU whose minutes are counted. The scripts compile with
--cheap-compile there (dynamo and the passes, not Inductor's code generation), and their rows say
backend "cheap"; the suite stage collects one small module."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from test_bench_scripts import load

ROOT = Path(__file__).resolve().parents[2]
# The tests stage runs dry in test_a_stage_runs_from_a_copy_of_the_source_without_an_install.
# The gen stages differ only in the values of their flags, as the llada2 stages do: gen256b1 (the
# longest --modes list) and llada2b8 run at toy sizes, the others' flags are checked as given
# (DRY_RUN=flags), which the toy sizes override.
STAGES = ["gen256b1", "compile", "op", "buckets", "suite", "llada2b8"]
FLAG_STAGES = {"gen1024": "llada-8b", "gen1024b8": "llada-8b", "gen256b8": "llada-8b",
               "llada2": "llada2-mini", "llada2g1024": "llada2-mini"}


def run_stage(stage: str, out: Path, shim: Path | None = None,
              **extra_env: str) -> subprocess.CompletedProcess:
    """`gpu_session.sh stage`, dry; `shim`: a folder put before the interpreter's on PATH."""
    env = dict(os.environ, DRY_RUN="1", OUT=str(out))
    first = [str(shim)] if shim is not None else []
    path = os.pathsep.join([*first, str(Path(sys.executable).parent), os.environ["PATH"]])
    env.update(extra_env, PATH=path)
    # Toy sizes: a second OpenMP thread only waits, and on a CPU shared with other work its
    # spinning made a tiny eager step 10-250 ms instead of 3.
    env.setdefault("OMP_NUM_THREADS", "1")
    return subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_session.sh"), stage], env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.mark.slow
@pytest.mark.parametrize("stage", STAGES)
def test_every_stage_runs_dry(stage, tmp_path):
    done = run_stage(stage, tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = {"gen1024": "generate", "gen1024b8": "generate", "gen256b1": "generate",
            "gen256b8": "generate", "op": "credit_op", "buckets": "prompt_buckets",
            "compile": "compile_time", "llada2": "generate_llada2", "llada2b8": "generate_llada2",
            "llada2g1024": "generate_llada2"}
    if stage in rows:
        lines = (tmp_path / f"{rows[stage]}.jsonl").read_text().splitlines()
        assert lines and all("commit" in json.loads(line) for line in lines)
        # The scripts that compile ran with --cheap-compile, and their rows say so.
        if stage != "op":
            assert all(json.loads(line)["backend"] == "cheap" for line in lines)
        # The two stages whose scripts compile in processes of their own are checked here, on
        # the rows of this run, rather than by running them a second time elsewhere.
        check = {"compile": check_compile_time_rows, "buckets": check_prompt_bucket_rows}.get(stage)
        if check:
            check([json.loads(line) for line in lines], done.stdout)


@pytest.mark.slow
@pytest.mark.parametrize("stage", FLAG_STAGES)
def test_the_other_stages_flags_are_checked_as_given(stage, tmp_path, monkeypatch, capsys):
    """The command line the stage gives its script (recorded by a `python3` on PATH that runs
    every other command), checked by the script's own parser in this process: a process of its
    own would spend seconds importing what this one has."""
    argv_file, shim = tmp_path / "argv", tmp_path / "shim"
    shim.mkdir()
    (shim / "python3").write_text(
        "#!/usr/bin/env bash\n"
        f'case "$1" in benchmarks/*.py) printf "%s\\0" "$@" > {shlex.quote(str(argv_file))}; '
        f'exit 0;; esac\nexec {shlex.quote(sys.executable)} "$@"\n')
    (shim / "python3").chmod(0o755)
    done = run_stage(stage, tmp_path, shim, DRY_RUN="flags")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    script, *argv = argv_file.read_text().split("\0")[:-1]
    assert argv[-1] == "--check-flags"
    assert load(Path(script).stem, monkeypatch).main(argv) == 0
    assert f"flags ok: preset {FLAG_STAGES[stage]}" in capsys.readouterr().out


def test_a_flag_check_is_for_the_bench_generate_stages(tmp_path):
    done = run_stage("op", tmp_path, DRY_RUN="flags")
    assert done.returncode == 2 and "DRY_RUN is 0, 1, or flags" in done.stderr


@pytest.mark.slow
def test_a_stage_runs_from_a_copy_of_the_source_without_an_install(tmp_path):
    # The lent image is not given a pip install (its setuptools may predate pyproject's license
    # form): the script imports the package from a copy with passes/ joined under it.
    done = run_stage("tests", tmp_path, FROM_SOURCE="1")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    passes_init = Path((tmp_path / "versions.txt").read_text().split(" credit_compile ")[1].strip())
    package = passes_init.parents[1]
    assert passes_init.parent.name == "passes" and package.name == "credit_compile"
    assert not package.is_relative_to(ROOT) and "site-packages" not in package.parts
    assert not package.exists(), "the copy outlived the script"
    assert "collected" in done.stdout or "tests collected" in done.stdout


def check_compile_time_rows(rows: list[dict], stdout: str) -> None:
    """bench_compile_time measures each setting cold, in a process of its own."""
    import torch

    without, once = rows
    assert (without["compile_layers_once"], once["compile_layers_once"]) == (False, True)
    for row in (without, once):
        assert row["layers"] == 1 and row["device"] == "cpu" and row["torch"] == torch.__version__
        assert row["commit"] and row["runner"] == "compiled" and row["nfe"] >= 1
        # A cold start: the first call compiled. With Inductor, seconds, not the milliseconds of
        # a cache hit; the cheap backend (the dry run's) keeps no cache, and dynamo's trace and
        # the passes alone take tenths of a second (1.4 s here), a step of this model milliseconds.
        cold = 0.5 if row["backend"] == "inductor" else 0.2
        assert row["compile_seconds"] > cold and row["tokens_equal_reference"] is True
    assert once["compile_speedup"] == without["compile_seconds"] / once["compile_seconds"]


def check_prompt_bucket_rows(rows: list[dict], stdout: str) -> None:
    """bench_prompt_buckets runs each setting in its own process, one compile per bucket."""
    assert [r["prompt_bucket"] for r in rows] == [None, 4]
    assert rows[1]["compiled_steps"] == 1 and rows[0]["compiled_steps"] == rows[0]["distinct_lengths"]
    assert all(r["tokens_equal_unbucketed"] and r["compile_seconds"] > 0 for r in rows)
    assert "vs none" in stdout


def test_a_broken_stage_fails_the_dry_run(tmp_path):
    done = run_stage("no-such-stage", tmp_path)
    assert done.returncode == 2 and "unknown stage no-such-stage" in done.stderr
