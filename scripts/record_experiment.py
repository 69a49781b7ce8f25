"""Add (or replace) one machine's record of chapter 9's runs in the package's records.

    python scripts/record_experiment.py book/09_experiment.ipynb --machine "AMD EPYC"

Reads what the executed notebook's two training cells printed (see
``structdrop_tutorial.records.runs_from_printout``) and writes it under ``--machine`` in
``structdrop_tutorial/data/records/experiment_runs.json`` with the CPU, the date, the software
and where the runs came from. Run it on the machine that executed the notebook, or give
``--cpu``, ``--recorded`` and ``--software`` of that machine. A machine recorded again keeps
its operation digests (``scripts/arith_fingerprint.py --record``); the runs must hold the same
models, variants and seeds as the other machines' records.
"""
from __future__ import annotations

import argparse
import datetime
import json
import platform
import re
import sys
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from structdrop_tutorial.records import count_differences, runs_from_printout  # noqa: E402

RECORDS = ROOT / "structdrop_tutorial" / "data" / "records" / "experiment_runs.json"
TRAINING_CELLS = ("results = {}", "residual = {}")     # the cells whose printout holds the runs


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def compact(text: str) -> str:
    """One line for each list of numbers and each variant's list of pairs."""
    text = re.sub(r"\[\s+([\d\s,]+?)\s+\]",
                  lambda m: "[" + ", ".join(re.findall(r"\d+", m.group(1))) + "]", text)
    return re.sub(r"\[\s+(\[[\d, ]+\](?:,\s+\[[\d, ]+\])*)\s+\]",
                  lambda m: "[" + re.sub(r",\s+", ", ", m.group(1)) + "]", text)


def printout(notebook: Path) -> str:
    cells = json.loads(notebook.read_text(encoding="utf-8"))["cells"]
    chosen = [c for c in cells if c["cell_type"] == "code"
              and any(marker in "".join(c["source"]) for marker in TRAINING_CELLS)]
    if len(chosen) != len(TRAINING_CELLS):
        raise SystemExit(f"{notebook}: expected {len(TRAINING_CELLS)} training cells, "
                         f"found {len(chosen)}")
    return "".join("".join(o.get("text", "")) for c in chosen for o in c.get("outputs", []))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebook", type=Path, help="chapter 9, executed")
    parser.add_argument("--machine", required=True, help='short name, e.g. "AMD EPYC"')
    parser.add_argument("--cpu", default=cpu_name())
    parser.add_argument("--recorded", default=datetime.date.today().isoformat())
    parser.add_argument("--software", help="default: this machine's torch and Python versions")
    parser.add_argument("--source", required=True,
                        help="which commit's notebook was executed, and how")
    args = parser.parse_args(argv)
    software = args.software or (f"torch {metadata.version('torch')}, "
                                 f"Python {platform.python_version()}")

    runs = runs_from_printout(printout(args.notebook))
    data = (json.loads(RECORDS.read_text(encoding="utf-8")) if RECORDS.exists() else
            {"seeds": [0, 1, 2, 3, 4], "digits": {"train": 1000, "test": 1000}, "machines": {}})
    for name, other in data["machines"].items():     # the same models, variants and seeds
        if name != args.machine:
            count_differences(runs, other["runs"])
    previous = data["machines"].get(args.machine, {})
    data["machines"][args.machine] = {"cpu": args.cpu, "recorded": args.recorded,
                                      "software": software, "source": args.source, "runs": runs}
    if "arithmetic" in previous:                     # the machine's digests stay its own
        data["machines"][args.machine]["arithmetic"] = previous["arithmetic"]
    RECORDS.parent.mkdir(parents=True, exist_ok=True)
    RECORDS.write_text(compact(json.dumps(data, indent=1)) + "\n", encoding="utf-8")
    print(f"{args.machine}: {sum(len(v) for m in runs.values() for v in m.values())} runs "
          f"written to {RECORDS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
