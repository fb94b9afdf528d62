"""The documentation: generated pages equal their generator's output, links resolve, README stays short.

docs/generate.py writes the configuration and cluster-settings references and README's exit-code table from the
code; these tests call it as CI would, and show that its check fails on a page that drifted.
"""

from __future__ import annotations

import re
import runpy
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
GENERATE = ROOT / "docs" / "generate.py"
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)#\s]+)?(?:#([^)\s]+))?\)")


@pytest.fixture(scope="module")
def generator():
    return runpy.run_path(str(GENERATE))


def test_generated_pages_equal_the_generator_output(generator):
    for path, text in generator["pages"]().items():
        assert path.read_text() == text, f"{path.relative_to(ROOT)} differs from the code: run python docs/generate.py"


def test_the_check_fails_on_a_page_that_drifted(generator, monkeypatch, capsys):
    page = ROOT / "docs" / "configuration.md"
    real = generator["pages"]
    monkeypatch.setitem(generator["main"].__globals__, "pages",
                        lambda: {**real(), page: real()[page].replace("| `model.dtype` |", "| `model.dtypo` |")})
    monkeypatch.setattr("sys.argv", ["generate.py", "--check"])
    assert generator["main"]() == 1
    assert "docs/configuration.md: differs from the code" in capsys.readouterr().out


def _anchor(heading: str) -> str:
    """GitHub's anchor of a Markdown heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_every_relative_link_and_anchor_resolves():
    broken = []
    for page in PAGES:
        for target, anchor in LINK.findall(page.read_text()):
            if target.startswith(("http://", "https://", "mailto:")):
                continue
            dest = (page.parent / target).resolve() if target else page
            if not dest.exists():
                broken.append(f"{page.name}: {target}")
            elif anchor and dest.suffix == ".md":
                headings = {_anchor(h) for h in re.findall(r"^#+ (.+)$", dest.read_text(), re.M)}
                if anchor not in headings:
                    broken.append(f"{page.name}: {target}#{anchor}")
    assert not broken, broken


def test_readme_is_short_and_keeps_the_two_set_up_commands():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 150
    ci = (ROOT / ".ci" / "run").read_text()
    test_command = next(line for line in ci.splitlines() if "python -m pytest" in line)
    assert test_command in readme
