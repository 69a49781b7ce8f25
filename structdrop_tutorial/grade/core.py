"""The grader's building blocks: properties, questions, results and checker helpers.

A :class:`Question` owns a *checker*: a function that receives the learner's answer (a value or a
function) and returns a list of :class:`Property`, each a named pass/fail with a detail line. A
question earns its points only when every property passes; there is no partial credit.

Checkers are written with the helpers below so that every question reports failures the same way:

* :func:`call_safely` calls the learner's function and turns an exception into a failed property
  (``NotImplementedError`` reads "not implemented yet");
* :func:`call_checked` also verifies that the call did not modify its array arguments;
* :func:`compare_arrays` compares an array-like answer with the reference and, on failure, says
  what was expected and what came back (shapes, dtypes, a small example, the first differing
  values) and the tolerance that was used;
* :func:`compare_values` does the same for plain Python values (tuples, ints, ...).

Checkers must not be passable by constants: draw inputs from several seeds and shapes, compare
with the package's reference implementation, and state tolerances in the property details.
This module imports neither TensorFlow nor PyTorch; :func:`to_numpy` converts their tensors
without importing them.
"""
from __future__ import annotations

import copy
import math
import signal
import threading
import time
import traceback
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, List, Optional, Sequence, Tuple

import numpy as np

__all__ = ["Property", "Question", "Result", "GradeTimeout", "grade", "to_numpy", "describe",
           "call_safely", "call_checked", "compare_arrays", "compare_values", "is_callable",
           "not_constant", "binomial_interval", "shared_over", "time_limit", "fmt_array",
           "timed_out", "CHECK_TIME_LIMIT_S"]

#: time limit (seconds) for checking one answer, in a notebook and in the instructor's runner
#: alike, so that an answer that passes for the learner is not timed out when graded
CHECK_TIME_LIMIT_S = 120.0
#: how a call stopped by its time limit is reported (:func:`call_safely`, :func:`timed_out`)
_TIMED_OUT = "did not return within"


# --------------------------------------------------------------------------- data
@dataclass
class Property:
    """One checked property of an answer: a name, whether it holds and a detail line."""
    name: str
    passed: bool
    detail: str = ""

    def to_dict(self) -> dict:
        return {"name": self.name, "passed": bool(self.passed), "detail": self.detail}


@dataclass
class Question:
    """A graded question.

    Attributes:
        id: ``"exNN.<short>"``, e.g. ``"ex01.spatial_noise_shape"``.
        points: points earned when every property passes.
        answer_name: the name the learner's notebook defines (function or value); the
            instructor's runner looks it up in the kernel's namespace.
        checker: ``checker(answer) -> list[Property]``.
        hint: shown when the answer fails.
        title: one line saying what is asked.
    """
    id: str
    points: int
    answer_name: str
    checker: Callable[[Any], List[Property]]
    hint: str
    title: str

    @property
    def exercise(self) -> str:
        return self.id.split(".", 1)[0]


@dataclass
class Result:
    """The outcome of grading one answer to one question."""
    question_id: str
    title: str
    max_points: int
    properties: List[Property] = field(default_factory=list)
    hint: str = ""
    note: str = ""

    @property
    def passed(self) -> bool:
        return bool(self.properties) and all(p.passed for p in self.properties)

    @property
    def points(self) -> int:
        return self.max_points if self.passed else 0

    def report(self) -> str:
        """A plain-text report: one line per property, the points, and the hint on failure."""
        verdict = "PASSED" if self.passed else "FAILED"
        lines = [f"{self.question_id} ({self.title}): {verdict}, "
                 f"{self.points}/{self.max_points} points"]
        if self.note:
            lines.append(f"  note: {self.note}")
        for p in self.properties:
            mark = "pass" if p.passed else "FAIL"
            head = f"  [{mark}] {p.name}"
            if p.detail:
                detail = p.detail.replace("\n", "\n         ")
                head += f": {detail}" if p.passed or "\n" not in p.detail else f"\n         {detail}"
            lines.append(head)
        if not self.passed and self.hint:
            lines.append(f"  hint: {self.hint}")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {"question_id": self.question_id, "title": self.title,
                "max_points": self.max_points, "points": self.points, "passed": self.passed,
                "note": self.note, "hint": self.hint,
                "properties": [p.to_dict() for p in self.properties]}

    @classmethod
    def from_dict(cls, d: dict) -> "Result":
        return cls(question_id=d["question_id"], title=d.get("title", ""),
                   max_points=int(d["max_points"]), hint=d.get("hint", ""),
                   note=d.get("note", ""),
                   properties=[Property(p["name"], bool(p["passed"]), p.get("detail", ""))
                               for p in d.get("properties", [])])

    def __repr__(self) -> str:  # stable: no ids, so notebook outputs reproduce
        return f"Result({self.question_id}: {self.points}/{self.max_points} points)"


