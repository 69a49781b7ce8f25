"""Generate the exercise notebooks from the solution notebooks (the single source).

    python -m structdrop_tutorial.grade.make_exercises solutions exercises          # write
    python -m structdrop_tutorial.grade.make_exercises solutions exercises --check  # compare

For every ``solutions/exNN_*.ipynb`` the exercise ``exercises/exNN_*.ipynb`` is written with:

* each region from a ``# BEGIN SOLUTION (hint: ...)`` line to the matching ``# END SOLUTION``
  line replaced by ``raise NotImplementedError("<hint>")`` at the BEGIN line's indentation
  (no hint given: ``"your code here"``);
* cells tagged ``solution-only`` dropped;
* outputs and execution counts cleared, per-cell execution metadata removed.

``--check`` writes nothing and exits with status 1 when an exercise notebook is missing, differs
from what its solution generates, or has no solution; the differences are listed.
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import List, Optional

__all__ = ["SolutionMarkerError", "strip_solution", "exercise_notebook", "render",
           "generate", "main"]

BEGIN = re.compile(r"^(?P<indent>[ \t]*)#\s*BEGIN SOLUTION\b(?P<rest>.*)$")
END = re.compile(r"^[ \t]*#\s*END SOLUTION\b")
HINT = re.compile(r"\(\s*hint\s*:\s*(?P<hint>.*)\)\s*$")
DEFAULT_HINT = "your code here"
SOLUTION_ONLY_TAG = "solution-only"
_KEEP_CELL_METADATA = ("tags", "editable", "deletable", "jupyter")


class SolutionMarkerError(ValueError):
    """A BEGIN SOLUTION without its END SOLUTION (or the other way round)."""


def strip_solution(source: str, where: str = "cell") -> str:
    """``source`` with every solution region replaced by a ``raise NotImplementedError``."""
    out: List[str] = []
    inside: Optional[int] = None
    for number, line in enumerate(source.split("\n"), start=1):
        begin, end = BEGIN.match(line), END.match(line)
        if begin:
            if inside is not None:
                raise SolutionMarkerError(f"{where}, line {number}: BEGIN SOLUTION inside the "
                                          f"region opened on line {inside}")
            inside = number
            m = HINT.search(begin.group("rest"))
            hint = m.group("hint").strip() if m else DEFAULT_HINT
            out.append(f"{begin.group('indent')}raise NotImplementedError({hint!r})")
        elif end:
            if inside is None:
                raise SolutionMarkerError(f"{where}, line {number}: END SOLUTION without BEGIN")
            inside = None
        elif inside is None:
            out.append(line)
    if inside is not None:
        raise SolutionMarkerError(f"{where}: BEGIN SOLUTION on line {inside} is never closed")
    return "\n".join(out)


def exercise_notebook(solution, name: str = "notebook"):
    """The exercise version of a solution notebook (an ``nbformat`` node; input untouched)."""
    import copy

    nb = copy.deepcopy(solution)
    cells = []
    for index, cell in enumerate(nb.cells):
        tags = cell.get("metadata", {}).get("tags", [])
        if SOLUTION_ONLY_TAG in tags:
            continue
        cell.metadata = {k: v for k, v in cell.get("metadata", {}).items()
                         if k in _KEEP_CELL_METADATA}
        if cell.cell_type == "code":
            cell.source = strip_solution(cell.source, f"{name}, cell {index}")
            cell.outputs = []
            cell.execution_count = None
        cells.append(cell)
    nb.cells = cells
    # Notebook-level metadata: keep what identifies the notebook, drop run-specific parts.
    nb.metadata.pop("widgets", None)
    return nb


def render(nb) -> str:
    """The file text nbformat writes for ``nb`` (what ``--check`` compares)."""
    import nbformat

    return nbformat.writes(nb) + "\n"


def generate(solutions_dir, exercises_dir, check: bool = False, log=sys.stdout) -> List[str]:
    """Write (or, with ``check``, compare) every exercise; returns the problems found."""
    import nbformat

    sdir, edir = Path(solutions_dir), Path(exercises_dir)
    sources = sorted(sdir.glob("ex[0-9][0-9]*.ipynb"))
    problems: List[str] = []
    if not sources:
        problems.append(f"no solution notebooks (ex*.ipynb) in {sdir}")
    if not check:
        edir.mkdir(parents=True, exist_ok=True)
    for src in sources:
        target = edir / src.name
        try:
            text = render(exercise_notebook(nbformat.read(str(src), as_version=4), src.name))
        except Exception as exc:  # report every broken notebook, not just the first
            problems.append(f"{src}: {type(exc).__name__}: {exc}")
            continue
        if check:
            if not target.exists():
                problems.append(f"{target} is missing")
            elif target.read_text(encoding="utf-8") != text:
                problems.append(f"{target} differs from what {src} generates")
        else:
            target.write_text(text, encoding="utf-8")
            if log is not None:
                print(f"wrote {target}", file=log)
    names = {s.name for s in sources}
    for extra in sorted(edir.glob("ex[0-9][0-9]*.ipynb")):
        if extra.name not in names:
            problems.append(f"{extra} has no solution notebook in {sdir}")
    return problems


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m structdrop_tutorial.grade.make_exercises",
        description="Generate exercises/ex*.ipynb from solutions/ex*.ipynb.")
    parser.add_argument("solutions", nargs="?", default="solutions")
    parser.add_argument("exercises", nargs="?", default="exercises")
    parser.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 if the exercises differ from the generated ones")
    args = parser.parse_args(argv)
    problems = generate(args.solutions, args.exercises, check=args.check)
    for p in problems:
        print(p, file=sys.stderr)
    if args.check and not problems:
        print(f"{args.exercises} is up to date with {args.solutions}")
    if problems and args.check:
        print("run: python -m structdrop_tutorial.grade.make_exercises "
              f"{args.solutions} {args.exercises}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
