"""Graded exercises: ``check(question_id, answer)`` in a notebook, and the instructor's runner.

In an exercise notebook::

    from structdrop_tutorial.grade import check, score
    check("ex01.noise_shape_for", noise_shape_for)   # prints pass/fail per property
    score("ex01")                                    # total of the checks run so far

Instructors grade a batch of submitted notebooks, each in its own kernel::

    python -m structdrop_tutorial.grade submissions/*.ipynb --out grades.csv --feedback-dir feedback

Exercise notebooks are generated from the solution notebooks (``# BEGIN SOLUTION (hint: ...)``
... ``# END SOLUTION`` regions become ``raise NotImplementedError``; cells tagged
``solution-only`` are dropped)::

    python -m structdrop_tutorial.grade.make_exercises solutions exercises [--check]

Questions live in ``structdrop_tutorial/grade/questions/exNN_<topic>.py``; each module defines
``QUESTIONS: list[Question]``. They are discovered by :func:`all_questions`.
"""
from __future__ import annotations

import importlib
import pkgutil
import re
from typing import Any, Dict, List, Optional

from .core import CHECK_TIME_LIMIT_S, Property, Question, Result, grade

__all__ = ["check", "score", "last_result", "totals", "all_questions", "question", "exercises", "exercise_questions",
           "Property", "Question", "Result", "registry_errors"]

_REGISTRY: Optional[Dict[str, Question]] = None
_ERRORS: Dict[str, str] = {}
_LAST: Dict[str, Result] = {}

#: set inside a kernel run by the instructor's runner: check() then only says that the
#: runner grades every answer itself after the notebook has run
UNDER_RUNNER = False


def _load() -> Dict[str, Question]:
    global _REGISTRY
    if _REGISTRY is not None:
        return _REGISTRY
    qpkg = importlib.import_module(__name__ + ".questions")
    registry: Dict[str, Question] = {}
    names = sorted(m.name for m in pkgutil.iter_modules(qpkg.__path__)
                   if re.match(r"ex\d\d", m.name))
    for name in names:
        try:
            module = importlib.import_module(f"{qpkg.__name__}.{name}")
            qs = list(getattr(module, "QUESTIONS"))
        except Exception as exc:  # one broken module must not hide the others
            _ERRORS[name] = f"{type(exc).__name__}: {exc}"
            continue
        for q in qs:
            if q.id in registry:
                _ERRORS[name] = f"duplicate question id {q.id!r}"
                continue
            if not q.id.startswith(name[:4] + "."):
                _ERRORS[name] = f"question id {q.id!r} does not start with {name[:4]!r}."
            registry[q.id] = q
    _REGISTRY = registry
    return registry


def registry_errors() -> Dict[str, str]:
    """Question modules that failed to import, by module name (empty when all is well)."""
    _load()
    return dict(_ERRORS)


def all_questions() -> Dict[str, Question]:
    """Every question, by id, in exercise order."""
    return dict(_load())


def question(question_id: str) -> Question:
    """The question with this id; a KeyError lists the ids of its exercise otherwise."""
    reg = _load()
    if question_id not in reg:
        ex = question_id.split(".", 1)[0]
        same = [q for q in reg if q.startswith(ex + ".")]
        broken = [f"{m} ({e})" for m, e in _ERRORS.items() if m.startswith(ex)]
        msg = f"unknown question id {question_id!r}"
        if same:
            msg += f"; {ex} has: {', '.join(same)}"
        elif not broken:
            msg += f"; the exercises are {', '.join(exercises())}"
        if broken:
            msg += f"; question module failed to load: {'; '.join(broken)}"
        raise KeyError(msg)
    return reg[question_id]


def exercises() -> List[str]:
    """The exercise ids that have questions, e.g. ``["ex01", "ex02", ...]``."""
    return sorted({q.exercise for q in _load().values()})


def exercise_questions(exercise: str) -> List[Question]:
    """The questions of one exercise (``"ex01"``), in the order their module lists them."""
    return [q for q in _load().values() if q.exercise == exercise]


def check(question_id: str, answer: Any, *, quiet: bool = False,
          time_limit_s: Optional[float] = CHECK_TIME_LIMIT_S) -> None:
    """Grade ``answer`` for one question and print a report.

    The report has one line per checked property (pass/FAIL with details), the points, and on
    failure what was expected versus what came back plus a hint. Nothing is returned (so that a
    notebook cell ending in ``check(...)`` shows only the report); :func:`last_result` gives the
    :class:`Result`, and :func:`score` adds up the latest result of each question.
    """
    q = question(question_id)
    if UNDER_RUNNER:
        result = Result(q.id, q.title, q.points, hint=q.hint,
                        note="not checked here: the instructor's runner grades every answer "
                             "after the notebook has run")
        if not quiet:
            print(f"{q.id}: graded by the runner after the notebook has run")
        return None
    result = grade(q, answer, time_limit_s=time_limit_s)
    _LAST[q.id] = result
    if not quiet:
        print(result.report())
    return None


def last_result(question_id: str) -> Optional[Result]:
    """The :class:`Result` of the latest :func:`check` of this question (None if not checked)."""
    return _LAST.get(question(question_id).id)


def totals(exercise: str) -> Dict[str, Any]:
    """The points of the latest :func:`check` of each question of ``exercise``, added up.

    Questions not checked yet count zero.
    """
    qs = exercise_questions(exercise)
    got = sum(_LAST[q.id].points for q in qs if q.id in _LAST)
    total = sum(q.points for q in qs)
    passed = sum(1 for q in qs if q.id in _LAST and _LAST[q.id].passed)
    return {"exercise": exercise, "points": got, "max_points": total, "passed": passed,
            "questions": len(qs)}


def score(exercise: str) -> None:
    """Print the total of the latest :func:`check` of each question (see :func:`totals`)."""
    t = totals(exercise)
    if not t["questions"]:
        raise KeyError(f"no questions for exercise {exercise!r}; known: {', '.join(exercises())}")
    print(f"{exercise}: {t['points']}/{t['max_points']} points "
          f"({t['passed']} of {t['questions']} questions passed)")
    for q in exercise_questions(exercise):
        r = _LAST.get(q.id)
        state = "not checked" if r is None else f"{r.points}/{q.points}"
        print(f"  {q.id:<32} {state}")
