"""The instructor's runner: grade submitted notebooks, each in its own kernel.

For every submission the runner

1. copies the notebook alone into a fresh temporary directory, the kernel's working directory,
   so that a submission that deletes files there harms only its own copy;
2. builds a notebook of: an injected first cell (caps each cell's printed output, neutralizes
   ``exit()``), the submission's code cells, and one injected grading cell per question of the
   notebook's exercise (``metadata.structdrop.exercise``, else the ``exNN`` in the file name);
3. executes it with nbclient in a fresh kernel (``allow_errors=True``, a per-cell time limit and
   a time limit for the whole submission). When a cell kills the kernel (``os._exit``, a crash)
   or runs past its limit, the kernel is shut down and the notebook is run again from the start
   without that cell, so that the remaining questions are still graded;
4. reads each grading cell's JSON result (a line starting with :data:`_kernel.MARKER`).

:func:`grade_submissions` writes a CSV (a row per submission, a column per question, the total)
and a feedback text file per submission saying what passed, what failed and why, and what
happened while the notebook ran (errors, time-outs, a dead kernel, truncated output).
"""
from __future__ import annotations

import asyncio
import csv
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence

from ._kernel import MARKER, TRUNCATION_NOTICE
from .core import CHECK_TIME_LIMIT_S, Property, Result

#: per-cell time limit (seconds)
CELL_TIMEOUT_S = 120
#: time limit for all of a submission's own cells in one run (seconds)
TOTAL_TIMEOUT_S = 900
#: time limit for checking one question's answer (seconds): the one ``check`` uses in a notebook
CHECK_TIMEOUT_S = CHECK_TIME_LIMIT_S
#: characters each cell may print to stdout and to stderr
OUTPUT_LIMIT = 20000
#: how many times a notebook is re-run after a cell killed the kernel or timed out
MAX_RERUNS = 4


@dataclass
class SubmissionResult:
    """The outcome of grading one notebook."""
    path: str
    exercise: Optional[str]
    results: List[Result] = field(default_factory=list)
    events: List[str] = field(default_factory=list)
    error: Optional[str] = None
    runs: int = 0
    wall_s: float = 0.0

    @property
    def points(self) -> int:
        return sum(r.points for r in self.results)

    @property
    def max_points(self) -> int:
        return sum(r.max_points for r in self.results)

    def feedback(self) -> str:
        """The feedback text for the learner."""
        lines = [f"Submission: {Path(self.path).name}",
                 f"Exercise: {self.exercise or 'unknown'}",
                 f"Total: {self.points}/{self.max_points} points", ""]
        if self.error:
            lines += [f"Grading problem: {self.error}", ""]
        for r in self.results:
            lines += [r.report(), ""]
        if self.events:
            lines.append("What happened while your notebook ran:")
            lines += [f"  - {e}" for e in self.events]
            lines.append("")
        return "\n".join(lines)


# --------------------------------------------------------------------------- helpers
def exercise_of(nb, path) -> Optional[str]:
    """The exercise id of a notebook: ``metadata.structdrop.exercise`` or ``exNN`` in its name."""
    meta = nb.get("metadata", {}).get("structdrop", {}) or {}
    ex = meta.get("exercise") if isinstance(meta, dict) else None
    if isinstance(ex, str) and re.fullmatch(r"ex\d\d", ex):
        return ex
    m = re.search(r"(ex\d\d)", Path(path).name)
    return m.group(1) if m else None


def _first_line(source: str) -> str:
    for line in source.splitlines():
        if line.strip():
            line = line.strip()
            return line if len(line) <= 60 else line[:57] + "..."
    return "(empty)"


def _text_of(outputs) -> str:
    parts = []
    for o in outputs:
        if o.get("output_type") == "stream":
            parts.append(o.get("text", ""))
    return "".join(parts)


def _kernel_env() -> Dict[str, str]:
    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    env.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    env["MPLBACKEND"] = "Agg"
    env.setdefault("PYDEVD_DISABLE_FILE_VALIDATION", "1")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _grade_cell_timeout(check_timeout: float) -> int:
    """nbclient's limit for a grading cell: the in-kernel limit plus time to import and report.

    The check itself stops at ``check_timeout`` (SIGALRM inside the kernel); this outer limit
    only fires when the answer blocks the signal (a C call that never returns, or code that
    swallows the time-out), and then the kernel is restarted without that grading cell.
    """
    return int(max(check_timeout, 1) + 20)


@dataclass
class _Cell:
    source: str
    role: str            # "setup", "submission", "grade"
    label: str = ""      # e.g. "code cell 3 ('def f(x):')" or the question id


def _build_cells(nb, questions, output_limit, check_timeout) -> List[_Cell]:
    cells = [_Cell("from structdrop_tutorial.grade import _kernel as _structdrop_grader\n"
                   f"_structdrop_grader.install({int(output_limit)})", "setup", "grader setup")]
    k = 0
    for c in nb.cells:
        if c.get("cell_type") != "code":
            continue
        k += 1
        src = c.get("source", "")
        if isinstance(src, list):
            src = "".join(src)
        cells.append(_Cell(src, "submission", f"code cell {k} ({_first_line(src)!r})"))
    for q in questions:
        cells.append(_Cell(
            "from structdrop_tutorial.grade import _kernel as _structdrop_grader\n"
            f"_structdrop_grader.emit({q.id!r}, globals(), {float(check_timeout)!r})",
            "grade", q.id))
    return cells


