"""PyTorch layers and the linear rate schedule."""
import copy
import pickle

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

import structdrop_tutorial as sd  # noqa: E402
from structdrop_tutorial import torch as sdt  # noqa: E402


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def all_layers():
    return [sdt.SpatialDropout(0.3, generator=gen()), sdt.DropBlock2d(0.2, 3, generator=gen()),
            sdt.DropBlock1d(0.2, 3, generator=gen()), sdt.DropBlock3d(0.2, 2, generator=gen()),
            sdt.DropBlock(0.2, (2, 3), generator=gen()), sdt.DropPath(0.3, generator=gen()),
            sdt.Cutout(3, generator=gen())]


def input_for(layer):
    rank = {sdt.DropBlock1d: 3, sdt.DropBlock3d: 5}.get(type(layer), 4)
    return torch.randn((4, 5) + (8,) * (rank - 2))


@pytest.mark.parametrize("layer", all_layers(), ids=lambda m: type(m).__name__)
def test_eval_is_identity_and_train_is_not(layer):
    x = input_for(layer)
    before = x.clone()
    layer.eval()
    assert layer(x) is x
    layer.train()
    y = layer(x)
    assert y.shape == x.shape and not torch.equal(y, x)
    assert torch.equal(x, before)  # the caller's input is never modified (inplace=False)


@pytest.mark.parametrize("layer", all_layers(), ids=lambda m: type(m).__name__)
def test_pickle_and_deepcopy_keep_settings_and_generator_state(layer):
    """A clone has the layer's settings and its generator's current state, so the next mask of
    the clone equals the next mask of the original (every layer here owns a generator)."""
    x = input_for(layer)
    layer(x)  # advance the generator past its seed: a fresh or re-seeded clone would differ
    state = layer.generator.get_state()
    for clone in (pickle.loads(pickle.dumps(layer)), copy.deepcopy(layer)):
        assert repr(clone) == repr(layer)
        assert clone.generator is not layer.generator
        assert torch.equal(clone.generator.get_state(), state)
        expected = layer(x)
        layer.generator.set_state(state)  # rewind the original for the next clone
        assert torch.equal(clone(x), expected)


def test_extra_repr():
    assert repr(sdt.DropBlock2d(0.1, 7)) == "DropBlock2d(rate=0.1, block_size=7)"
    r = repr(sdt.DropBlock2d(0.1, (3, 5), "channels_last", seeds="padded", share="channels",
                             normalize="rate", gamma="paper"))
    for part in ("block_size=(3, 5)", "data_format='channels_last'", "seeds='padded'",
                 "share=('channels',)", "normalize='rate'", "gamma='paper'"):
        assert part in r
    assert "rate=0.25" in repr(sdt.SpatialDropout(0.25))
    assert "mode='batch'" in repr(sdt.DropPath(0.2, mode="batch"))
    assert "size=4" in repr(sdt.Cutout(4))
    assert repr(sdt.DropConnectLinear(3, 2, rate=0.4)).endswith("bias=True, rate=0.4)")


def test_layers_match_functional_with_same_generator():
    x = torch.randn(4, 5, 9, 9)
    pairs = [
        (sdt.DropBlock2d(0.2, 3, generator=gen(1)), lambda t: sdt.dropblock(t, 0.2, 3, seed=gen(1))),
        (sdt.DropBlock2d(0.2, (2, 4), seeds="padded", share="channels", normalize="rate", generator=gen(1)),
         lambda t: sdt.dropblock(t, 0.2, (2, 4), seeds="padded", share="channels", normalize="rate",
                                 seed=gen(1))),
        (sdt.SpatialDropout(0.3, generator=gen(2)), lambda t: sdt.spatial_dropout(t, 0.3, seed=gen(2))),
        (sdt.DropPath(0.3, generator=gen(3)), lambda t: sdt.drop_path(t, 0.3, seed=gen(3))),
        (sdt.Cutout(4, fill=1.0, generator=gen(4)), lambda t: sdt.cutout(t, 4, fill=1.0, seed=gen(4))),
    ]
    for layer, fn in pairs:
        assert torch.equal(layer(x), fn(x))


