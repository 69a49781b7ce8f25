"""The grader's in-process parts: registry, check/score, helpers, time limits, generator, CSV.

Everything here runs without a Jupyter kernel and takes a few seconds.
"""
import csv
import signal
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import numpy as np
import pytest

from structdrop_tutorial import grade
from structdrop_tutorial.grade import core, make_exercises, runner
from structdrop_tutorial.grade.core import Property, Question, Result

REPO = Path(__file__).resolve().parents[1]
SOLUTIONS = sorted((REPO / "solutions").glob("ex[0-9][0-9]_*.ipynb"))


# --------------------------------------------------------------------------- registry
def test_registry_loads_every_question_module():
    assert grade.registry_errors() == {}
    qs = grade.all_questions()
    assert qs, "no questions found"
    for qid, q in qs.items():
        assert qid == q.id and qid.startswith(q.exercise + ".")
        assert q.points > 0 and q.answer_name.isidentifier() and q.hint and q.title


@pytest.mark.parametrize("exercise", sorted({q.exercise for q in grade.all_questions().values()}))
def test_each_exercise_has_three_graded_questions(exercise):
    assert len(grade.exercise_questions(exercise)) >= 3


@pytest.mark.parametrize("path", SOLUTIONS, ids=lambda p: p.stem)
def test_each_solution_notebook_has_questions_and_metadata(path):
    nb = nbformat.read(str(path), as_version=4)
    ex = nb.metadata["structdrop"]["exercise"]
    assert path.name.startswith(ex + "_")
    assert grade.exercise_questions(ex), f"no question module for {ex}"
    first = next(c for c in nb.cells if c.cell_type == "code")
    assert "nbval-ignore-output" in first.metadata.get("tags", [])
    assert "except ImportError:" in first.source and "%pip install" in first.source
    sources = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    for q in grade.exercise_questions(ex):
        assert f'check("{q.id}", {q.answer_name})' in sources, f"{q.id} is never checked"


def test_unknown_question_lists_the_known_ones():
    with pytest.raises(KeyError, match="ex05.paper_gamma"):
        grade.question("ex05.no_such_question")
    with pytest.raises(KeyError, match="the exercises are ex01, ex02"):
        grade.question("ex99.x")


# --------------------------------------------------------------------------- anti-constant
def _raiser(*args, **kwargs):
    raise RuntimeError("boom")


CONSTANTS = [None, 0, 0.5, (1, 1, 1), np.zeros((2, 3, 3, 2)), lambda *a, **k: None,
             lambda *a, **k: 0.25, lambda *a, **k: np.ones((2, 4, 4, 3), dtype=bool),
             lambda *a, **k: (1, 1), _raiser]


@pytest.mark.parametrize("qid", sorted(grade.all_questions()))
def test_no_question_passes_with_a_constant(qid, capsys):
    q = grade.question(qid)
    for answer in CONSTANTS:
        result = core.grade(q, answer, time_limit_s=30)
        assert not result.passed, f"{qid} passed with {answer!r}"
        assert result.points == 0


# --------------------------------------------------------------------------- check / score
def test_check_prints_report_and_score_adds_up(capsys):
    from structdrop_tutorial.gamma import coverage_counts, paper_gamma

    assert grade.check("ex05.paper_gamma", paper_gamma) is None
    out = capsys.readouterr().out
    assert "ex05.paper_gamma" in out and "PASSED" in out and "2/2 points" in out
    grade.check("ex05.coverage_counts", lambda b, s: np.zeros(s, dtype=int))
    out = capsys.readouterr().out
    assert "FAILED" in out and "[FAIL]" in out and "hint:" in out and "expected" in out
    assert grade.last_result("ex05.paper_gamma").passed
    t = grade.totals("ex05")
    assert t["points"] == 2 and t["max_points"] == 9
    grade.score("ex05")
    out = capsys.readouterr().out
    assert "ex05: 2/9 points" in out and "not checked" in out
    grade.check("ex05.coverage_counts", lambda b, s: coverage_counts(b, s))
    assert grade.totals("ex05")["points"] == 4


def test_not_implemented_is_reported_as_such(capsys):
    def stub(*args):
        raise NotImplementedError("pad the seeds")
    grade.check("ex04.keep_mask", stub)
    out = capsys.readouterr().out
    assert "not implemented yet (pad the seeds)" in out


def test_mutating_the_input_fails(capsys):
    def apply_in_place(x, keep):
        x *= keep
        x *= x.dtype.type(keep.size / max(keep.sum(), 1))
        return x
    grade.check("ex04.apply_mask", apply_in_place)
    out = capsys.readouterr().out
    assert "modified in place" in out and "0/2 points" in out


def test_exit_inside_an_answer_costs_only_that_answer():
    def leave(*args):
        raise SystemExit(4)
    r = core.grade(grade.question("ex05.paper_gamma"), leave)
    assert not r.passed and "SystemExit: 4" in r.report()


