"""The reference libraries' measured drop fractions (committed data) and the script behind them."""
import importlib.util
import math
from pathlib import Path

import pytest

import structdrop_tutorial as sd
from structdrop_tutorial import anchors

ROOT = Path(__file__).resolve().parents[1]
HAS_TORCH = importlib.util.find_spec("torch") is not None


def _script():
    spec = importlib.util.spec_from_file_location(
        "anchor_drop_rates", ROOT / "benchmarks" / "anchor_drop_rates.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_drop_fractions_say_what_and_with_what():
    data = anchors.load_drop_fractions()
    assert data["batches"] >= 2 and len(data["batch_shape"]) == 2
    libraries = {r["library"] for r in data["results"]}
    assert libraries and libraries <= set(data["versions"]) and "torch" in data["versions"]
    for r in data["results"]:
        assert 0 <= r["dropped"] <= 1 and r["standard_error"] > 0
        assert 0 < r["rate"] <= 1 and r["block"] >= 1 and len(r["map"]) == 2


def test_torchvision_drops_what_the_paper_gamma_model_predicts():
    """torchvision's drop_block2d is the paper's recipe on valid seeds: its measured fraction
    lies within 5 standard errors of the package's exact expected fraction for that gamma (a
    wrong coverage count or gamma would be off by 20 or more at these sample sizes)."""
    rows = [r for r in anchors.load_drop_fractions()["results"] if r["library"] == "torchvision"]
    assert rows, "no torchvision rows committed"
    for r in rows:
        block, spatial = r["block"], tuple(r["map"])
        model = sd.expected_drop_fraction(sd.paper_gamma(r["rate"], block, spatial), block,
                                          spatial)
        assert abs(r["dropped"] - model) < 5 * r["standard_error"], (r, model)


def test_script_refuses_a_single_batch(tmp_path):
    with pytest.raises(SystemExit):
        _script().main(["--out", str(tmp_path / "x.json"), "--batches", "1"])
    assert not (tmp_path / "x.json").exists()


@pytest.mark.skipif(not HAS_TORCH, reason="torch not installed")
def test_measure_gives_the_mean_and_standard_error_of_a_layer():
    """measure() on the package's own layer with the paper's gamma: the model's fraction within
    5 standard errors, and a layer that drops nothing gives 0 with no spread."""
    import torch

    from structdrop_tutorial import torch as sdt
    script = _script()
    script.BATCH = 64

    def layer(x, p, b):
        return sdt.dropblock(x, p, b, gamma="paper", normalize="rate")
    mean, se = script.measure(layer, torch, 0.1, 7, 14, batches=6, seed=0)
    model = sd.expected_drop_fraction(sd.paper_gamma(0.1, 7, (14, 14)), 7, (14, 14))
    assert se > 0 and abs(mean - model) < 5 * se, (mean, se, model)
    assert script.measure(lambda x, p, b: x, torch, 0.1, 7, 14, batches=2, seed=0) == (0.0, 0.0)
    assert math.isfinite(mean)