async def _run_once(cells: List[_Cell], cwd: str, kernel_name: str, cell_timeout: float,
                    total_timeout: float, check_timeout: float):
    """Execute ``cells`` in a fresh kernel. Returns (executed notebook cells, failure or None).

    ``failure`` is ``(index, kind)`` with kind ``"died"``, ``"timeout"`` or ``"total"``, for
    the cell at which the run had to stop.
    """
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellTimeoutError, DeadKernelError

    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": kernel_name, "display_name": "Python 3",
                                 "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell(c.source) for c in cells]
    client = NotebookClient(nb, kernel_name=kernel_name, timeout=int(cell_timeout),
                            allow_errors=True, interrupt_on_timeout=False,
                            record_timing=False, shutdown_kernel="immediate",
                            startup_timeout=120, resources={"metadata": {"path": cwd}})
    failure = None
    start = time.monotonic()
    try:
        # The kernel process's own stdout/stderr (not the cells' output, which comes back as
        # messages) go nowhere: a submission writing to file descriptor 1 cannot flood the
        # instructor's terminal.
        async with client.async_setup_kernel(env=_kernel_env(), stdout=subprocess.DEVNULL,
                                             stderr=subprocess.DEVNULL):
            for i, (cell, spec) in enumerate(zip(nb.cells, cells)):
                if spec.role == "grade":
                    client.timeout = _grade_cell_timeout(check_timeout)
                else:
                    left = total_timeout - (time.monotonic() - start)
                    if left <= 0:
                        failure = (i, "total")
                        break
                    client.timeout = max(1, int(min(cell_timeout, left)))
                try:
                    await client.async_execute_cell(cell, i)
                except DeadKernelError:
                    failure = (i, "died")
                    break
                except CellTimeoutError:
                    left = total_timeout - (time.monotonic() - start)
                    failure = (i, "total" if spec.role != "grade" and left <= 1 else "timeout")
                    break
                except Exception:  # nbclient may report a dead kernel in other ways
                    alive = False
                    try:
                        alive = await client.km.is_alive() if client.km else False
                    except Exception:
                        alive = False
                    if alive:
                        raise
                    failure = (i, "died")
                    break
    except Exception:
        if failure is None:
            raise
    return nb.cells, failure


def _parse_results(executed, cells, questions, events) -> Dict[str, Result]:
    found: Dict[str, Result] = {}
    for cell, spec in zip(executed, cells):
        if spec.role != "grade":
            continue
        for line in _text_of(cell.get("outputs", [])).splitlines():
            if line.startswith(MARKER):
                try:
                    r = Result.from_dict(json.loads(line[len(MARKER):].strip()))
                except Exception as exc:
                    events.append(f"could not read the grade of {spec.label}: {exc}")
                    continue
                if r.question_id == spec.label:
                    found[r.question_id] = r
        if spec.label not in found:
            err = [o for o in cell.get("outputs", []) if o.get("output_type") == "error"]
            if err:
                events.append(f"grading {spec.label} failed: {err[0].get('ename')}: "
                              f"{str(err[0].get('evalue'))[:200]}")
    return found


def _cell_events(executed, cells) -> List[str]:
    events = []
    notice = TRUNCATION_NOTICE.split("{")[0]
    for cell, spec in zip(executed, cells):
        if spec.role != "submission":
            continue
        for o in cell.get("outputs", []):
            if o.get("output_type") == "error":
                events.append(f"{spec.label} raised {o.get('ename')}: "
                              f"{str(o.get('evalue'))[:200]}")
        if notice in _text_of(cell.get("outputs", [])):
            events.append(f"{spec.label} printed too much; its output was truncated")
    return events