class GradeTimeout(BaseException):
    """Raised inside a learner's function that runs past the checker's time limit.

    A BaseException, so that a bare ``except Exception`` in the learner's code cannot swallow it.
    """


# --------------------------------------------------------------------------- grading
def grade(question: Question, answer: Any, time_limit_s: Optional[float] = None) -> Result:
    """Run ``question.checker(answer)`` and collect its properties into a :class:`Result`.

    A checker that raises (because the answer is odd in a way the checker did not foresee) or
    returns nothing yields a failed property rather than an exception, so grading always
    finishes. ``time_limit_s`` bounds the whole check (Unix main thread only; elsewhere ignored).
    """
    result = Result(question.id, question.title, question.points, hint=question.hint)
    try:
        with time_limit(time_limit_s):
            props = question.checker(answer)
        props = list(props or [])
        if not props:
            props = [Property("checker", False, "the checker returned no properties")]
        for p in props:
            if not isinstance(p, Property):
                raise TypeError(f"checker returned {type(p).__name__}, not Property")
    except GradeTimeout:
        props = [Property("time limit", False,
                          f"checking did not finish within {time_limit_s:g} s "
                          "(an infinite loop, or a very slow answer?)")]
    except (Exception, SystemExit) as exc:  # the grader must finish whatever the answer does
        props = [Property("checker", False,
                          f"checking the answer raised {_exc_line(exc)}")]
    result.properties = _tidy(props)
    return result


def _tidy(props: List[Property]) -> List[Property]:
    """Drop repeated failures; a stub that is not implemented yet gets one line, not one per case."""
    stub = next((p for p in props if not p.passed and p.detail.startswith("not implemented yet")),
                None)
    if stub is not None:
        return [p for p in props if p.passed and "callable" in p.name] + [
            Property("implemented", False, stub.detail)]
    seen, out = set(), []
    for p in props:
        key = (p.passed, p.name, p.detail)
        if not p.passed and key in seen:
            continue
        seen.add(key)
        out.append(p)
    return out


@contextmanager
def time_limit(seconds: Optional[float]):
    """Raise :class:`GradeTimeout` in the block after ``seconds`` (SIGALRM; main thread only).

    Yields a token; the exception raised by this block's own alarm has it as ``args[0]``, so
    that a handler can tell its own time-out from an enclosing block's (which it re-raises).
    """
    token = object()  # identifies this block's alarm (GradeTimeout.args[0])
    usable = (seconds is not None and seconds > 0 and hasattr(signal, "setitimer")
              and threading.current_thread() is threading.main_thread())
    if not usable:
        yield token
        return

    # Nested limits: an inner limit never extends an outer one, and the outer timer is
    # re-armed with what is left of it when the inner block ends.
    outer_left, _ = signal.getitimer(signal.ITIMER_REAL)
    old = signal.getsignal(signal.SIGALRM)
    if outer_left > 0 and outer_left <= seconds:
        yield token  # the outer limit comes first: let it fire (with the outer token)
        return

    def on_alarm(signum, frame):
        raise GradeTimeout(token)

    start = time.monotonic()
    signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield token
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
        if outer_left > 0:
            left = outer_left - (time.monotonic() - start)
            signal.setitimer(signal.ITIMER_REAL, max(left, 1e-3))