def test_wrong_shape_and_type_are_explained():
    from structdrop_tutorial.gamma import coverage_counts
    r = core.grade(grade.question("ex05.coverage_counts"), lambda b, s: coverage_counts(b, s)[1:])
    assert not r.passed and "expected shape" in r.report()
    r = core.grade(grade.question("ex05.paper_gamma"), lambda *a: "0.1")
    assert not r.passed and "expected a float" in r.report()


def _loop_until_stopped(stopped_by, give_up_s=60.0):
    """An answer that loops until an exception stops it (recorded in ``stopped_by``); it gives
    up and returns None after ``give_up_s`` so that a broken time limit fails the test instead
    of hanging it."""
    def forever(*args):
        end = time.monotonic() + give_up_s
        try:
            while time.monotonic() < end:
                pass
        except BaseException as exc:
            stopped_by.append(exc)
            raise
    return forever


def test_infinite_loop_in_an_answer_is_stopped():
    stopped_by = []
    r = core.grade(grade.question("ex05.paper_gamma"), _loop_until_stopped(stopped_by),
                   time_limit_s=1.0)
    # the grader's alarm interrupted the loop, and the report says the time limit was hit
    assert len(stopped_by) == 1 and isinstance(stopped_by[0], core.GradeTimeout)
    assert not r.passed and "did not finish within 1 s" in r.report()
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)  # and the alarm is disarmed


def test_nested_time_limits_keep_the_outer_one():
    def checker(answer):
        _, fail = core.call_safely("inner", answer, time_limit_s=30)
        return [fail or Property("inner", True)]

    stopped_by = []
    q = Question("ex99.t", 1, "t", checker, "hint", "title")
    # gives up after 20 s, before the inner 30 s limit: only the outer limit can stop it
    r = core.grade(q, _loop_until_stopped(stopped_by, give_up_s=20.0), time_limit_s=0.5)
    assert len(stopped_by) == 1 and isinstance(stopped_by[0], core.GradeTimeout)
    # the outer (0.5 s) limit stopped the answer and grade() reported it, not the inner one
    assert "checking did not finish within 0.5 s" in r.report()
    assert "did not return within 30 s" not in r.report() and not r.passed
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)


def test_result_round_trips_through_json():
    r = Result("ex01.a", "t", 3, [Property("p", True, "d"), Property("q", False, "e")], "h")
    back = Result.from_dict(r.to_dict())
    assert back.report() == r.report() and back.points == 0 and repr(back) == repr(r)


def test_compare_arrays_states_tolerance_and_differences():
    p = core.compare_arrays("x", np.array([1.0, 2.0]), np.array([1.0, 2.5]), atol=1e-6)
    assert not p.passed and "atol=1e-06" in p.detail and "at (1,)" in p.detail
    assert core.compare_arrays("x", [1.0, 2.0], np.array([1.0, 2.0 + 1e-9]), atol=1e-6).passed


# --------------------------------------------------------------------------- generator
SOURCE = '''def f(x):
    y = 1
    # BEGIN SOLUTION (hint: add (one) to x)
    return x + 1
    # END SOLUTION

# BEGIN SOLUTION
value = 3
# END SOLUTION
print("kept")'''


def test_strip_solution_replaces_regions_at_their_indentation():
    out = make_exercises.strip_solution(SOURCE)
    assert out == ('def f(x):\n    y = 1\n    raise NotImplementedError(\'add (one) to x\')\n\n'
                   'raise NotImplementedError(\'your code here\')\nprint("kept")')
    compile(out, "<exercise>", "exec")


@pytest.mark.parametrize("bad", ["# BEGIN SOLUTION\nx = 1", "x = 1\n# END SOLUTION",
                                 "# BEGIN SOLUTION\n# BEGIN SOLUTION\n# END SOLUTION"])
def test_strip_solution_rejects_unbalanced_markers(bad):
    with pytest.raises(make_exercises.SolutionMarkerError):
        make_exercises.strip_solution(bad)


def _tiny_solution(tmp_path):
    nb = nbformat.v4.new_notebook()
    nb.metadata["structdrop"] = {"exercise": "ex05"}
    nb.cells = [nbformat.v4.new_markdown_cell("# Title"),
                nbformat.v4.new_code_cell(SOURCE, execution_count=1, outputs=[
                    nbformat.v4.new_output("stream", name="stdout", text="kept\n")]),
                nbformat.v4.new_code_cell("secret = 42", metadata={"tags": ["solution-only"]})]
    sol = tmp_path / "solutions"
    sol.mkdir()
    nbformat.write(nb, str(sol / "ex05_tiny.ipynb"))
    return sol


