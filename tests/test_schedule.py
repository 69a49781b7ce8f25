import pytest

import structdrop_tutorial as sd


def test_linear_rate_ramps_then_holds():
    assert sd.linear_rate(0, 100, 0.1) == 0.0
    assert sd.linear_rate(50, 100, 0.1) == pytest.approx(0.05)
    assert sd.linear_rate(100, 100, 0.1) == pytest.approx(0.1)
    assert sd.linear_rate(1000, 100, 0.1) == pytest.approx(0.1)
    assert sd.linear_rate(5, 0, 0.2) == 0.2


@pytest.mark.parametrize("args, match", [((0, 10, 1.5), "final_rate"), ((0, -1, 0.1), "total_steps"),
                                         ((-1, 10, 0.1), "step")])
def test_linear_rate_rejects_bad_arguments(args, match):
    with pytest.raises(ValueError, match=match):
        sd.linear_rate(*args)


@pytest.mark.parametrize("args, match", [((1, 0.5, 0.1), "total_steps"), ((2.7, 10, 0.1), "step"),
                                         (("a", 10, 0.1), "step"), ((True, 10, 0.1), "step")])
def test_linear_rate_steps_are_integers(args, match):
    """Steps are counted, not measured: a float step was truncated (2.7 gave step 2) and a
    total of 0.5 divided by zero."""
    with pytest.raises(TypeError, match=match):
        sd.linear_rate(*args)
