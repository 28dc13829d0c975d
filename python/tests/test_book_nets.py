"""wgrad.book's nets against the NumPy reference, method by method, on small nets whose sizes all
differ (21 inputs, hidden 13 and 7, 6 classes, batch 5), so that a swapped dimension shows."""

import numpy as np
import pytest

from wgrad import book

import book_numpy as ref
from checks import (assert_grads_close, assert_numgrads_close, assert_params_equal,
                    assert_rel)

N_IN, H1, H2, N_OUT, BATCH = 21, 13, 7, 6, 5

CONV = {"filter_num": 3, "filter_size": 3, "pad": 1, "stride": 1}
CONV_STRIDE = {"filter_num": 4, "filter_size": 3, "pad": 1, "stride": 2}

NETS = {
    "two_layer": (lambda m: m.TwoLayerNet(N_IN, H1, N_OUT, weight_init_std=0.2), (N_IN,)),
    "mln_relu_decay": (lambda m: m.MultiLayerNet(N_IN, [H1, H2], N_OUT,
                                                 weight_decay_lambda=0.05), (N_IN,)),
    "mln_sigmoid": (lambda m: m.MultiLayerNet(N_IN, [H1, H2], N_OUT, activation="sigmoid",
                                              weight_init_std="sigmoid"), (N_IN,)),
    "mln_std": (lambda m: m.MultiLayerNet(N_IN, [H1], N_OUT, weight_init_std=0.07), (N_IN,)),
    "ext_plain": (lambda m: m.MultiLayerNetExtend(N_IN, [H1, H2], N_OUT,
                                                  weight_init_std="he"), (N_IN,)),
    "ext_bn": (lambda m: m.MultiLayerNetExtend(N_IN, [H1, H2], N_OUT,
                                               use_batchnorm=True), (N_IN,)),
    "ext_dropout": (lambda m: m.MultiLayerNetExtend(N_IN, [H1, H2], N_OUT, use_dropout=True,
                                                    dropout_ration=0.3), (N_IN,)),
    "ext_all": (lambda m: m.MultiLayerNetExtend(N_IN, [H1, H2], N_OUT, activation="sigmoid",
                                                weight_init_std="xavier",
                                                weight_decay_lambda=0.1, use_dropout=True,
                                                dropout_ration=0.4, use_batchnorm=True),
                (N_IN,)),
    "conv": (lambda m: m.SimpleConvNet(input_dim=(2, 8, 8), conv_param=dict(CONV),
                                       hidden_size=H2, output_size=N_OUT,
                                       weight_init_std=0.1), (2, 8, 8)),
    "conv_stride": (lambda m: m.SimpleConvNet(input_dim=(1, 11, 11),
                                              conv_param=dict(CONV_STRIDE), hidden_size=H1,
                                              output_size=N_OUT, weight_init_std=0.1),
                    (1, 11, 11)),
}
DROPOUT = {"ext_dropout", "ext_all"}
BATCHNORM = {"ext_bn", "ext_all"}


def make_pair(name, seed=42):
    build, _ = NETS[name]
    np.random.seed(seed)
    wg = build(book)
    np.random.seed(seed)
    rf = build(ref)
    return wg, rf


def inputs(name, n=BATCH, seed=3):
    _, shape = NETS[name]
    r = np.random.RandomState(seed)
    return 0.7 * r.randn(n, *shape), r.randint(0, N_OUT, size=n)


def jitter(wg, rf, seed=5, scale=0.1):
    """Move every parameter off its initial value (biases off 0, gamma off 1), in place and
    identically in both nets: a bias that is ignored, or an in-place change that is not
    honoured, then shows."""
    r = np.random.RandomState(seed)
    for key in rf.params:
        d = scale * r.randn(*rf.params[key].shape)
        rf.params[key] += d
        wg.params[key] += d


def pair(name, seed=42):
    wg, rf = make_pair(name, seed)
    jitter(wg, rf)
    x, t = inputs(name)
    return wg, rf, x, t


