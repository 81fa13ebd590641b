"""Which code a benchmark row measured: the commit, marked dirty when the measured code differs.

`CREDIT_COMPILE_COMMIT` wins when set: the lent GPU machines get a copy of the working tree
without `.git`. Otherwise git's short HEAD, with `-dirty` when the package, the passes or the
benchmark scripts have uncommitted changes (result files and docs do not count).
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
        changed = subprocess.run(["git", "diff", "--quiet", "HEAD", "--", *MEASURED_CODE],
                                 cwd=ROOT, capture_output=True, timeout=10).returncode
    except (OSError, subprocess.SubprocessError):  # no git, not a checkout
        return "unknown"
    return f"{head}-dirty" if changed else head
