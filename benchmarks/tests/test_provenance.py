"""Benchmark rows name the commit they measured, marked dirty when the measured code changed."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "provenance.py"
pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="needs git")


@pytest.fixture
def provenance(monkeypatch, tmp_path):
    spec = importlib.util.spec_from_file_location("provenance", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.delenv("CREDIT_COMPILE_COMMIT", raising=False)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false"]
    for path in ("credit_compile/api.py", "benchmarks/results/rows.jsonl", "docs/notes.md"):
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text("v1\n")
    subprocess.run([*git, "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run([*git, "add", "-A"], cwd=tmp_path, check=True)
    subprocess.run([*git, "commit", "-qm", "one"], cwd=tmp_path, check=True)
    monkeypatch.setattr(module, "ROOT", tmp_path)
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=tmp_path, check=True,
                          capture_output=True, text=True).stdout.strip()
    return module, tmp_path, head


def test_clean_tree_gives_head_and_results_do_not_count(provenance):
    module, root, head = provenance
    assert module.git_commit() == head
    (root / "benchmarks/results/rows.jsonl").write_text("v1\nv2\n")  # rows appended by a run
    (root / "docs/notes.md").write_text("v2\n")
    assert module.git_commit() == head


def test_changed_code_is_dirty(provenance):
    module, root, head = provenance
    (root / "credit_compile/api.py").write_text("v2\n")
    assert module.git_commit() == f"{head}-dirty"


def test_an_untracked_file_in_the_measured_code_is_dirty(provenance):
    module, root, head = provenance
    (root / ".gitignore").write_text("__pycache__/\n")
    (root / "credit_compile/__pycache__").mkdir()
    (root / "credit_compile/__pycache__/api.pyc").write_text("")  # ignored: still clean
    (root / "benchmarks/results/new.jsonl").write_text("row\n")  # results: still clean
    assert module.git_commit() == head
    (root / "credit_compile/new_module.py").write_text("v1\n")
    assert module.git_commit() == f"{head}-dirty"


def test_explicit_commit_wins(provenance, monkeypatch):
    module, _, _ = provenance
    monkeypatch.setenv("CREDIT_COMPILE_COMMIT", "abc1234")
    assert module.git_commit() == "abc1234"


def test_outside_a_checkout_is_unknown(provenance, monkeypatch, tmp_path_factory):
    module, _, _ = provenance
    monkeypatch.setattr(module, "ROOT", tmp_path_factory.mktemp("no_git"))
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path_factory.getbasetemp()))
    assert module.git_commit() == "unknown"


@pytest.mark.parametrize("path", ["passes/credit_fusion.py", "benchmarks/bench_generate.py",
                                  "pyproject.toml"])
def test_every_measured_tree_counts(provenance, path):
    # Not only the package: the passes and the benchmark scripts are measured code too.
    module, root, _ = provenance
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false"]
    (root / path).parent.mkdir(parents=True, exist_ok=True)
    (root / path).write_text("v1\n")
    subprocess.run([*git, "add", "-A"], cwd=root, check=True)
    subprocess.run([*git, "commit", "-qm", "two"], cwd=root, check=True)
    head = module.git_commit()
    assert not head.endswith("-dirty")
    (root / path).write_text("v2\n")
    assert module.git_commit() == f"{head}-dirty"


def test_an_empty_explicit_commit_falls_back_to_git(provenance, monkeypatch):
    module, _, head = provenance
    monkeypatch.setenv("CREDIT_COMPILE_COMMIT", "")
    assert module.git_commit() == head
