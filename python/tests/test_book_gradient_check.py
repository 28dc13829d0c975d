"""The book's gradient-check script (ch05 gradient_check.py) on wgrad's nets and on the reference:

    grad_numerical = network.numerical_gradient(x_batch, t_batch)
    grad_backprop = network.gradient(x_batch, t_batch)
    for key in grad_numerical.keys():
        diff = np.average(np.abs(grad_backprop[key] - grad_numerical[key]))

with np.random seeded the same before each of the two calls, so both see one dropout mask. The
per-key figures must equal the reference's to 1e-6 (absolute); the gradients themselves are also
compared elementwise. Reference results are cached per module: its numerical gradient is the slow
side of this suite."""

import numpy as np
import pytest

from wgrad import book

import book_numpy as ref
from checks import (assert_grads_close, assert_numgrads_close, assert_params_equal,
                    book_pattern_diffs)


def downsample(x):
    """MNIST at 14×14 (every second pixel): MultiLayerNetExtend [100, 100] on 196 inputs keeps the
    reference's numerical gradient to seconds."""
    return np.ascontiguousarray(x.reshape(-1, 28, 28)[:, ::2, ::2].reshape(-1, 196))


def conv_images(x):
    """MNIST crops of 10×10 around the centre, for the small SimpleConvNet."""
    return np.ascontiguousarray(x.reshape(-1, 1, 28, 28)[:, :, 9:19, 9:19])


CASES = {
    "two_layer": dict(build=lambda m: m.TwoLayerNet(input_size=784, hidden_size=50,
                                                    output_size=10),
                      x=lambda x: x, n=3),
    "extend_bn_dropout": dict(build=lambda m: m.MultiLayerNetExtend(
        196, [100, 100], 10, use_batchnorm=True, use_dropout=True, dropout_ration=0.3),
        x=downsample, n=3),
    # BatchNorm over one sample: xc = 0, so every gradient below a BatchNorm is exactly 0
    "extend_bn_batch_of_one": dict(build=lambda m: m.MultiLayerNetExtend(
        196, [100, 100], 10, use_batchnorm=True, use_dropout=True, dropout_ration=0.3),
        x=downsample, n=1),
    "simple_conv": dict(build=lambda m: m.SimpleConvNet(
        input_dim=(1, 10, 10), conv_param={"filter_num": 3, "filter_size": 3, "pad": 0,
                                           "stride": 1},
        hidden_size=10, output_size=10, weight_init_std=0.01), x=conv_images, n=3),
}


def run_pattern(module, case, mnist):
    np.random.seed(2024)
    net = case["build"](module)
    x = case["x"](mnist["x_train"][:case["n"]])
    t = mnist["t_train"][:case["n"]]
    np.random.seed(77)
    grad_numerical = net.numerical_gradient(x, t)
    np.random.seed(77)
    grad_backprop = net.gradient(x, t)
    state = {k: np.array(v) for k, v in (net.state or {}).items()}
    return dict(params=net.params, numerical=grad_numerical, backprop=grad_backprop,
                diffs=book_pattern_diffs(grad_numerical, grad_backprop), state=state)


@pytest.fixture(scope="module")
def reference_results(mnist):
    return {name: run_pattern(ref, case, mnist) for name, case in CASES.items()}


@pytest.fixture(scope="module")
def wgrad_results(mnist):
    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = run_pattern(book, CASES[name], mnist)
        return cache[name]

    return get


@pytest.mark.parametrize("name", sorted(CASES))
def test_book_gradient_check_pattern(name, reference_results, wgrad_results):
    expect = reference_results[name]
    got = wgrad_results(name)
    assert_params_equal(got["params"], expect["params"])
    assert list(got["diffs"]) == list(expect["diffs"])
    for key, diff in expect["diffs"].items():
        assert abs(got["diffs"][key] - diff) <= 1e-6, (key, got["diffs"][key], diff)
    assert_grads_close(got["backprop"], expect["backprop"])
    assert_numgrads_close(got["numerical"], expect["numerical"])
    # gradient updated the running statistics once, numerical_gradient not at all
    assert set(got["state"]) == set(expect["state"])
    for key in expect["state"]:
        np.testing.assert_allclose(got["state"][key], expect["state"][key], rtol=1e-9,
                                   atol=1e-15, err_msg=key)


def test_batch_of_one_gradients_below_batchnorm_are_exactly_zero(reference_results,
                                                                 wgrad_results):
    got = wgrad_results("extend_bn_batch_of_one")
    expect = reference_results["extend_bn_batch_of_one"]
    for key in ("W1", "b1", "gamma1", "beta1", "W2", "b2", "gamma2"):
        assert not np.any(expect["backprop"][key]), key  # the reference agrees
        assert not np.any(got["backprop"][key]), key
        assert not np.any(got["numerical"][key]), key
    # with the book's beta = 0 the second BatchNorm's output is 0, on the ReLU's kink, so W3's
    # gradient is 0 too and only b3 learns
    assert np.any(got["backprop"]["b3"])
