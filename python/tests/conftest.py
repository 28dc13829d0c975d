"""Session fixtures: seeded NumPy, the bundled MNIST subset read once (IDX files on disk, no
network), and the reference module on sys.path."""

import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import book_numpy  # noqa: E402


@pytest.fixture(scope="session")
def mnist():
    """The bundled subset as float64 in [0, 1], flat, with integer labels (our own reader)."""
    np.random.seed(0)
    (x_train, t_train), (x_test, t_test) = book_numpy.load_mnist(normalize=True, flatten=True)
    for a in (x_train, t_train, x_test, t_test):
        a.setflags(write=False)
    return {"x_train": x_train, "t_train": t_train, "x_test": x_test, "t_test": t_test}


@pytest.fixture(autouse=True)
def _seed_numpy():
    """Every test starts from the same global NumPy stream."""
    np.random.seed(1234)
    yield
