"""Hostile submissions lose only their own points; the grader always finishes and says why.

The submissions are variants of the ex05 solution (fast checks) and one of ex04. All of them are
graded in one run of the command line (two kernels at a time, small time limits), next to an
untouched solution that must still earn full marks.
"""
import csv
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

REPO = Path(__file__).resolve().parents[1]
EX05 = REPO / "solutions" / "ex05_gamma.ipynb"
EX04 = REPO / "solutions" / "ex04_dropblock_mask.ipynb"
CELL_TIMEOUT, CHECK_TIMEOUT = 15, 8
#: replaces each submission's setup cell (which imports torch to name the device) to save time
LIGHT_SETUP = "import numpy as np\nimport structdrop_tutorial as sd"

# name: (base, cells inserted after the first two code cells, cells appended, expected points
#        per question (others: full), text expected in the feedback)
CASES = {
    "raises": (EX05, [], ["def exact_gamma(rate, block_size, spatial_shape):\n"
                          "    raise RuntimeError('learner bug')"],
               {"ex05.exact_gamma": 0}, "RuntimeError: learner bug"),
    "loops": (EX05, ["while True:\n    pass"],
              ["def paper_gamma(rate, block_size, spatial_shape):\n"
               "    while True:\n        try:\n            pass\n        except Exception:\n"
               "            pass"],
              {"ex05.paper_gamma": 0}, "did not finish within its time limit"),
    "swallows_timeout": (EX05, [], ["def exact_gamma(rate, block_size, spatial_shape):\n"
                                    "    while True:\n        try:\n"
                                    "            while True:\n                pass\n"
                                    "        except BaseException:\n            pass"],
                         {"ex05.exact_gamma": 0}, "checking this answer ran past"),
    "prints": (EX05, ["print('x' * 3_000_000)\nfor i in range(200_000):\n    print(i)",
                      "import os\nos.write(1, b'Z' * 500_000)\nos.write(2, b'Y' * 500_000)",
                      "import sys\nsys.stderr.write('e' * 2_000_000)"],
               [], {}, "printed too much"),
    "wrong_types": (EX04, [], ["def seed_grid(spatial_shape, block_size, seeds='valid'):\n"
                               "    return 'seven by six'",
                               "_km = keep_mask\n"
                               "def keep_mask(uniform, gamma, block_size):\n"
                               "    return _km(uniform, gamma, block_size)[..., :-1]"],
                    {"ex04.seed_grid": 0, "ex04.keep_mask": 0}, "expected shape"),
    "mutates": (EX04, [], ["def apply_mask(x, keep):\n    x *= keep\n"
                           "    x *= x.dtype.type(keep.size / max(keep.sum(), 1))\n    return x"],
                {"ex04.apply_mask": 0}, "modified in place"),
    "exits": (EX05, ["exit()", "quit()", "import sys\nsys.exit(3)", "raise SystemExit(1)",
                     "!touch {mark}\n%pip install --no-such-option"],
              ["def exact_gamma(rate, block_size, spatial_shape):\n"
               "    import sys\n    sys.exit(0)"],
              {"ex05.exact_gamma": 0}, "called exit (SystemExit: 0)"),
    "kills_kernel": (EX05, ["import os\nos._exit(1)"],
                     ["def exact_gamma(rate, block_size, spatial_shape):\n"
                      "    import os\n    os._exit(2)"],
                     {"ex05.exact_gamma": 0}, "stopped the kernel"),
    "deletes_files": (EX05, ["import os, shutil\nfor name in os.listdir('.'):\n"
                             "    path = os.path.join('.', name)\n"
                             "    shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)\n"
                             "print(sorted(os.listdir('.')))"],
                      [], {}, None),
    "untouched": (EX05, [], [], {}, None),
}


def _make(base, inserted, appended, path, mark):
    inserted = [s.replace("{mark}", str(mark)) for s in inserted]
    nb = nbformat.read(str(base), as_version=4)
    code = [i for i, c in enumerate(nb.cells) if c.cell_type == "code"]
    nb.cells[code[0]].source = LIGHT_SETUP
    at = code[2]
    new = [nbformat.v4.new_code_cell(s) for s in inserted]
    nb.cells[at:at] = new
    nb.cells += [nbformat.v4.new_code_cell(s) for s in appended]
    nbformat.write(nb, str(path))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    sub = tmp_path_factory.mktemp("submissions")
    for name, (base, inserted, appended, _, _) in CASES.items():
        _make(base, inserted, appended, sub / f"{base.stem}__{name}.ipynb", sub / "shell_ran")
    (sub / "precious.txt").write_text("keep me")
    out = tmp_path_factory.mktemp("out")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", TF_ENABLE_ONEDNN_OPTS="0")
    proc = subprocess.run(
        [sys.executable, "-m", "structdrop_tutorial.grade", *sorted(map(str, sub.glob("*.ipynb"))),
         "--out", str(out / "grades.csv"), "--feedback-dir", str(out / "feedback"),
         "--jobs", "2", "--cell-timeout", str(CELL_TIMEOUT), "--check-timeout", str(CHECK_TIMEOUT),
         "--output-limit", "5000"],
        capture_output=True, text=True, timeout=900, env=env, cwd=str(out))
    rows = {Path(r["submission"]).stem.split("__")[1]: r
            for r in csv.DictReader(open(out / "grades.csv"))}
    return proc, rows, out, sub


def test_runner_finishes_and_grades_everything(run):
    proc, rows, out, sub = run
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert set(rows) == set(CASES)
    assert (sub / "precious.txt").read_text() == "keep me"
    assert not (sub / "shell_ran").exists(), "a shell escape ran in the grading kernel"
    assert len(list(sub.glob("*.ipynb"))) == len(CASES)


@pytest.mark.parametrize("name", sorted(CASES))
def test_hostile_submission_loses_only_its_own_points(run, name):
    proc, rows, out, _ = run
    base, _, _, zeros, needle = CASES[name]
    row = rows[name]
    from structdrop_tutorial.grade import exercise_questions

    ex = "ex04" if base == EX04 else "ex05"
    for q in exercise_questions(ex):
        want = zeros.get(q.id, q.points)
        assert int(row[q.id]) == want, f"{name}: {q.id} got {row[q.id]}, want {want}\n{row}"
    feedback = (out / "feedback" / f"{base.stem}__{name}.txt").read_text()
    if needle:
        assert needle in feedback, feedback
    assert len(feedback) < 50_000


def test_output_is_capped(run):
    proc, rows, out, _ = run
    assert "printed too much" in rows["prints"]["notes"]
    assert len(proc.stdout) + len(proc.stderr) < 100_000