@pytest.mark.parametrize("name", sorted(NETS))
def test_initial_params_follow_the_books_draws(name):
    wg, rf = make_pair(name, seed=17)
    assert_params_equal(wg.params, rf.params)
    # and no extra draws: both leave the global stream at the same place
    np.random.seed(17)
    NETS[name][0](book)
    after_wg = np.random.rand()
    np.random.seed(17)
    NETS[name][0](ref)
    assert after_wg == np.random.rand()


@pytest.mark.parametrize("name", sorted(NETS))
def test_predict_loss_accuracy(name):
    wg, rf, x, t = pair(name)
    assert_rel(wg.predict(x), rf.predict(x))
    assert_rel(wg.predict(x, train_flg=False), rf.predict(x))
    assert_rel(wg.loss(x, t), rf.loss(x, t))
    assert wg.accuracy(x, t) == rf.accuracy(x, t)
    onehot = np.eye(N_OUT)[t]
    assert_rel(wg.loss(x, onehot), rf.loss(x, t))
    assert wg.accuracy(x, onehot) == rf.accuracy(x, t)


@pytest.mark.parametrize("name", sorted(NETS))
def test_gradient(name):
    wg, rf, x, t = pair(name)
    np.random.seed(101)
    expect = rf.gradient(x, t)
    after_ref = np.random.rand()
    np.random.seed(101)
    got = wg.gradient(x, t)
    # one seed draw if the net has dropout, none otherwise
    assert np.random.rand() == after_ref
    assert_grads_close(got, expect)
    if name in BATCHNORM:
        assert_grads_close(wg.state, rf.state, what="state")


@pytest.mark.parametrize("name", sorted(NETS))
def test_gradient_with_one_hot_targets(name):
    wg, rf, x, t = pair(name)
    np.random.seed(7)
    expect = rf.gradient(x, t)
    np.random.seed(7)
    assert_grads_close(wg.gradient(x, np.eye(N_OUT)[t]), expect)


@pytest.mark.parametrize("name", sorted(NETS))
def test_numerical_gradient(name):
    wg, rf, x, t = pair(name)
    np.random.seed(202)
    expect = rf.numerical_gradient(x, t)
    after_ref = np.random.rand()
    np.random.seed(202)
    got = wg.numerical_gradient(x, t)
    assert np.random.rand() == after_ref
    assert_numgrads_close(got, expect)
    if name in BATCHNORM:
        # numerical_gradient leaves the running statistics alone
        for key, value in wg.state.items():
            assert not np.any(value), key


@pytest.mark.parametrize("name", sorted(NETS))
def test_numerical_gradient_step(name):
    wg, rf, x, t = pair(name)
    np.random.seed(9)
    expect = rf.numerical_gradient(x, t, h=1e-3)
    np.random.seed(9)
    assert_numgrads_close(wg.numerical_gradient(x, t, h=1e-3), expect)


@pytest.mark.parametrize("name", sorted(DROPOUT | BATCHNORM))
def test_training_mode_predict_and_loss(name):
    wg, rf, x, t = pair(name)
    for call in range(2):  # the running stats move on each call
        np.random.seed(30 + call)
        y_ref = rf.predict(x, train_flg=True)
        np.random.seed(30 + call)
        assert_rel(wg.predict(x, train_flg=True), y_ref)
        np.random.seed(40 + call)
        l_ref = rf.loss(x, t, train_flg=True)
        np.random.seed(40 + call)
        assert_rel(wg.loss(x, t, train_flg=True), l_ref)
        if name in BATCHNORM:
            assert_grads_close(wg.state, rf.state, what="state")
    # inference after training-mode calls: running statistics (BatchNorm), x·(1 - p) (dropout)
    assert_rel(wg.predict(x), rf.predict(x))
    assert_rel(wg.loss(x, t), rf.loss(x, t))
    assert wg.accuracy(x, t) == rf.accuracy(x, t)


