"""The job image's dependency lock (images/requirements.txt) and the Dockerfile's layer order."""

from __future__ import annotations

import ast
import re
import sys
from importlib.metadata import packages_distributions
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FROM_BASE_IMAGE = {"torch"}  # the CUDA build comes with the base image


def locked() -> dict[str, str]:
    pins = re.findall(r"^([A-Za-z0-9_.\-]+)==([^\s\\]+)", (ROOT / "images" / "requirements.txt").read_text(), re.M)
    return {re.sub(r"[-_.]+", "-", name).lower(): version for name, version in pins}


def imported_modules() -> set[str]:
    """Top-level modules the package imports (at module level or inside functions), outside the stdlib."""
    found = set()
    for path in (ROOT / "influence_job").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
    return {m for m in found if m not in sys.stdlib_module_names and m != "influence_job"}


def test_lock_pins_every_dependency_with_hashes():
    text = (ROOT / "images" / "requirements.txt").read_text()
    pins = locked()
    assert len(pins) >= 20  # the whole closure, not only the direct dependencies
    for block in re.split(r"\n(?=[A-Za-z])", text.split("\n", 5)[-1]):
        if re.match(r"[A-Za-z]", block):
            assert "--hash=sha256:" in block, block.splitlines()[0]


def test_lock_covers_every_import_of_the_package():
    dists = packages_distributions()
    pins = locked()
    missing = []
    for module in sorted(imported_modules() - FROM_BASE_IMAGE):
        known = dists.get(module) or [module]
        names = {re.sub(r"[-_.]+", "-", d).lower() for d in known}
        if not names & set(pins):
            missing.append(f"{module} ({', '.join(sorted(names))})")
    assert missing == [], f"imports the image's lock does not install: {missing}"
    assert {"tqdm", "pyarrow", "prometheus-client", "pydantic", "transformers"} <= set(pins)


def test_dockerfile_installs_the_locked_dependencies_before_copying_the_source():
    lines = [line.strip() for line in (ROOT / "Dockerfile").read_text().splitlines()]
    locked_install = next(i for i, line in enumerate(lines) if "--require-hashes" in line)
    source_copy = next(i for i, line in enumerate(lines) if line.startswith("COPY influence_job"))
    assert locked_install < source_copy
    assert lines.index("COPY images/requirements.txt ./requirements.txt") < locked_install