@pytest.mark.parametrize("fmt", ["channels_first", "channels_last"])
@pytest.mark.parametrize("cls, n", [(sdt.DropBlock1d, 1), (sdt.DropBlock2d, 2), (sdt.DropBlock3d, 3)])
def test_dropblock_ranks_and_formats(cls, n, fmt):
    shape = (3, 4) + (7,) * n if fmt == "channels_first" else (3,) + (7,) * n + (4,)
    x = torch.ones(shape)
    layer = cls(0.3, 3, fmt, generator=gen(5), normalize="rate")
    y = layer(x)
    assert y.shape == x.shape
    kept = y != 0
    torch.testing.assert_close(y[kept], torch.full_like(y[kept], 1 / 0.7))
    with pytest.raises(ValueError, match="rank"):
        layer(torch.ones((3, 4) + (7,) * (n % 3 + 1)))
    sp = sdt.SpatialDropout(0.5, fmt, generator=gen(6))
    y = sp(x)
    ch = 1 if fmt == "channels_first" else x.ndim - 1
    other = tuple(a for a in range(1, x.ndim) if a != ch)
    zero = (y == 0)
    assert torch.equal(zero.all(dim=other), zero.any(dim=other))


def test_constructor_validation():
    with pytest.raises(ValueError, match="rate"):
        sdt.DropBlock2d(1.5, 3)
    with pytest.raises(ValueError, match="block_size"):
        sdt.DropBlock2d(0.1, (3, 3, 3))
    with pytest.raises(ValueError, match="data_format"):
        sdt.SpatialDropout(0.1, "NCHW")
    with pytest.raises(ValueError, match="seeds"):
        sdt.DropBlock2d(0.1, 3, seeds="x")
    with pytest.raises(ValueError, match="gamma"):
        sdt.DropBlock2d(0.1, 3, gamma=2.0)
    with pytest.raises(ValueError, match="mode"):
        sdt.DropPath(0.1, mode="x")
    with pytest.raises(TypeError, match="generator"):
        sdt.DropPath(0.1, generator=3)
    layer = sdt.DropBlock2d(0.1, 3)
    with pytest.raises(ValueError, match="rate"):
        layer.rate = -1
    layer.p = 0.2
    assert layer.rate == 0.2


def test_all_dropped_normalization_gives_zeros():
    layer = sdt.DropBlock2d(0.5, 3, gamma=1.0)
    x = torch.randn(2, 3, 6, 6, requires_grad=True)
    y = layer(x)
    y.sum().backward()
    assert torch.equal(y, torch.zeros_like(y)) and torch.isfinite(x.grad).all()


def test_dropconnect_linear():
    torch.manual_seed(0)
    layer = sdt.DropConnectLinear(6, 3, rate=0.4, generator=gen(7))
    assert isinstance(layer, nn.Linear)
    assert set(layer.state_dict()) == {"weight", "bias"}
    x = torch.randn(5, 6)
    layer.eval()
    torch.testing.assert_close(layer(x), nn.functional.linear(x, layer.weight, layer.bias))
    layer.train()
    y = layer(x)
    ref = sdt.dropconnect_dense(x, layer.weight.t(), layer.bias, 0.4, seed=gen(7))
    torch.testing.assert_close(y, ref)
    y.sum().backward()
    assert layer.weight.grad is not None and layer.bias.grad is not None
    # one weight mask per call: the gradient of each weight is 0 or scale * sum of its inputs
    g = layer.weight.grad
    full = torch.ones(3, 1) @ x.sum(0, keepdim=True) / 0.6
    assert torch.all(torch.isclose(g, full) | (g == 0))
    clone = pickle.loads(pickle.dumps(layer))
    torch.testing.assert_close(clone.weight, layer.weight)
    x3 = torch.randn(2, 4, 6)
    assert layer(x3).shape == (2, 4, 3)
    layer.rate = 0.0
    torch.testing.assert_close(layer(x), nn.functional.linear(x, layer.weight, layer.bias))


