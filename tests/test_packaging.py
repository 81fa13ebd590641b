"""passes/ installs as credit_compile.passes, never as a bare top-level `passes` module."""

from __future__ import annotations

import importlib.metadata
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


def _setuptools_major() -> int:
    try:
        return int(importlib.metadata.version("setuptools").split(".")[0])
    except importlib.metadata.PackageNotFoundError:
        return 0


# --no-build-isolation builds with the environment's setuptools; pyproject.toml's build-system
# needs >= 77 (SPDX `license` strings).
@pytest.mark.skipif(_setuptools_major() < 77,
                    reason="needs setuptools>=77 here (pip install 'setuptools>=77')")
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
    for asset in ("config.json", "char_tokenizer.json", "model.safetensors"):
        assert f"credit_compile/assets/default_model/{asset}" in names


def test_missing_passes_names_the_fix(monkeypatch):
    # A regular install run from the repository root imports the checkout's credit_compile/,
    # which has no passes/ (it maps in at install time).
    from credit_compile import backend

    def not_found(name, package=None):
        raise ModuleNotFoundError(f"No module named {name!r}", name=name)

    monkeypatch.setattr(backend.importlib, "import_module", not_found)
    with pytest.raises(ModuleNotFoundError, match=r"pip install -e \.") as raised:
        backend.make_backend()
    assert raised.value.name == "credit_compile.passes"


def test_a_missing_module_inside_the_passes_is_not_blamed_on_the_checkout(monkeypatch):
    # Only credit_compile.passes itself missing gets the install hint; a module the passes import
    # (a dependency) missing is reported as it is.
    from credit_compile import backend

    def not_found(name, package=None):
        raise ModuleNotFoundError("No module named 'some_dependency'", name="some_dependency")

    monkeypatch.setattr(backend.importlib, "import_module", not_found)
    with pytest.raises(ModuleNotFoundError, match="some_dependency") as raised:
        backend.make_backend()
    assert raised.value.name == "some_dependency"
    assert "pip install" not in str(raised.value)


def test_subpackages_are_attributes_of_the_package_imported_on_first_use():
    # The README writes credit_compile.assets.load_default_model(); error messages name
    # credit_compile.models.LLaDAModelLM. Neither may cost `import credit_compile` transformers.
    code = (
        "import sys, credit_compile as cc\n"
        "assert 'transformers' not in sys.modules and 'credit_compile.models' not in sys.modules\n"
        "assert callable(cc.assets.load_default_model) and cc.models.LLaDAModelLM\n"
        "assert cc.passes.pass_count and cc.tokenizer.CharTokenizer and cc.training\n"
        "try:\n    cc.no_such_thing\nexcept AttributeError as e:\n    assert 'no_such_thing' in str(e)\n"
        "else:\n    raise SystemExit('no AttributeError')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/")
    assert done.returncode == 0, done.stderr


def _package_imports() -> dict[str, set[str]]:
    """Module -> the package's modules it imports (relative imports, at any depth of the file;
    a parent package, which Python imports first anyway, is left out)."""
    import ast

    root = Path(__file__).resolve().parent.parent
    files = {".".join(f.relative_to(root).with_suffix("").parts).removesuffix(".__init__"): f
             for f in (root / "credit_compile").rglob("*.py")}
    edges: dict[str, set[str]] = {name: set() for name in files}
    for name, path in files.items():
        base = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.ImportFrom) and node.level):
                continue
            parts = base.split(".")[:len(base.split(".")) - node.level + 1]
            target = ".".join(parts + ([node.module] if node.module else []))
            for candidate in [target] + [f"{target}.{alias.name}" for alias in node.names]:
                if candidate in files and candidate != name and not name.startswith(candidate + "."):
                    edges[name].add(candidate)
    return edges


def test_no_import_cycle_inside_the_package():
    edges = _package_imports()
    assert edges["credit_compile.api"] >= {"credit_compile.adapters", "credit_compile.generation_setup"}

    def reaches(start: str) -> set[str]:
        seen, todo = set(), [start]
        while todo:
            for nxt in edges[todo.pop()] - seen:
                seen.add(nxt)
                todo.append(nxt)
        return seen

    cycles = sorted(name for name in edges if name in reaches(name))
    assert not cycles, f"modules on an import cycle: {cycles}"
