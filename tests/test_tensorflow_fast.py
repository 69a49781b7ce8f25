"""DropBlock's sparse TF path: the same mask as the reference from the same seeds, and seeds that
are an i.i.d. Bernoulli(gamma) process; plus gamma computed inside graphs."""
import math

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
from hypothesis import given, settings, strategies as st  # noqa: E402

import structdrop_tutorial as sd  # noqa: E402
from structdrop_tutorial import numpy as sdn  # noqa: E402
from structdrop_tutorial.tensorflow import _fast, _graph_gamma  # noqa: E402
from structdrop_tutorial.tensorflow import functional as F  # noqa: E402
from helpers import five_sigma_fraction_bound  # noqa: E402


def _spatial_axes(rank, fmt):
    return tuple(range(2, rank)) if fmt == "channels_first" else tuple(range(1, rank - 1))


@settings(max_examples=25, deadline=None)
@given(data=st.data(), n_spatial=st.integers(1, 3), fmt=st.sampled_from(["channels_last", "channels_first"]),
       seeds=st.sampled_from(["valid", "padded"]), share=st.sampled_from([(), ("channels",), ("batch",)]))
def test_mask_from_positions_equals_reference(data, n_spatial, fmt, seeds, share):
    """Same seed positions -> exactly dropblock_keep_mask's mask (NumPy's and TF's reference)."""
    spatial = tuple(data.draw(st.integers(1, 9)) for _ in range(n_spatial))
    block = tuple(data.draw(st.integers(1, 10)) for _ in range(n_spatial))
    clipped = sd.clip_block(block, spatial)
    shape = (2, 3) + spatial if fmt == "channels_first" else (2,) + spatial + (3,)
    grid = sd.seed_grid_shape(shape, clipped, fmt, seeds, share)
    mask_shape = list(grid)
    axes = _spatial_axes(len(shape), fmt)
    for a, n in zip(axes, spatial):
        mask_shape[a] = n
    size = math.prod(grid)
    rng = np.random.default_rng(data.draw(st.integers(0, 2**31)))
    seeds_at = rng.random(size) < data.draw(st.sampled_from([0.0, 0.05, 0.3, 1.0]))
    positions = np.flatnonzero(seeds_at).astype(np.int64)
    padded_positions = np.concatenate([positions, [size, size + 5]])  # non-seeds are ignored
    u = np.where(seeds_at, 0.0, 1.0).reshape(grid)
    ref = sdn.dropblock_keep_mask(u, 0.5, clipped, fmt, seeds)
    got = _fast.keep_mask_from_positions(tf.constant(padded_positions), tf.constant(padded_positions < size),
                                         list(grid), mask_shape, list(clipped), axes, seeds, block)
    np.testing.assert_array_equal(got.numpy(), ref)
    np.testing.assert_array_equal(F.dropblock_keep_mask(tf.constant(u), 0.5, clipped, fmt, seeds).numpy(), ref)


@pytest.mark.parametrize("jit", [False, True])
def test_mask_from_positions_in_graphs(jit):
    """Unknown sizes in the graph (block clipped at run time), and XLA."""
    spatial, block = (5, 9), (7, 4)
    clipped = sd.clip_block(block, spatial)
    shape = (3,) + spatial + (2,)
    grid = sd.seed_grid_shape(shape, clipped, "channels_last", "valid")
    rng = np.random.default_rng(0)
    seeds_at = rng.random(math.prod(grid)) < 0.1
    positions = np.flatnonzero(seeds_at).astype(np.int64)
    ref = sdn.dropblock_keep_mask(np.where(seeds_at, 0.0, 1.0).reshape(grid), 0.5, clipped)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.int64), tf.TensorSpec([None] * 4, tf.float32)],
                 jit_compile=jit)
    def f(pos, x):
        dims = tf.shape(x)
        blk = [tf.minimum(dims[1], block[0]), tf.minimum(dims[2], block[1])]
        grid_t = [dims[0], dims[1] - blk[0] + 1, dims[2] - blk[1] + 1, dims[3]]
        n = tf.cast(tf.reduce_prod(tf.stack(grid_t)), tf.int64)
        return _fast.keep_mask_from_positions(pos, pos < n, grid_t, [dims[0], dims[1], dims[2], dims[3]],
                                              blk, (1, 2), "valid", block)

    np.testing.assert_array_equal(f(tf.constant(positions), tf.zeros(shape)).numpy(), ref)


