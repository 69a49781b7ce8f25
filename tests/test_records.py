"""The recorded runs of chapter 9 (structdrop_tutorial/records.py): the shipped file, the
comparison, reading a printout back, and agreement with the executed chapter."""
import copy
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from structdrop_tutorial import records

ROOT = Path(__file__).resolve().parents[1]
MODELS = {"small_cnn": {"none", "dropout", "spatial", "dropblock"},
          "residual_cnn": {"none 0.0", "droppath 0.1", "droppath 0.2"}}


def _printed(runs, seeds):
    """What chapter 9's training cells print for ``runs`` (counts out of 1,000)."""
    lines = []
    for seed_index, seed in enumerate(seeds):
        for variant, pairs in runs["small_cnn"].items():
            train, test = pairs[seed_index]
            lines.append(f"seed {seed}  {variant:9s}  final rate 0.10  train accuracy "
                         f"{train / 10:5.1f}%  test accuracy {test / 10:5.1f}%")
    for seed_index, seed in enumerate(seeds):
        for variant, pairs in runs["residual_cnn"].items():
            kind, rate = variant.split()
            train, test = pairs[seed_index]
            lines.append(f"seed {seed}  {kind:8s} rate {rate}  train accuracy {train / 10:5.1f}%  "
                         f"test accuracy {test / 10:5.1f}%")
    return "\n".join(lines) + "\n"


def test_shipped_records_hold_every_run_of_the_chapter():
    data = records.load_experiment_records()
    assert data["seeds"] == [0, 1, 2, 3, 4] and data["digits"] == {"train": 1000, "test": 1000}
    assert len(data["machines"]) >= 2
    for name, rec in data["machines"].items():
        assert rec["cpu"] and rec["recorded"] and rec["software"] and rec["source"], name
        assert {m: set(v) for m, v in rec["runs"].items()} == MODELS, name
        for variants in rec["runs"].values():
            for pairs in variants.values():
                assert len(pairs) == 5
                assert all(isinstance(c, int) and 0 <= c <= 1000 for pair in pairs for c in pair)


def test_count_differences_counts_changed_seeds_and_refuses_other_experiments():
    recorded = records.load_experiment_records()["machines"]
    runs = next(iter(recorded.values()))["runs"]
    assert records.count_differences(copy.deepcopy(runs), runs) == 0
    changed = copy.deepcopy(runs)
    changed["small_cnn"]["dropblock"][3][1] += 1           # one test count
    changed["residual_cnn"]["droppath 0.2"][0] = tuple(changed["residual_cnn"]["droppath 0.2"][0])
    assert records.count_differences(changed, runs) == 1
    missing = copy.deepcopy(runs)
    del missing["small_cnn"]["spatial"]
    with pytest.raises(ValueError, match="variants"):
        records.count_differences(missing, runs)
    with pytest.raises(ValueError, match="models"):
        records.count_differences({"small_cnn": runs["small_cnn"]}, runs)
    short = copy.deepcopy(runs)
    short["residual_cnn"]["none 0.0"].pop()
    with pytest.raises(ValueError, match="seeds"):
        records.count_differences(short, runs)


def test_runs_from_printout_reads_counts_back_exactly():
    runs = next(iter(records.load_experiment_records()["machines"].values()))["runs"]
    assert records.runs_from_printout(_printed(runs, range(5))) == runs
    printed = _printed(runs, range(5)).splitlines(keepends=True)
    with pytest.raises(ValueError, match="seed"):          # seed 4 of one variant missing
        records.runs_from_printout("".join(line for line in printed
                                           if not line.startswith("seed 4  dropout")))
    with pytest.raises(ValueError, match="residual_cnn"):  # the residual network missing
        records.runs_from_printout("".join(line for line in printed if "final rate" in line))
    with pytest.raises(ValueError, match="small_cnn"):
        records.runs_from_printout("")


def test_the_executed_chapter_is_one_of_the_recorded_machines():
    """The committed outputs of chapter 9 are the runs of a recorded machine, digit for digit;
    the chapter's strict cells compare the records, so they must not drift from the book."""
    notebook = ROOT / "book" / "09_experiment.ipynb"
    cells = json.loads(notebook.read_text(encoding="utf-8"))["cells"]
    text = "".join("".join(o.get("text", "")) for c in cells if c["cell_type"] == "code"
                   for o in c.get("outputs", []))
    runs = records.runs_from_printout(text)
    machines = records.load_experiment_records()["machines"]
    assert min(records.count_differences(runs, rec["runs"]) for rec in machines.values()) == 0


def test_record_experiment_script_writes_a_machine(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("record_experiment",
                                                  ROOT / "scripts" / "record_experiment.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    runs = next(iter(records.load_experiment_records()["machines"].values()))["runs"]
    printed = _printed(runs, range(5)).splitlines(keepends=True)
    small = [line for line in printed if "final rate" in line]
    notebook = {"cells": [
        {"cell_type": "code", "source": ["results = {}\n"], "outputs": [{"text": small}]},
        {"cell_type": "code", "source": ["residual = {}\n"],
         "outputs": [{"text": [line for line in printed if line not in small]}]}]}
    path = tmp_path / "nb.ipynb"
    path.write_text(json.dumps(notebook))
    target = tmp_path / "runs.json"
    monkeypatch.setattr(script, "RECORDS", target)
    monkeypatch.setattr(script, "ROOT", tmp_path)
    target.write_text(json.dumps({"seeds": [0, 1, 2, 3, 4], "digits": {}, "machines": {
        "other": {"runs": runs}, "test box": {"runs": {}, "arithmetic": {"op": "digest"}}}}))
    script.main([str(path), "--machine", "test box", "--cpu", "x", "--source", "test",
                 "--software", "torch 0"])
    written = json.loads(target.read_text())
    assert written["machines"]["test box"]["runs"] == runs
    assert written["machines"]["test box"]["cpu"] == "x"
    assert written["machines"]["test box"]["arithmetic"] == {"op": "digest"}   # kept
    assert written["machines"]["other"] == {"runs": runs}                      # untouched
    notebook["cells"][1]["outputs"] = []                   # the residual runs missing
    path.write_text(json.dumps(notebook))
    with pytest.raises(ValueError, match="residual_cnn"):
        script.main([str(path), "--machine", "test box", "--source", "test"])
    with pytest.raises(SystemExit):                        # --source is required
        script.main([str(path), "--machine", "test box"])


def test_arith_fingerprint_script_is_deterministic_and_names_the_recorded_operations():
    """Two runs of scripts/arith_fingerprint.py print the same digests (in a subprocess: it sets
    the chapter's CPU pins before importing torch), for the operations a machine has recorded."""
    run = [sys.executable, str(ROOT / "scripts" / "arith_fingerprint.py")]
    first, second = (subprocess.run(run, capture_output=True, text=True, check=True).stdout
                     for _ in range(2))
    assert first == second
    printed = {line[18:].split("   DIFFERS")[0] for line in first.splitlines()[1:]}
    recorded = [rec["arithmetic"] for rec in records.load_experiment_records()["machines"].values()
                if "arithmetic" in rec]
    assert recorded and all(set(fp) == printed for fp in recorded)
    assert all(len(line.split()[0]) == 16 for line in first.splitlines()[1:])