@pytest.mark.parametrize("name", sorted(DROPOUT))
def test_dropout_masks_differ_between_calls(name):
    wg, _, x, t = pair(name)
    np.random.seed(1)
    a = wg.loss(x, t, train_flg=True)
    b = wg.loss(x, t, train_flg=True)
    np.random.seed(1)
    assert wg.loss(x, t, train_flg=True) == a
    assert a != b


@pytest.mark.parametrize("name", sorted(BATCHNORM))
def test_state_starts_at_zero(name):
    wg, rf = make_pair(name)
    assert list(wg.state) == list(rf.state)
    for key, value in wg.state.items():
        assert value.dtype == np.float64
        np.testing.assert_array_equal(value, np.zeros_like(rf.state[key]), err_msg=key)


@pytest.mark.parametrize("name", ["two_layer", "ext_all", "conv"])
def test_params_changed_in_place_and_replaced_are_used(name):
    wg, rf, x, t = pair(name)
    np.random.seed(3)
    g = wg.gradient(x, t)
    np.random.seed(3)
    g_ref = rf.gradient(x, t)
    for key in rf.params:  # the book's training loop
        wg.params[key] -= 0.5 * g[key]
        rf.params[key] -= 0.5 * g_ref[key]
    assert_rel(wg.loss(x, t), rf.loss(x, t))
    r = np.random.RandomState(8)
    for key in ("W1", "b2"):
        new = r.randn(*rf.params[key].shape)
        wg.params[key] = new.copy()
        rf.params[key] = new.copy()
    assert_rel(wg.predict(x), rf.predict(x))
    np.random.seed(4)
    g_ref = rf.gradient(x, t)
    np.random.seed(4)
    assert_grads_close(wg.gradient(x, t), g_ref)


def test_flat_and_image_inputs(mnist):
    x_flat = mnist["x_train"][:6]
    x_img = x_flat.reshape(6, 1, 28, 28)
    t = mnist["t_train"][:6]
    np.random.seed(12)
    wg = book.TwoLayerNet(784, 12, 10, weight_init_std=0.1)
    np.random.seed(12)
    rf = ref.TwoLayerNet(784, 12, 10, weight_init_std=0.1)
    assert_rel(wg.loss(x_img, t), rf.loss(x_flat, t))
    assert_rel(wg.predict(x_img), wg.predict(x_flat))
    assert_grads_close(wg.gradient(x_img, t), rf.gradient(x_flat, t))
    np.random.seed(13)
    conv_wg = book.SimpleConvNet(conv_param={"filter_num": 2, "filter_size": 5, "pad": 0,
                                             "stride": 1}, hidden_size=9)
    np.random.seed(13)
    conv_rf = ref.SimpleConvNet(conv_param={"filter_num": 2, "filter_size": 5, "pad": 0,
                                            "stride": 1}, hidden_size=9)
    assert_rel(conv_wg.loss(x_flat, t), conv_rf.loss(x_img, t))
    assert_grads_close(conv_wg.gradient(x_flat, t), conv_rf.gradient(x_img, t))
    assert conv_wg.accuracy(x_flat, t) == conv_rf.accuracy(x_img, t)


def test_book_default_sizes(mnist):
    """The book's SimpleConvNet defaults (30 filters 5×5, hidden 100) and TwoLayerNet(784, 50, 10)
    on real images, by loss, gradient and accuracy."""
    x, t = mnist["x_train"][:8], mnist["t_train"][:8]
    for build in (lambda m: m.SimpleConvNet(), lambda m: m.TwoLayerNet(784, 50, 10)):
        np.random.seed(21)
        wg = build(book)
        np.random.seed(21)
        rf = build(ref)
        assert_params_equal(wg.params, rf.params)
        assert_rel(wg.loss(x, t), rf.loss(x, t))
        assert_grads_close(wg.gradient(x, t), rf.gradient(x, t))
        assert wg.accuracy(x, t) == rf.accuracy(x, t)
