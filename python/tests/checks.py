"""Comparison helpers shared by the wgrad-facing tests."""

import re

import numpy as np

# Analytic gradients and losses must agree to 1e-9 relative in f64. Entries that are sums
# cancelling to (almost) 0 carry an absolute rounding error of about eps * (sum of |terms|),
# which depends on the summation order (GPU reductions vs NumPy's pairwise sums), so such
# entries are compared absolutely at 1e-12 of the largest entry of any tensor (a tensor whose
# gradient is exactly 0, such as an affine bias under BatchNorm, is all such rounding).
GRAD_RTOL = 1e-9
GRAD_ATOL_FRACTION = 1e-12

# Numerical gradients must agree to 1e-6 relative. A central difference (L(θ+h) - L(θ-h)) / 2h
# at h = 1e-4 carries a rounding error of about eps * |L| / h ≈ 1e-12 that differs between two
# implementations; entries whose true value is 0 (or tiny) are all rounding, so they are compared
# absolutely at 1e-9, a thousand times above that noise and far below the gradients' scale.
NUM_RTOL = 1e-6
NUM_ATOL = 1e-9


def assert_grads_close(actual, expected, rtol=GRAD_RTOL, what="gradient"):
    assert set(actual) == set(expected), (what, sorted(actual), sorted(expected))
    scale = max(float(np.max(np.abs(np.asarray(e)))) for e in expected.values() if np.size(e))
    for key in expected:
        a = np.asarray(actual[key])
        e = np.asarray(expected[key])
        assert a.shape == e.shape, (what, key, a.shape, e.shape)
        np.testing.assert_allclose(a, e, rtol=rtol, atol=GRAD_ATOL_FRACTION * scale,
                                   err_msg="%s[%s]" % (what, key))


def assert_numgrads_close(actual, expected):
    assert set(actual) == set(expected), (sorted(actual), sorted(expected))
    for key in expected:
        a = np.asarray(actual[key])
        e = np.asarray(expected[key])
        assert a.shape == e.shape, (key, a.shape, e.shape)
        np.testing.assert_allclose(a, e, rtol=NUM_RTOL, atol=NUM_ATOL,
                                   err_msg="numerical_gradient[%s]" % key)


def assert_params_equal(actual, expected, ordered=True):
    if ordered:
        assert list(actual) == list(expected)
    else:
        assert set(actual) == set(expected)
    for key in expected:
        a = np.asarray(actual[key])
        assert a.dtype == np.float64, (key, a.dtype)
        np.testing.assert_array_equal(a, expected[key], err_msg=key)


def assert_rel(actual, expected, rtol=GRAD_RTOL):
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=0)


def mentions_shape(message, shape):
    """Whether `message` spells `shape` in any usual way: (3, 783), [3, 783], 3×783, 3x783."""
    dims = [str(int(d)) for d in shape]
    pattern = r"(?<!\d)" + r"\D{1,4}".join(dims) + r"(?!\d)"
    return re.search(pattern, message) is not None


def book_pattern_diffs(numerical, backprop):
    """The book's gradient_check.py: mean absolute difference per key."""
    return {key: float(np.average(np.abs(np.asarray(backprop[key]) - np.asarray(numerical[key]))))
            for key in numerical}