# --------------------------------------------------------------------------- schedule
def test_linear_schedule_steps_per_training_step():
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), sdt.DropBlock2d(0.0, 3), nn.ReLU(),
                        sdt.SpatialDropout(0.0), nn.Flatten(), sdt.DropConnectLinear(4 * 64, 2))
    schedule = sdt.LinearSchedule(net, target_rate=0.2, total_steps=4)
    layers = schedule.modules
    assert [type(m).__name__ for m in layers] == ["DropBlock2d", "SpatialDropout", "DropConnectLinear"]
    assert all(m.rate == 0.0 for m in layers)
    x = torch.randn(2, 3, 8, 8)
    net.train()
    for _ in range(3):
        net(x)  # forward passes never move the schedule
    net.eval()
    net(x)
    assert all(m.rate == 0.0 for m in layers)
    rates = [schedule.step() for _ in range(6)]
    assert rates == pytest.approx([0.05, 0.1, 0.15, 0.2, 0.2, 0.2])
    assert all(m.rate == pytest.approx(0.2) for m in layers)
    assert schedule.rate == pytest.approx(sd.linear_rate(schedule.last_step, 4, 0.2))


def test_linear_schedule_state_dict_resumes():
    layers = [sdt.DropBlock2d(0.0, 3), sdt.DropPath(0.0)]
    schedule = sdt.LinearSchedule(layers, 0.3, 10)
    for _ in range(4):
        schedule.step()
    state = schedule.state_dict()
    fresh = [sdt.DropBlock2d(0.0, 3), sdt.DropPath(0.0)]
    resumed = sdt.LinearSchedule(fresh, 0.3, 10)
    resumed.load_state_dict(state)
    assert resumed.last_step == 4
    assert [m.rate for m in fresh] == pytest.approx([0.12, 0.12])
    assert resumed.step() == pytest.approx(0.15)
    assert "step=5" in repr(resumed)
    single = sdt.LinearSchedule(sdt.DropBlock2d(0.0, 3), 0.1, 0)
    assert single.modules[0].rate == pytest.approx(0.1)


def test_linear_schedule_validation():
    with pytest.raises(ValueError, match="target_rate"):
        sdt.LinearSchedule(sdt.DropPath(), 1.5, 10)
    with pytest.raises(ValueError, match="total_steps"):
        sdt.LinearSchedule(sdt.DropPath(), 0.1, -1)
    with pytest.raises(ValueError, match="rate"):
        sdt.LinearSchedule(nn.Linear(2, 2), 0.1, 10)
    with pytest.raises(TypeError, match="rate"):
        sdt.LinearSchedule([nn.Linear(2, 2)], 0.1, 10)