def test_generator_writes_and_checks(tmp_path):
    sol = _tiny_solution(tmp_path)
    ex = tmp_path / "exercises"
    assert make_exercises.main([str(sol), str(ex), "--check"]) == 1  # missing
    assert make_exercises.main([str(sol), str(ex)]) == 0
    nb = nbformat.read(str(ex / "ex05_tiny.ipynb"), as_version=4)
    assert [c.cell_type for c in nb.cells] == ["markdown", "code"]
    code = nb.cells[1]
    assert code.outputs == [] and code.execution_count is None
    assert "NotImplementedError('add (one) to x')" in code.source and "x + 1" not in code.source
    assert nb.metadata["structdrop"] == {"exercise": "ex05"}
    assert make_exercises.main([str(sol), str(ex), "--check"]) == 0
    (ex / "ex05_tiny.ipynb").write_text((ex / "ex05_tiny.ipynb").read_text() + " ")
    assert make_exercises.main([str(sol), str(ex), "--check"]) == 1
    (ex / "ex09_orphan.ipynb").write_text("{}")
    problems = make_exercises.generate(sol, ex, check=True)
    assert any("orphan" in p for p in problems)


@pytest.mark.parametrize("path", SOLUTIONS, ids=lambda p: p.stem)
def test_exercise_notebooks_leak_no_solution(path):
    ex = REPO / "exercises" / path.name
    assert ex.exists(), "run: python -m structdrop_tutorial.grade.make_exercises solutions exercises"
    nb = nbformat.read(str(ex), as_version=4)
    for cell in nb.cells:
        assert "SOLUTION" not in cell.source.replace("NotImplementedError", "")
        assert make_exercises.SOLUTION_ONLY_TAG not in cell.metadata.get("tags", [])
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None
    assert "NotImplementedError" in "".join(c.source for c in nb.cells)


def test_committed_exercises_match_the_solutions():
    """exercises/ is exactly what the generator makes from solutions/ (run it to fix)."""
    proc = subprocess.run([sys.executable, "-m", "structdrop_tutorial.grade.make_exercises",
                           str(REPO / "solutions"), str(REPO / "exercises"), "--check"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


# --------------------------------------------------------------------------- CSV / feedback
def test_csv_and_feedback_without_kernels(tmp_path):
    a = runner.SubmissionResult("sub/a/ex05_x.ipynb", "ex05", results=[
        Result("ex05.paper_gamma", "t", 2, [Property("p", True)]),
        Result("ex05.exact_gamma", "t", 3, [Property("p", False, "wrong")], hint="bisect")],
        events=["code cell 2 raised ValueError: no"])
    b = runner.SubmissionResult("sub/b/ex05_x.ipynb", None, error="cannot tell which exercise")
    ids = runner.write_csv([a, b], tmp_path / "g.csv")
    assert ids == ["ex05.exact_gamma", "ex05.paper_gamma"]
    rows = list(csv.DictReader(open(tmp_path / "g.csv")))
    assert rows[0]["ex05.paper_gamma"] == "2" and rows[0]["ex05.exact_gamma"] == "0"
    assert rows[0]["total"] == "2" and rows[0]["max_total"] == "5"
    assert "ValueError" in rows[0]["notes"] and rows[1]["notes"] == "cannot tell which exercise"
    text = a.feedback()
    assert "Total: 2/5 points" in text and "hint: bisect" in text and "ValueError" in text
    used = set()
    assert runner.feedback_name(a.path, used) == "ex05_x.txt"
    assert runner.feedback_name(b.path, used) == "ex05_x_2.txt"


def test_unknown_exercise_is_reported_not_raised(tmp_path):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("x = 1")]
    path = tmp_path / "homework.ipynb"
    nbformat.write(nb, str(path))
    r = runner.grade_notebook(path)
    assert r.error and "which exercise" in r.error and r.points == 0
    bad = tmp_path / "ex01_broken.ipynb"
    bad.write_text("not json")
    r = runner.grade_notebook(bad)
    assert r.error and "could not read" in r.error
    # the exercise comes from the file name, and each of its questions scores 0 of its points
    assert r.exercise == "ex01" and r.points == 0
    assert [q.question_id for q in r.results] == [q.id for q in grade.exercise_questions("ex01")]
    assert sum(q.max_points for q in r.results) == 7


def test_command_line_rejects_bad_arguments_before_grading(tmp_path, capsys):
    """Exit status 2, and nothing graded, for an --out that is a folder, a --feedback-dir that
    is a file, or a limit that is not positive."""
    from structdrop_tutorial.grade.__main__ import main
    nb = tmp_path / "ex01_x.ipynb"
    nb.write_text("not json")
    (tmp_path / "a_file").write_text("")
    for extra, message in ([["--out", str(tmp_path)], "--out must be"],
                           [["--feedback-dir", str(tmp_path / "a_file")], "--feedback-dir must"],
                           [["--cell-timeout", "-5"], "--cell-timeout must be positive"],
                           [["--total-timeout", "0"], "--total-timeout must be positive"],
                           [["--check-timeout", "-1"], "--check-timeout must be positive"],
                           [["--output-limit", "0"], "--output-limit must be positive"]):
        with pytest.raises(SystemExit) as exc:
            main([str(nb), "--out", str(tmp_path / "g.csv"), "--quiet"] + extra)
        assert exc.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "g.csv").exists()
