"""passes/ installs as credit_compile.passes, never as a bare top-level `passes` module."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_installed_package_has_passes_under_its_namespace():
    import credit_compile.passes as passes

    assert passes.default_passes()  # the real passes, not an empty stub
    # A bare `passes` may be importable from a source checkout on sys.path (`python -m pytest`
    # from the repository root), never from an installed location.
    spec = importlib.util.find_spec("passes")
    assert spec is None or "site-packages" not in str(spec.origin)


@pytest.mark.skipif(importlib.util.find_spec("setuptools") is None, reason="needs setuptools")
def test_wheel_maps_passes_into_the_package(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp_path), str(ROOT)],
        check=True, cwd=tmp_path,
    )
    wheel = next(tmp_path.glob("credit_compile-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "credit_compile/passes/__init__.py" in names
    assert "credit_compile/passes/credit_fusion.py" in names
    assert not any(name.startswith("passes/") for name in names)
