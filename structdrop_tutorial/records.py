"""Results of the book's experiment (chapter 9) as recorded on the machines that built the book.

One machine reruns the experiment bit for bit, but two processors that run the same code on the
same seeds can end with different accuracies (chapter 9 shows how far apart). The records let
the chapter check a run against every machine it was recorded on, and show the verdicts each
machine's runs give.

The file ``data/records/experiment_runs.json`` holds, for each machine, its CPU, the date, the
software, and for each model and variant the number of correctly classified training and test
digits (out of 1,000 each) after training from each seed::

    {"seeds": [0, 1, 2, 3, 4], "digits": {"train": 1000, "test": 1000},
     "machines": {"AMD EPYC": {"cpu": ..., "recorded": ..., "software": ..., "source": ...,
                               "runs": {"small_cnn": {"none": [[train, test], ...], ...},
                                        "residual_cnn": {"droppath 0.1": [...], ...}}}}}
"""
from __future__ import annotations

import json
import re
from importlib import resources
from typing import Dict, List, Sequence

__all__ = ["load_experiment_records", "count_differences", "runs_from_printout"]

Runs = Dict[str, Dict[str, List[Sequence[int]]]]


def load_experiment_records() -> dict:
    """The recorded experiment runs: ``{"seeds", "digits", "machines": {name: record}}``."""
    text = resources.files("structdrop_tutorial").joinpath(
        "data/records/experiment_runs.json").read_text(encoding="utf-8")
    return json.loads(text)


def count_differences(runs: Runs, recorded: Runs) -> int:
    """How many (model, variant, seed) results of ``runs`` differ from ``recorded``.

    Args:
        runs: ``{model: {variant: [[train_correct, test_correct] per seed]}}``, as in a record's
            ``"runs"``; tuples are accepted for the pairs.
        recorded: a machine's ``"runs"`` from :func:`load_experiment_records`.

    Returns:
        The number of seeds, over all models and variants, whose pair of counts differs.

    Raises:
        ValueError: if ``runs`` does not hold the same models, variants and number of seeds as
            ``recorded`` (a run of another experiment cannot be compared).
    """
    if set(runs) != set(recorded):
        raise ValueError(f"runs must hold the models {sorted(recorded)}, got {sorted(runs)}")
    differ = 0
    for model, variants in recorded.items():
        if set(runs[model]) != set(variants):
            raise ValueError(f"runs[{model!r}] must hold the variants {sorted(variants)}, "
                             f"got {sorted(runs[model])}")
        for variant, pairs in variants.items():
            mine = runs[model][variant]
            if len(mine) != len(pairs):
                raise ValueError(f"runs[{model!r}][{variant!r}] must hold {len(pairs)} seeds, "
                                 f"got {len(mine)}")
            differ += sum(list(a) != list(b) for a, b in zip(mine, pairs))
    return differ


_SMALL = re.compile(r"seed (\d+)  (\w+) +final rate [\d.]+  train accuracy +([\d.]+)%  "
                    r"test accuracy +([\d.]+)%")
_RESIDUAL = re.compile(r"seed (\d+)  (\w+) +rate ([\d.]+)  train accuracy +([\d.]+)%  "
                       r"test accuracy +([\d.]+)%")


def runs_from_printout(text: str, seeds: Sequence[int] = (0, 1, 2, 3, 4),
                       digits: int = 1000) -> Runs:
    """Read the runs back from what chapter 9's two training cells print.

    Lines such as ``seed 0  dropout    final rate 0.10  train accuracy  99.9%  test accuracy
    94.8%`` (the small network) and ``seed 0  droppath rate 0.1  train accuracy ...`` (the
    residual one) become ``{"small_cnn": {"dropout": [[999, 948], ...]}, "residual_cnn":
    {"droppath 0.1": [...]}}``: percentages of ``digits`` digits printed to a tenth of a point
    are exact counts when ``digits`` is 1,000.

    Raises:
        ValueError: if either network has no line at all, or a variant does not have exactly
            one line per seed, in the order of ``seeds``.
    """
    found: Dict[str, Dict[str, list]] = {"small_cnn": {}, "residual_cnn": {}}
    for line in text.splitlines():
        small, residual = _SMALL.fullmatch(line.strip()), _RESIDUAL.fullmatch(line.strip())
        if small:
            seed, variant, train, test = small.groups()
            model = "small_cnn"
        elif residual:
            seed, kind, rate, train, test = residual.groups()
            model, variant = "residual_cnn", f"{kind} {rate}"
        else:
            continue
        pair = [round(float(train) * digits / 100), round(float(test) * digits / 100)]
        found[model].setdefault(variant, []).append((int(seed), pair))
    runs: Runs = {}
    for model, variants in found.items():
        if not variants:
            raise ValueError(f"no line of the {model} runs found in the printout")
        runs[model] = {}
        for variant, seen in variants.items():
            if [s for s, _ in seen] != list(seeds):
                raise ValueError(f"{model} {variant}: expected one line for each seed "
                                 f"{list(seeds)}, got seeds {[s for s, _ in seen]}")
            runs[model][variant] = [pair for _, pair in seen]
    return runs
