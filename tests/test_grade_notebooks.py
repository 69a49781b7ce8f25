"""Every solution notebook earns full marks through the runner; every exercise earns zero.

All notebooks are graded in one run (two kernels at a time) by a module fixture; the tests are
parametrized over whatever ``solutions/ex*.ipynb`` exist, so new exercises are covered without
editing this file.
"""
from pathlib import Path

import pytest

from structdrop_tutorial import grade
from structdrop_tutorial.grade import runner

REPO = Path(__file__).resolve().parents[1]
SOLUTIONS = sorted((REPO / "solutions").glob("ex[0-9][0-9]_*.ipynb"))
EXERCISES = [REPO / "exercises" / p.name for p in SOLUTIONS]


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    out = tmp_path_factory.mktemp("grades")
    paths = SOLUTIONS + [p for p in EXERCISES if p.exists()]
    results = runner.grade_submissions(paths, out / "grades.csv", out / "feedback", jobs=2,
                                       log=None, cell_timeout=300, check_timeout=120)
    return {Path(r.path): r for r in results}, out


@pytest.mark.parametrize("path", SOLUTIONS, ids=lambda p: p.stem)
def test_solution_earns_full_marks(graded, path):
    results, _ = graded
    r = results[path]
    assert r.error is None
    qs = grade.exercise_questions(r.exercise)
    assert [x.question_id for x in r.results] == [q.id for q in qs]
    failed = [x.report() for x in r.results if not x.passed]
    assert not failed, "\n".join(failed)
    assert r.points == r.max_points == sum(q.points for q in qs)
    assert r.runs == 1
    assert not r.events, r.events  # no cell raised, timed out or printed too much


@pytest.mark.parametrize("path", EXERCISES, ids=lambda p: p.stem)
def test_exercise_earns_zero_without_grader_error(graded, path):
    assert path.exists(), "run: python -m structdrop_tutorial.grade.make_exercises solutions exercises"
    results, _ = graded
    r = results[path]
    assert r.error is None and r.runs == 1
    assert r.max_points == sum(q.points for q in grade.exercise_questions(r.exercise))
    assert r.points == 0
    assert len(r.results) == len(grade.exercise_questions(r.exercise))
    for x in r.results:  # every question was graded and failed on its own terms
        assert x.properties and not x.passed
        assert "did not report" not in x.report()


def test_csv_and_feedback_files(graded):
    import csv

    results, out = graded
    rows = {Path(row["submission"]): row for row in csv.DictReader(open(out / "grades.csv"))}
    assert set(rows) == set(results)
    for path, r in results.items():
        row = rows[path]
        assert int(row["total"]) == r.points and int(row["max_total"]) == r.max_points
        for x in r.results:
            assert int(row[x.question_id]) == x.points
    names = sorted(p.name for p in (out / "feedback").iterdir())
    assert len(names) == len(results)
    text = (out / "feedback" / names[0]).read_text()
    assert text.startswith("Submission: ") and "Total: " in text