@pytest.mark.parametrize("gamma", [0.003, 0.05, 0.4])
def test_bernoulli_positions_are_bernoulli(gamma):
    """Counts per position bin and in total within 5 sigma of Binomial(n, gamma); sorted, distinct."""
    n, reps, bins = 5000, 200, 10
    counts = np.zeros(bins)
    total = 0
    m = int(n * gamma + 8 * math.sqrt(n * gamma) + 64)
    for r in range(reps):
        pos = _fast.bernoulli_positions(n, gamma, tf.constant([r, 99], tf.int64), m).numpy()
        assert pos[-1] >= n  # enough draws
        assert np.all(np.diff(pos) > 0)
        pos = pos[pos < n]
        total += pos.size
        counts += np.bincount(pos * bins // n, minlength=bins)
    trials = n * reps
    sigma = math.sqrt(trials * gamma * (1 - gamma))
    assert abs(total - trials * gamma) <= 5 * sigma
    per_bin = trials / bins
    for c in counts:
        assert abs(c - per_bin * gamma) <= 5 * math.sqrt(per_bin * gamma * (1 - gamma))
    # neighbours independent: P(seed at i and i + 1) = gamma ** 2
    pairs = 0
    for r in range(reps):
        pos = _fast.bernoulli_positions(n, gamma, tf.constant([r, 7], tf.int64), m).numpy()
        pos = pos[pos < n]
        pairs += np.count_nonzero(np.diff(pos) == 1)
    # the n - 1 pair indicators of a draw are 1-dependent: a draw's pair count has variance
    # (n-1) g^2 (1-g^2) + 2 (n-2) (g^3 - g^4) <= 3 (n-1) g^2, so (reps independent) allow a
    # variance of 3 times the independent one, as tests/test_numpy_fast.py does; 5 sigma
    expect = reps * (n - 1) * gamma**2
    assert abs(pairs - expect) <= 5 * math.sqrt(3 * expect)


@pytest.mark.parametrize("kernel", [True, False])
def test_sparse_and_dense_paths_agree_in_distribution(kernel, monkeypatch):
    monkeypatch.setattr(_fast, "USE_XLA_KERNEL", kernel)
    """Per-unit drop frequency of both paths vs the exact map, pooled over edge/centre units."""
    spatial, block, rate = (10, 10), 4, 0.2
    x = tf.ones((64, 10, 10, 32))
    g = sd.exact_gamma(rate, block, spatial)
    prob = sd.drop_probability_map(g, block, spatial)
    for sampler in ("dense", "sparse"):
        # in a graph, where the sparse path builds its mask with the XLA kernel when enabled
        y = tf.function(lambda: F.dropblock(x, rate, block, seed=3, sampler=sampler, normalize="rate"))().numpy()
        freq = (y == 0).mean(axis=(0, 3))
        for region in (prob < prob.max(), prob == prob.max()):
            p = prob[region].mean()
            bound = 5 * math.sqrt(p * (1 - p) / (64 * 32))
            assert abs(freq[region].mean() - p) <= bound, (sampler, freq[region].mean(), p)


def test_sparse_path_falls_back_to_dense_for_large_gamma():
    """A gamma too large for gaps takes the dense branch: exactly sampler="dense"'s output."""
    x = tf.ones((2, 6, 6, 3))
    y = F.dropblock(x, 0.9, 2, seed=1, sampler="sparse")  # gamma large: dense branch
    np.testing.assert_array_equal(y.numpy(), F.dropblock(x, 0.9, 2, seed=1, sampler="dense").numpy())
    assert 0 < np.mean(y.numpy() == 0) < 1


@pytest.mark.parametrize("mode, normalize", [("eager", "batch"), ("eager", "rate"), ("graph", "batch"),
                                             ("graph", "rate"), ("graph-unknown-shape", "batch")])
def test_sparse_path_falls_back_to_dense_when_the_drawn_seeds_run_out(mode, normalize, monkeypatch):
    """When the ``m`` drawn gaps end inside the grid (more seeds than draws), the dense reference
    runs with the same seed, so the output is exactly ``sampler="dense"``'s.

    ``m`` is the smallest tier ``n // 4**k + 64`` (k <= TIERS) holding mean + _SIGMAS sd + 16
    draws; a very negative ``_SIGMAS`` picks the smallest, n // 1024 + 64 = 260 draws for the
    n = 32*14*14*32 = 200,704 seed positions here, while the seeds number Binomial(n, gamma) with
    mean 6,503 and sd 79: fewer than 260 seeds (no fallback) has probability below 1e-2000 (Chernoff).
    """
    shape, rate = (32, 16, 16, 32), 0.2
    x = tf.constant(np.random.default_rng(0).uniform(0.5, 1.5, shape).astype(np.float32))

    def run(sampler):
        def op(t):
            return F.dropblock(t, rate, 3, seed=5, sampler=sampler, normalize=normalize)
        if mode == "eager":
            return op(x).numpy()
        sig = [tf.TensorSpec([None] * 4 if mode == "graph-unknown-shape" else shape, tf.float32)]
        return tf.function(op, input_signature=sig)(x).numpy()

    dense = run("dense")
    # with enough draws the sparse path uses its own seeds: not the dense mask
    assert not np.array_equal(run("sparse"), dense)
    monkeypatch.setattr(_fast, "_SIGMAS", -1e9)
    fallback = run("sparse")
    np.testing.assert_array_equal(fallback, dense)
    # and the distribution is DropBlock's: the dropped fraction of the 32*32 independent maps
    # (each a fraction in [0, 1] with mean rate, exact gamma) is within 5 sigma of the rate
    got = float(np.mean(fallback == 0))
    assert abs(got - rate) <= five_sigma_fraction_bound(rate, shape[0] * shape[3])


@pytest.mark.parametrize("seeds", ["valid", "padded"])
def test_graph_gamma_is_relative_for_tiny_rates(seeds):
    """The in-graph gamma (a tensor rate, as under a schedule) hits tiny rates as closely as
    the Python one: bisected from [0, 1] to a width of 64**-8 it was 0.5 % off at 1e-12 and 284
    times the right value at 1e-16 (14x14 map, block 7)."""
    for spatial, block in (((14, 14), (7, 7)), ((6, 7, 8), (3, 2, 4)), ((40,), (5,))):
        for rate in (1e-3, 1e-12, 1e-16, 1e-100):
            got = float(_graph_gamma.exact_gamma(tf.constant(rate, tf.float64), block,
                                                 list(spatial), seeds))
            assert got == pytest.approx(sd.exact_gamma(rate, block, spatial, seeds), rel=1e-12, abs=0)


@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize("seeds", ["valid", "padded"])
def test_graph_gamma_matches_numpy(seeds, jit):
    cases = [((14, 14), (7, 7), 0.1), ((9, 13), (3, 6), 0.25), ((5,), (9,), 0.3), ((6, 7, 8), (3, 2, 4), 0.05),
             ((28, 28), (5, 5), 0.0), ((8, 8), (3, 3), 1.0)]

    def traced(block):
        @tf.function(jit_compile=jit, input_signature=[tf.TensorSpec([], tf.float32), tf.TensorSpec([None], tf.int32)])
        def both(rate, spatial):
            sp = [spatial[k] for k in range(len(block))]
            return _graph_gamma.exact_gamma(rate, block, sp, seeds), _graph_gamma.paper_gamma(rate, block, sp)
        return both

    for spatial, block, rate in cases:
        both = traced(block)
        exact = sd.exact_gamma(rate, block, spatial, seeds)
        paper = min(1.0, sd.paper_gamma(rate, block, spatial))
        e_static = _graph_gamma.exact_gamma(rate, block, list(spatial), seeds)
        np.testing.assert_allclose(float(e_static), exact, atol=1e-6)
        np.testing.assert_allclose(float(_graph_gamma.paper_gamma(rate, block, list(spatial))), paper, atol=1e-9)
        if jit and len(spatial) != 2:
            continue  # one XLA compilation per rank is enough
        e, p = both(tf.constant(rate, tf.float32), tf.constant(spatial, tf.int32))
        np.testing.assert_allclose(float(e), exact, atol=1e-6)
        np.testing.assert_allclose(float(p), min(1.0, sd.paper_gamma(float(np.float32(rate)), block, spatial)),
                                   rtol=1e-6)
