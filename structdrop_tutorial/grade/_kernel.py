"""The grader's code that runs *inside* a submission's kernel (never in the grader's process).

The runner injects two kinds of cells around the submitted notebook's cells:

* a first cell calling :func:`install`, which caps what each cell may print, turns IPython's
  ``exit()``/``quit()`` into a no-op (they would shut the kernel down between cells), skips
  shell escapes (``!pip install ...``), and keeps a reference to the kernel's real output stream;
* one last cell per question calling :func:`emit`, which grades the answer found in the
  notebook's namespace and writes the result as JSON on a line starting with :data:`MARKER`
  to the saved stream, so that the submission's own printing cannot drown it by
  accident (a submission that sets out to cheat runs in the same process and could fake it).
"""
from __future__ import annotations

import json
import sys
from typing import Optional

MARKER = "@@STRUCTDROP-GRADE@@"
TRUNCATION_NOTICE = "[structdrop grader: output of this cell truncated after {n} characters]"

_RAW = {}


class _CappedStream:
    """A text stream that forwards at most ``limit`` characters per cell, then one notice."""

    def __init__(self, stream, limit: int):
        self._stream = stream
        self._limit = int(limit)
        self._count = 0
        self._noticed = False

    def reset(self) -> None:
        self._count = 0
        self._noticed = False

    def write(self, text) -> int:
        text = str(text)
        room = self._limit - self._count
        if room > 0:
            self._stream.write(text[:room])
        if len(text) > max(room, 0) and not self._noticed:
            self._stream.write("\n" + TRUNCATION_NOTICE.format(n=self._limit) + "\n")
            self._noticed = True
        self._count += len(text)
        return len(text)

    def writelines(self, lines) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        self._stream.flush()

    def __getattr__(self, name):
        return getattr(self._stream, name)


def install(limit: int = 20000) -> None:
    """Cap stdout/stderr per cell at ``limit`` characters; make exit()/quit() and shell
    commands harmless."""
    from .. import grade as _grade
    _grade.UNDER_RUNNER = True  # check() in the submission defers to the grading cells
    _RAW["stdout"] = sys.stdout
    capped = [_CappedStream(sys.stdout, limit), _CappedStream(sys.stderr, limit)]
    sys.stdout, sys.stderr = capped
    try:
        ip = get_ipython()  # noqa: F821  (defined inside IPython)
    except NameError:
        return

    def reset(*args, **kwargs):
        for s in capped:
            s.reset()

    ip.events.register("pre_run_cell", reset)

    def ask_exit(*args, **kwargs):
        print("[structdrop grader: exit()/quit() ignored]")

    ip.ask_exit = ask_exit

    def no_shell(cmd, *args, **kwargs):
        print("[structdrop grader: shell commands (!cmd, %pip, %conda) are not run when grading]")

    # `!cmd`, `x = !cmd`, %pip and %conda go through these; a copied `!pip install ...` must not
    # change the grading environment.
    ip.system = no_shell
    ip.system_raw = no_shell
    ip.getoutput = no_shell


def emit(question_id: str, namespace: dict, time_limit_s: Optional[float] = 60.0) -> None:
    """Grade the answer to ``question_id`` found in ``namespace`` and write it after MARKER."""
    from . import question
    from .core import Property, Result, grade
    q = question(question_id)
    if q.answer_name not in namespace:
        result = Result(q.id, q.title, q.points, hint=q.hint, properties=[Property(
            f"{q.answer_name} is defined", False,
            f"no variable or function named {q.answer_name!r} after running the notebook "
            "(did the cell that defines it raise, or is it still a stub?)")])
    else:
        result = grade(q, namespace[q.answer_name], time_limit_s=time_limit_s)
    line = MARKER + " " + json.dumps(result.to_dict())
    stream = _RAW.get("stdout", sys.__stdout__)
    stream.write("\n" + line + "\n")
    stream.flush()
