"""structdrop_tutorial/plot.py: figures of masks and maps, and clear errors for bad panels."""
import numpy as np
import pytest

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from structdrop_tutorial import plot  # noqa: E402


def test_show_masks_and_images_draw_one_panel_per_array():
    masks = [np.ones((1, 1, 5, 6), bool), np.eye(5, 6, dtype=bool), np.zeros((5, 6))]
    fig = plot.show_masks(masks, ["a", "b", "c"], ncols=2)
    shown = [ax for ax in fig.axes if ax.images]
    assert len(fig.axes) == 4 and len(shown) == 3 and shown[1].get_title() == "b"
    np.testing.assert_array_equal(shown[1].images[0].get_array(), np.eye(5, 6))
    fig2 = plot.show_images([np.arange(6.0).reshape(2, 3), -np.ones((2, 3))], colorbar=True)
    lo, hi = fig2.axes[0].images[0].get_clim()
    assert (lo, hi) == (-1.0, 5.0)                   # one colour scale shared by all panels
    ax = plot.show_heatmap(np.arange(4.0).reshape(2, 2), "t", annotate=True)
    assert ax.get_title() == "t" and len(ax.texts) == 4
    for bad in (np.ones(4), np.ones((2, 3, 4))):  # a 3-D array was drawn as an RGBA image
        with pytest.raises(ValueError, match="2-D"):
            plot.show_heatmap(bad)
    plt.close("all")


@pytest.mark.parametrize("draw", [plot.show_masks, plot.show_images])
def test_bad_panels_are_named(draw):
    with pytest.raises(ValueError, match="at least one"):
        draw([])
    with pytest.raises(ValueError, match="2-D"):
        draw([np.ones((2, 3, 4))])
    with pytest.raises(ValueError, match="titles"):
        draw([np.ones((2, 2))] * 2, ["only one"])
    plt.close("all")
