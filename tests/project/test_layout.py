"""The package's shape: the layers contract (import-linter) and the size limits a reader relies on.

Each layer is a folder whose __init__ says what it owns and what it may import; pyproject.toml's import-linter
contract lists them top to bottom. These tests run the contract, show that it catches an upward import, and keep
modules under about 400 lines and functions under about 60.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "influence_job"
MODULE_LINES, FUNCTION_LINES = 400, 60


def lint_imports(cwd: Path, config: Path | None = None) -> subprocess.CompletedProcess:
    command = [shutil.which("lint-imports") or "lint-imports", "--no-cache"]
    if config:
        command += ["--config", str(config)]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=300)


def test_the_layers_contract_holds():
    out = lint_imports(ROOT)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert "1 kept, 0 broken" in out.stdout


def test_the_contract_fails_on_an_upward_import(tmp_path):
    """The same kind of contract on a two-layer package whose lower layer imports the upper one."""
    for name, body in (("low", "from pkg import high\n"), ("high", "")):
        (tmp_path / "pkg" / name).mkdir(parents=True)
        (tmp_path / "pkg" / name / "__init__.py").write_text(body)
    (tmp_path / "pkg" / "__init__.py").write_text("")
    config = tmp_path / "contract.toml"
    config.write_text(textwrap.dedent("""
        [tool.importlinter]
        root_package = "pkg"
        [[tool.importlinter.contracts]]
        name = "layers"
        type = "layers"
        containers = ["pkg"]
        layers = ["high", "low"]
    """))
    out = lint_imports(tmp_path, config)
    assert out.returncode == 1 and "pkg.low is not allowed to import pkg.high" in out.stdout


def oversized(source: str, name: str) -> list[str]:
    """What in one module's source exceeds the limits."""
    found = []
    if source.count("\n") > MODULE_LINES:
        found.append(f"{name}: {source.count(chr(10))} lines")
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            length = node.end_lineno - node.lineno + 1
            if length > FUNCTION_LINES:
                found.append(f"{name}:{node.lineno} {node.name}: {length} lines")
    return found


def test_modules_and_functions_stay_small():
    found = [f for path in sorted(PACKAGE.rglob("*.py"))
             for f in oversized(path.read_text(), str(path.relative_to(ROOT)))]
    assert not found, found


def test_the_size_check_finds_a_long_function():
    body = "\n".join(f"    x{i} = {i}" for i in range(FUNCTION_LINES))
    assert oversized(f"def f():\n{body}\n", "m.py") == [f"m.py:1 f: {FUNCTION_LINES + 1} lines"]
