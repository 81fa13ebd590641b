"""Which code a benchmark row measured: the commit, marked dirty when the measured code differs.

`CREDIT_COMPILE_COMMIT` wins when set: the lent GPU machines get a copy of the working tree
without `.git`. Otherwise git's short HEAD, with `-dirty` when the package, the passes or the
benchmark scripts have uncommitted changes or untracked files (result files and docs do not
count; ignored files neither).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MEASURED_CODE = ("credit_compile", "passes", "benchmarks", "pyproject.toml",
                 ":(exclude)benchmarks/results")


def git_commit() -> str:
    explicit = os.environ.get("CREDIT_COMPILE_COMMIT")
    if explicit:
        return explicit
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, check=True,
                              capture_output=True, text=True, timeout=10).stdout.strip()
        # Untracked files count: a new module the package imports changes what runs.
        changed = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=all", "--", *MEASURED_CODE],
            cwd=ROOT, check=True, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):  # no git, not a checkout
        return "unknown"
    return f"{head}-dirty" if changed else head
