import pytest

import structdrop_tutorial as sd


@pytest.mark.parametrize("kind, shape, fmt, expected", [
    ("dropout", (3, 4, 5), "channels_last", (3, 4, 5)),
    ("spatial", (8, 50, 300), "channels_last", (8, 1, 300)),       # SpatialDropout1D
    ("spatial", (8, 300, 50), "channels_first", (8, 300, 1)),
    ("timestep", (8, 50, 300), "channels_last", (8, 50, 1)),       # whole positions
    ("timestep", (8, 300, 50), "channels_first", (8, 1, 50)),
    ("spatial", (2, 28, 28, 16), "channels_last", (2, 1, 1, 16)),
    ("spatial", (2, 16, 28, 28), "channels_first", (2, 16, 1, 1)),
    ("spatial", (2, 4, 5, 6, 3), "channels_last", (2, 1, 1, 1, 3)),
    ("spatial", (None, None, None, 16), "channels_last", (None, 1, 1, 16)),
    ("timestep", (None, None, 64), "channels_last", (None, None, 1)),
])
def test_noise_shape(kind, shape, fmt, expected):
    assert sd.noise_shape(kind, shape, fmt) == expected


def test_all_noise_shapes_of_3_4_5():
    shapes = sd.all_noise_shapes((3, 4, 5))
    assert len(shapes) == 8 and (1, 1, 1) in shapes and (3, 4, 5) in shapes and (3, 1, 5) in shapes
    assert len(sd.all_noise_shapes((3, 1, 5))) == 4  # an axis of size 1 adds no choice


@pytest.mark.parametrize("args, match", [
    (("channel", (2, 3, 4)), "kind must be one of"),
    (("spatial", (2, 3)), "rank 3, 4 or 5"),
    (("timestep", (2, 3, 4, 5)), "rank 3"),
    (("spatial", (2, 3, 4), "NHWC"), "data_format must be one of"),
])
def test_noise_shape_errors(args, match):
    with pytest.raises(ValueError, match=match):
        sd.noise_shape(*args)


def test_axes_and_seed_grid_shape():
    assert sd.spatial_axes(4, "channels_last") == (1, 2)
    assert sd.spatial_axes(5, "channels_first") == (2, 3, 4)
    assert sd.channel_axis(3, "channels_last") == 2
    assert sd.spatial_dims((2, 3, 14, 20), "channels_first") == (14, 20)
    assert sd.seed_grid_shape((2, 14, 20, 8), (7, 5), "channels_last") == (2, 8, 16, 8)
    assert sd.seed_grid_shape((2, 8, 14, 20), (7, 5), "channels_first", "padded",
                              ("batch", "channels")) == (1, 1, 20, 24)
    assert sd.seed_grid_shape((None, None, 16, 8), (3, 3), "channels_last") == (None, None, 14, 8)


def test_drop_path_noise_shape_per_sample_and_per_batch():
    from structdrop_tutorial.shapes import drop_path_noise_shape
    assert drop_path_noise_shape((8, 32, 32, 64)) == (8, 1, 1, 1)
    assert drop_path_noise_shape((10, 8, 300), batch_axis=1) == (1, 8, 1)   # sequence-first
    assert drop_path_noise_shape((10, 8, 300), batch_axis=-2) == (1, 8, 1)
    assert drop_path_noise_shape((8, 32, 32, 64), mode="batch") == (1, 1, 1, 1)
    assert drop_path_noise_shape((None, 5)) == (None, 1)                    # unknown batch kept


@pytest.mark.parametrize("args, match", [
    (((), "sample", 0), "at least one axis"),
    (((4, 3), "sample", 2), r"batch_axis must be in \[-2, 1\], got 2"),
    (((4, 3), "sample", -3), r"batch_axis must be in \[-2, 1\], got -3"),
    (((4, 3), "layer", 0), "mode must be one of"),
])
def test_drop_path_noise_shape_rejects_bad_arguments(args, match):
    from structdrop_tutorial.shapes import drop_path_noise_shape
    with pytest.raises(ValueError, match=match):
        drop_path_noise_shape(*args)


def test_seed_grid_shape_checks_the_block():
    with pytest.raises(ValueError, match="one entry per spatial axis"):
        sd.seed_grid_shape((2, 8, 8, 3), (3,), "channels_last")
    with pytest.raises(ValueError, match="clipped to the map"):
        sd.seed_grid_shape((2, 8, 8, 3), (9, 9), "channels_last")
    assert sd.seed_grid_shape((2, 8, 8, 3), (9, 9), "channels_last", "padded") == (2, 16, 16, 3)
    assert sd.seed_grid_shape((2, None, 8, 3), 3, "channels_last") == (2, None, 6, 3)


def test_all_noise_shapes_rejects_negative_sizes():
    with pytest.raises(ValueError, match="input_shape entries must be >= 0"):
        sd.all_noise_shapes((3, -1))