# --------------------------------------------------------------------------- formatting
def to_numpy(x) -> np.ndarray:
    """``x`` as a NumPy array: NumPy, lists, torch tensors (detached, on the CPU), TF tensors."""
    if isinstance(x, np.ndarray):
        return x
    mod = type(x).__module__ or ""
    if mod.startswith("torch"):
        return x.detach().cpu().numpy()
    if hasattr(x, "numpy") and callable(x.numpy) and (mod.startswith("tensorflow")
                                                       or mod.startswith("keras")):
        return np.asarray(x.numpy())
    return np.asarray(x)


def describe(x) -> str:
    """A short description of a value: its type, and shape/dtype for arrays and tensors."""
    mod = type(x).__module__ or ""
    if hasattr(x, "shape") and hasattr(x, "dtype"):
        try:
            shape = tuple(int(s) for s in x.shape)
        except Exception:
            shape = x.shape
        dtype = str(x.dtype).replace("torch.", "").replace("<dtype: '", "").rstrip("'>")
        kind = "torch tensor" if mod.startswith("torch") else (
            "tf tensor" if mod.startswith("tensorflow") else type(x).__name__)
        return f"{kind} of shape {shape} and dtype {dtype}"
    if x is None:
        return "None"
    text = repr(x)
    if len(text) > 80:
        text = text[:77] + "..."
    if " at 0x" in text:
        text = f"a {type(x).__name__}"
    return f"{type(x).__name__} {text}"


def fmt_array(a: np.ndarray, max_items: int = 8, decimals: int = 4) -> str:
    """A one-line preview of an array's first ``max_items`` values, rounded."""
    flat = np.asarray(a).ravel()
    items = flat[:max_items]
    if items.dtype.kind == "f":
        text = ", ".join(f"{v:.{decimals}g}" for v in items)
    else:
        text = ", ".join(str(v) for v in items.tolist())
    more = ", ..." if flat.size > max_items else ""
    return f"[{text}{more}]"


def _exc_line(exc: BaseException) -> str:
    msg = str(exc)
    if len(msg) > 300:
        msg = msg[:297] + "..."
    return f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__


def _where(exc: BaseException) -> str:
    """The last frame of the learner's code in a traceback, as 'line N of f'."""
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return ""
    f = frames[-1]
    return f" (in {f.name}, line {f.lineno})"


# --------------------------------------------------------------------------- calling
def is_callable(name: str, answer) -> Property:
    """Property: the answer is a function (or other callable)."""
    if callable(answer):
        return Property(f"{name} is callable", True)
    return Property(f"{name} is callable", False,
                    f"expected a function, got {describe(answer)}")


_MISSING = object()


def call_safely(name: str, fn: Callable, *args, time_limit_s: Optional[float] = None,
                **kwargs) -> Tuple[Any, Optional[Property]]:
    """Call ``fn(*args, **kwargs)``; return ``(value, None)`` or ``(None, failed Property)``.

    ``NotImplementedError`` is reported as "not implemented yet"; any other exception by its
    type, message and line. ``time_limit_s`` stops a call that runs too long.
    """
    if not callable(fn):
        return None, Property(name, False, f"expected a function, got {describe(fn)}")
    token = None
    try:
        with time_limit(time_limit_s) as token:
            return fn(*args, **kwargs), None
    except NotImplementedError as exc:
        msg = f" ({exc})" if str(exc) else ""
        return None, Property(name, False, f"not implemented yet{msg}")
    except GradeTimeout as exc:
        if not exc.args or exc.args[0] is not token:
            raise  # an enclosing limit ran out: let its owner report it
        return None, Property(name, False, f"{_TIMED_OUT} {time_limit_s:g} s")
    except SystemExit as exc:
        return None, Property(name, False, f"called exit (SystemExit: {exc.code!r}) instead of "
                                           "returning")
    except Exception as exc:
        return None, Property(name, False, f"raised {_exc_line(exc)}{_where(exc)}")