def grade_notebook(path, *, cell_timeout: float = CELL_TIMEOUT_S,
                   total_timeout: float = TOTAL_TIMEOUT_S, check_timeout: float = CHECK_TIMEOUT_S,
                   output_limit: int = OUTPUT_LIMIT, max_reruns: int = MAX_RERUNS,
                   kernel_name: str = "python3") -> SubmissionResult:
    """Grade one notebook in its own kernel; never raises for anything the notebook does."""
    import nbformat
    from . import exercise_questions, registry_errors

    t0 = time.monotonic()
    path = Path(path)
    res = SubmissionResult(str(path), None)
    try:
        nb = nbformat.read(str(path), as_version=4)
    except Exception as exc:
        res.error = f"could not read the notebook: {type(exc).__name__}: {exc}"
        res.exercise = exercise_of({}, path)  # from the file name: its questions score 0
        res.results = [Result(q.id, q.title, q.points, hint=q.hint,
                              properties=[Property("graded", False, res.error)])
                       for q in (exercise_questions(res.exercise) if res.exercise else [])]
        res.wall_s = time.monotonic() - t0
        return res
    res.exercise = exercise_of(nb, path)
    questions = exercise_questions(res.exercise) if res.exercise else []
    if not questions:
        broken = registry_errors().get(res.exercise or "", "")
        res.error = (f"no questions for exercise {res.exercise!r}" if res.exercise else
                     "cannot tell which exercise this is (no metadata.structdrop.exercise and "
                     "no exNN in the file name)") + (f" ({broken})" if broken else "")
        res.wall_s = time.monotonic() - t0
        return res

    cells = _build_cells(nb, questions, output_limit, check_timeout)
    removed: Dict[int, str] = {}
    executed, kept = [], []
    tmp = tempfile.mkdtemp(prefix="structdrop-grade-")
    try:
        for attempt in range(max_reruns + 1):
            # A fresh working directory holding only a copy of the notebook: whatever the
            # submission deletes or writes there is thrown away with it.
            work = os.path.join(tmp, f"run{attempt}")
            os.makedirs(work)
            shutil.copy2(path, os.path.join(work, path.name))
            kept = [i for i in range(len(cells)) if i not in removed]
            run_cells = [cells[i] for i in kept]
            res.runs += 1
            try:
                executed, failure = asyncio.run(_run_once(
                    run_cells, work, kernel_name, cell_timeout, total_timeout, check_timeout))
            except Exception as exc:
                res.error = f"the kernel could not run the notebook: {type(exc).__name__}: {exc}"
                executed, failure = [], None
                break
            if failure is None:
                break
            idx, kind = failure
            orig = kept[idx]
            label = cells[orig].label
            if kind == "died":
                removed[orig] = (f"{label} stopped the kernel (os._exit, a crash or running out "
                                 "of memory); the notebook was run again without it")
            elif kind == "timeout":
                limit = (cell_timeout if cells[orig].role != "grade"
                         else _grade_cell_timeout(check_timeout))
                removed[orig] = (f"{label} did not finish within its time limit ({limit:g} s); "
                                 "the notebook was run again without it")
            else:
                for j in range(orig, len(cells)):
                    if cells[j].role == "submission":
                        removed[j] = None
                removed[orig] = (f"the notebook's total time limit ({total_timeout:g} s) ran out "
                                 f"in {label}; it and the cells after it were skipped")
            if cells[orig].role == "setup":
                res.error = "the grader's setup cell failed; is structdrop_tutorial installed?"
                break
        else:
            res.events.append(f"gave up after {max_reruns + 1} runs")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    run_cells = [cells[i] for i in kept]
    res.events += [msg for msg in removed.values() if msg]
    res.events += _cell_events(executed, run_cells)
    found = _parse_results(executed, run_cells, questions, res.events)
    for q in questions:
        if q.id in found:
            res.results.append(found[q.id])
            continue
        why = "the grading cell did not report a result"
        for i, c in enumerate(cells):
            if c.role == "grade" and c.label == q.id and removed.get(i):
                why = "checking this answer " + ("stopped the kernel" if "stopped" in removed[i]
                                                  else "ran past its time limit")
        if res.error:
            why = res.error
        res.results.append(Result(q.id, q.title, q.points, hint=q.hint,
                                  properties=[Property("graded", False, why)]))
    res.wall_s = time.monotonic() - t0
    return res


def write_csv(results: Sequence[SubmissionResult], out) -> List[str]:
    """One row per submission, one column per question id (points), total and max; returns ids."""
    ids: List[str] = []
    for r in results:
        for q in r.results:
            if q.question_id not in ids:
                ids.append(q.question_id)
    ids.sort()
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["submission", "exercise"] + ids + ["total", "max_total", "notes"])
        for r in results:
            pts = {q.question_id: q.points for q in r.results}
            notes = "; ".join(([r.error] if r.error else []) + r.events)
            w.writerow([r.path, r.exercise or ""] + [pts.get(i, "") for i in ids]
                       + [r.points, r.max_points, notes[:2000]])
    return ids


def feedback_name(path, used: set) -> str:
    stem = Path(path).stem
    name, k = f"{stem}.txt", 1
    while name in used:
        k += 1
        name = f"{stem}_{k}.txt"
    used.add(name)
    return name


def grade_submissions(paths: Iterable, out, feedback_dir=None, *, jobs: int = 1,
                      log=sys.stderr, **kwargs) -> List[SubmissionResult]:
    """Grade notebooks (``jobs`` at a time), write the CSV and the feedback files."""
    paths = [Path(p) for p in paths]

    def one(p):
        r = grade_notebook(p, **kwargs)
        if log is not None:
            print(f"{p}: {r.points}/{r.max_points} points in {r.wall_s:.1f} s"
                  + (f" ({r.error})" if r.error else ""), file=log, flush=True)
        return r

    if jobs > 1:
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            results = list(pool.map(one, paths))
    else:
        results = [one(p) for p in paths]
    write_csv(results, out)
    if feedback_dir is not None:
        fdir = Path(feedback_dir)
        fdir.mkdir(parents=True, exist_ok=True)
        used: set = set()
        for r in results:
            (fdir / feedback_name(r.path, used)).write_text(r.feedback())
    return results
