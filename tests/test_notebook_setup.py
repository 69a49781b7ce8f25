"""The first code cell of every notebook (chapters, exercises, solutions) makes the notebook run
where it is opened alone: it installs the package where it is missing, with the extras of every
framework the notebook imports, from extras that ``pyproject.toml`` defines."""
import re
import tomllib
from pathlib import Path

import nbformat
import pytest

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted(p for folder in ("book", "exercises", "solutions")
                   for p in (REPO / folder).glob("*.ipynb"))
EXTRAS = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
# what an import in a notebook needs from the install line: module -> extra
FRAMEWORKS = {"torch": "torch", "tensorflow": "tensorflow", "keras": "tensorflow"}
INSTALL = re.compile(r'%pip install -q "structdrop-tutorial\[([a-z,]+)\] @ git\+https://\S+"')


def imported_frameworks(sources: str) -> set:
    found = set()
    for module in FRAMEWORKS:
        if re.search(rf"^\s*(import|from)\s+{module}\b", sources, flags=re.MULTILINE):
            found.add(module)
    return found


def test_the_notebooks_are_found():
    assert len(NOTEBOOKS) >= 9 + 2 * 7


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_first_cell_installs_what_the_notebook_imports(path):
    nb = nbformat.read(str(path), as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    first = code[0].source
    assert "import structdrop_tutorial" in first and "except ImportError:" in first
    match = INSTALL.search(first)
    assert match, f"{path.name}: no install line in the first code cell"
    extras = set(match.group(1).split(","))
    assert extras <= set(EXTRAS), f"extras not in pyproject.toml: {extras - set(EXTRAS)}"
    assert "book" in extras
    needed = {FRAMEWORKS[m] for m in imported_frameworks("\n".join(c.source for c in code))}
    assert needed <= extras, f"{path.name} imports {sorted(needed)} but installs {sorted(extras)}"
    assert first.index("import structdrop_tutorial") < first.index("%pip install")


def test_imported_frameworks_reads_import_lines():
    assert imported_frameworks("import torch\nfrom keras import layers\n") == {"torch", "keras"}
    assert imported_frameworks("x = 1  # torch is not imported\nimport numpy") == set()