def timed_out(failures: Sequence[Property]) -> bool:
    """Whether one of the failed properties :func:`call_safely` returned is a time-out."""
    return any(not p.passed and p.detail.startswith(_TIMED_OUT) for p in failures)


def _snapshot(obj):
    """A copy of the array-like arguments, for the mutation check (others: None)."""
    mod = type(obj).__module__ or ""
    if isinstance(obj, np.ndarray):
        return obj.copy()
    if mod.startswith("torch") and hasattr(obj, "detach"):
        return obj.detach().clone()
    if isinstance(obj, (list, dict)):
        try:
            return copy.deepcopy(obj)
        except Exception:
            return None
    return None


def _same(before, after) -> bool:
    try:
        a, b = to_numpy(before), to_numpy(after)
        return a.shape == b.shape and bool(np.array_equal(a, b, equal_nan=a.dtype.kind == "f"))
    except Exception:
        return before == after


def call_checked(name: str, fn: Callable, *args, time_limit_s: Optional[float] = None,
                 **kwargs) -> Tuple[Any, List[Property]]:
    """Like :func:`call_safely`, and also check that no array/list argument was modified.

    Returns ``(value, failures)``: ``failures`` is empty when the call returned normally and
    left its inputs alone, else a list of failed properties.
    """
    named = [(f"argument {i + 1}", a) for i, a in enumerate(args)] + list(kwargs.items())
    before = [(label, obj, _snapshot(obj)) for label, obj in named]
    value, failure = call_safely(name, fn, *args, time_limit_s=time_limit_s, **kwargs)
    failures = [failure] if failure is not None else []
    for label, obj, snap in before:
        if snap is not None and not _same(snap, obj):
            failures.append(Property(f"{name} leaves its input alone", False,
                                     f"{label} was modified in place; work on a copy "
                                     "(e.g. multiply into a new array)"))
    return value, failures


# --------------------------------------------------------------------------- comparing
def compare_arrays(name: str, got, expected, atol: float = 0.0, rtol: float = 0.0,
                   check_dtype: bool = False, context: str = "") -> Property:
    """Property: ``got`` matches the reference ``expected`` within ``|got - exp| <= atol + rtol*|exp|``.

    On failure the detail gives both shapes (and dtypes), a small example of each and the first
    differing positions with both values. ``context`` (e.g. "seed 3, shape (2, 5, 5, 4)") is
    prefixed to the detail so the learner can reproduce the case.
    """
    prefix = f"{context}: " if context else ""
    tol = ("exact" if atol == 0 and rtol == 0 else
           f"tolerance atol={atol:g}" + (f", rtol={rtol:g}" if rtol else ""))
    if got is None:
        return Property(name, False, f"{prefix}expected {describe(expected)}, got None "
                                     "(did the function forget to return?)")
    try:
        g = to_numpy(got)
    except Exception as exc:
        return Property(name, False, f"{prefix}could not turn {describe(got)} into an array: "
                                     f"{_exc_line(exc)}")
    e = to_numpy(expected)
    if g.dtype == object:
        return Property(name, False, f"{prefix}expected {describe(expected)}, got {describe(got)}")
    if g.shape != e.shape:
        return Property(name, False, f"{prefix}expected shape {e.shape}, got shape {g.shape} "
                                     f"({describe(got)})")
    if check_dtype and g.dtype != e.dtype:
        return Property(name, False, f"{prefix}expected dtype {e.dtype}, got dtype {g.dtype}")
    if g.dtype.kind not in "biuf" :
        return Property(name, False, f"{prefix}expected numbers, got dtype {g.dtype}")
    ge, ee = g.astype(np.float64), e.astype(np.float64)
    bad = ~(np.abs(ge - ee) <= atol + rtol * np.abs(ee))
    bad |= np.isnan(ge) != np.isnan(ee)
    bad &= ~(np.isnan(ge) & np.isnan(ee))
    if not bad.any():
        return Property(name, True, f"{prefix}matches the reference ({tol}, shape {e.shape})")
    idx = np.argwhere(bad)[:3]
    diffs = "; ".join(f"at {tuple(int(i) for i in ix)} expected {_num(e[tuple(ix)])}, "
                      f"got {_num(g[tuple(ix)])}" for ix in idx)
    return Property(name, False,
                    f"{prefix}{int(bad.sum())} of {e.size} values differ ({tol}), shape {e.shape}\n"
                    f"first differences: {diffs}\n"
                    f"expected starts {fmt_array(e)}\n"
                    f"got starts      {fmt_array(g)}")