def test_module_training_loop_smoke():
    """A few optimizer steps through a scheduled DropBlock2d: the schedule ramps the rate
    step by step, the layer drops in training once its rate is above 0, gradients reach the
    convolution through the mask, and the loss stays finite."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), sdt.DropBlock2d(0.0, 3, generator=gen(1)),
                        nn.ReLU(), nn.Flatten(), nn.Linear(4 * 36, 2))
    schedule = sdt.LinearSchedule(net, 0.3, 3)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    x, t = torch.randn(16, 1, 6, 6), torch.randint(0, 2, (16,))
    conv_before = net[0].weight.detach().clone()
    rates, dropped = [], []
    for _ in range(4):
        rates.append(net[1].rate)
        opt.zero_grad()
        features = net[1](net[0](x))
        dropped.append(float((features == 0).float().mean()))
        loss = nn.functional.cross_entropy(net[2:](features), t)
        loss.backward()
        opt.step()
        schedule.step()
    assert np.isfinite(loss.item())
    assert rates == pytest.approx([0.0, 0.1, 0.2, 0.3]) and net[1].rate == pytest.approx(0.3)
    assert dropped[0] == 0 and all(d > 0 for d in dropped[1:])
    assert not torch.equal(net[0].weight, conv_before)


def _with_rate(layer, rate):
    layer.rate = rate
    return layer


@pytest.mark.parametrize("make", [
    lambda: sdt.SpatialDropout(0.3, generator=gen()), lambda: sdt.DropBlock1d(0.2, 3, generator=gen()),
    lambda: sdt.DropBlock2d(0.2, 3, generator=gen()), lambda: sdt.DropBlock3d(0.2, 2, generator=gen()),
    lambda: sdt.DropPath(0.3, generator=gen())], ids=["SpatialDropout", "DropBlock1d", "DropBlock2d",
                                                       "DropBlock3d", "DropPath"])
def test_modules_at_rate_0_and_1_on_empty_and_16_bit_inputs(make):
    """Rate 0 is the identity and rate 1 gives zeros (never NaN) in training; an empty batch
    keeps its shape; float16 and bfloat16 inputs keep their dtype and are dropped."""
    layer = make().train()
    x = input_for(layer)
    assert torch.equal(_with_rate(make().train(), 0.0)(x), x)
    y = _with_rate(make().train(), 1.0)(x)
    assert torch.equal(y, torch.zeros_like(x))
    empty = x[:0]
    assert layer(empty).shape == empty.shape
    for dtype in (torch.float16, torch.bfloat16):
        y = make().train()(x.to(dtype))
        assert y.dtype == dtype and y.shape == x.shape
        assert 0 < (y == 0).float().mean() < 1


def test_cutout_and_dropconnect_module_edges():
    """Cutout keeps dtype and empty batches; a patch larger than the map hides all of it.
    DropConnectLinear: rate 1 gives the bias, an empty batch an empty output, float16 works."""
    x = torch.randn(4, 3, 8, 8)
    cut = sdt.Cutout(3, generator=gen()).train()
    assert cut(x[:0]).shape == (0, 3, 8, 8)
    assert cut(x.half()).dtype == torch.float16
    assert torch.equal(sdt.Cutout(20, generator=gen()).train()(x), torch.zeros_like(x))
    layer = sdt.DropConnectLinear(5, 4, rate=1.0).train()
    xs = torch.randn(3, 5)
    assert torch.equal(layer(xs), layer.bias.detach().expand(3, 4))
    assert layer(xs[:0]).shape == (0, 4)
    half = sdt.DropConnectLinear(5, 4, rate=0.5, generator=gen(), dtype=torch.float16).train()
    assert half(xs.half()).dtype == torch.float16
    # in evaluation (or at rate 0) it is nn.Linear to the bit, in 16-bit too (x @ W.T + b
    # rounded once, where the training path's matmul and bias add round twice)
    x16 = torch.randn(64, 5)
    for dtype in (torch.float16, torch.bfloat16, torch.float32):
        for layer in (sdt.DropConnectLinear(5, 4, rate=0.5, dtype=dtype).eval(),
                      sdt.DropConnectLinear(5, 4, rate=0.0, dtype=dtype).train()):
            with torch.no_grad():
                assert torch.equal(layer(x16.to(dtype)),
                                   nn.functional.linear(x16.to(dtype), layer.weight, layer.bias))
    # a NumPy array is taken in both modes, as the functions take it
    layer = sdt.DropConnectLinear(5, 4, rate=0.5, generator=gen())
    for mode in (layer.eval, layer.train):
        mode()
        assert layer(np.ones((2, 5), "float32")).shape == (2, 4)


@pytest.mark.parametrize("n_spatial", [True, 2.0, 4])
def test_dropblock_n_spatial_must_be_1_2_or_3(n_spatial):
    with pytest.raises((TypeError, ValueError), match="n_spatial"):
        sdt.DropBlock(0.1, 3, n_spatial=n_spatial)


@pytest.mark.parametrize("total_steps", [True, 2.5, -1])
def test_linear_schedule_total_steps_is_an_int(total_steps):
    with pytest.raises((TypeError, ValueError), match="total_steps"):
        sdt.LinearSchedule(sdt.DropBlock2d(0.1, 3), 0.1, total_steps)


def test_droppath_scale_false_is_the_papers_convention():
    """Unscaled in training, the branch times 1 - rate in eval mode: the same expectation."""
    layer = sdt.DropPath(0.2, scale=False, generator=torch.Generator().manual_seed(0))
    x = torch.full((4000, 3), 2.0)
    y = layer.train()(x)
    assert set(torch.unique(y).tolist()) <= {0.0, 2.0}
    kept = (y[:, 0] != 0).double().mean().item()
    assert abs(kept - 0.8) < 5 * (0.8 * 0.2 / 4000) ** 0.5  # binomial, 5 sigma
    torch.testing.assert_close(layer.eval()(x), x * 0.8, rtol=0, atol=0)
    torch.testing.assert_close(sdt.DropPath(0.2).eval()(x), x, rtol=0, atol=0)
