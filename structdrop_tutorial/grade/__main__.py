"""Command line: grade submitted notebooks, each in its own kernel.

    python -m structdrop_tutorial.grade submissions/*.ipynb --out grades.csv --feedback-dir feedback

Exit status 0 when every notebook could be graded (whatever its points), 1 when the grader itself
could not grade one (unreadable notebook, unknown exercise, kernel that would not start), 2 for
bad arguments.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import List, Optional

from . import runner


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m structdrop_tutorial.grade",
        description="Grade structdrop exercise notebooks: a CSV of points and a feedback file "
                    "per submission. Every notebook runs in its own Jupyter kernel.")
    parser.add_argument("notebooks", nargs="+", help="submitted .ipynb files")
    parser.add_argument("--out", default="grades.csv", help="CSV to write (default grades.csv)")
    parser.add_argument("--feedback-dir", default=None,
                        help="write <notebook>.txt feedback for each submission here")
    parser.add_argument("--jobs", type=int, default=1, help="notebooks graded at once")
    parser.add_argument("--cell-timeout", type=float, default=runner.CELL_TIMEOUT_S,
                        help="seconds one submitted cell may run (default %(default)s)")
    parser.add_argument("--total-timeout", type=float, default=runner.TOTAL_TIMEOUT_S,
                        help="seconds all of a submission's cells may run (default %(default)s)")
    parser.add_argument("--check-timeout", type=float, default=runner.CHECK_TIMEOUT_S,
                        help="seconds checking one answer may take (default %(default)s)")
    parser.add_argument("--output-limit", type=int, default=runner.OUTPUT_LIMIT,
                        help="characters a cell may print (default %(default)s)")
    parser.add_argument("--kernel", default="python3", help="Jupyter kernel name")
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error("--jobs must be at least 1")
    for name in ("cell_timeout", "total_timeout", "check_timeout", "output_limit"):
        if not getattr(args, name) > 0:
            parser.error(f"--{name.replace('_', '-')} must be positive, "
                         f"got {getattr(args, name)}")
    # the outputs are checked before any grading, so that a typo loses no work
    out = Path(args.out)
    if out.is_dir() or not out.resolve().parent.is_dir():
        parser.error(f"--out must be a CSV file in an existing folder, got {args.out}")
    if args.feedback_dir is not None and Path(args.feedback_dir).exists() \
            and not Path(args.feedback_dir).is_dir():
        parser.error(f"--feedback-dir must be a folder, got the file {args.feedback_dir}")

    results = runner.grade_submissions(
        args.notebooks, args.out, args.feedback_dir, jobs=args.jobs,
        log=None if args.quiet else sys.stderr, cell_timeout=args.cell_timeout,
        total_timeout=args.total_timeout, check_timeout=args.check_timeout,
        output_limit=args.output_limit, kernel_name=args.kernel)
    if not args.quiet:
        total = sum(r.points for r in results)
        print(f"graded {len(results)} notebook(s), {total} points in all; wrote {args.out}"
              + (f" and feedback in {args.feedback_dir}" if args.feedback_dir else ""),
              file=sys.stderr)
    return 1 if any(r.error for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