def _num(v) -> str:
    v = v.item() if hasattr(v, "item") else v
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def compare_values(name: str, got, expected, context: str = "") -> Property:
    """Property: ``got == expected`` for plain values (tuples compare element by element).

    Lists and tuples are compared as tuples, so ``[1, 2]`` equals ``(1, 2)``; NumPy integers
    equal Python ints.
    """
    prefix = f"{context}: " if context else ""

    def norm(v):
        if isinstance(v, (list, tuple)):
            return tuple(norm(x) for x in v)
        if isinstance(v, np.generic):
            return v.item()
        return v

    try:
        ok = norm(got) == norm(expected)
        ok = bool(ok)
    except Exception:
        ok = False
    if ok:
        return Property(name, True, f"{prefix}{_short(expected)}")
    return Property(name, False, f"{prefix}expected {_short(expected)}, got {describe(got)}")


def _short(v) -> str:
    text = repr(v)
    return text if len(text) <= 120 else text[:117] + "..."


def not_constant(name: str, outputs: Sequence[Any], failure: Optional[str] = None) -> Property:
    """Property: a function gave different outputs for different inputs (not a constant).

    ``failure`` replaces the default failure detail (for calls whose inputs were the same)."""
    arrays = []
    for o in outputs:
        try:
            arrays.append(to_numpy(o))
        except Exception:
            arrays.append(o)
    distinct = 1
    for i in range(1, len(arrays)):
        if not _same(arrays[0], arrays[i]):
            distinct += 1
    if distinct > 1:
        return Property(name, True, f"{len(outputs)} inputs, outputs differ as they should")
    return Property(name, False, failure or
                    f"the same output came back for {len(outputs)} different inputs")


def binomial_interval(n: int, p: float, sigmas: float = 5.0) -> Tuple[float, float]:
    """Range of a Binomial(n, p) count's mean fraction within ``sigmas`` standard deviations."""
    sd = math.sqrt(max(p * (1 - p), 0.0) / max(n, 1))
    return p - sigmas * sd, p + sigmas * sd


def shared_over(dropped: np.ndarray) -> Optional[str]:
    """How a mask of shape ``(samples, channels, ...)`` is shared, if it is shared entirely.

    ``"channels"`` when, in every sample, all channels have the same pattern (one draw per
    sample); ``"samples"`` when every sample has sample 0's pattern (one mask for the batch);
    None otherwise, and for a mask that is all True or all False (shared along every axis, so
    the sharing says nothing; the checkers report such masks by their drop fraction). Only sharing
    by *every* sample counts, so independent masks fail this test with a probability that is
    negligible at the sizes the checkers use (they say how small).
    """
    d = np.asarray(dropped, dtype=bool)
    if d.ndim < 2 or (d.shape[0] < 2 and d.shape[1] < 2) or d.all() or not d.any():
        return None
    flat = d.reshape(d.shape[0], d.shape[1], -1)
    if d.shape[1] > 1 and np.all(flat == flat[:, :1]):
        return "channels"
    if d.shape[0] > 1 and np.all(flat == flat[:1]):
        return "samples"
    return None
