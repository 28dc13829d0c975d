"""The NumPy reference (book_numpy) checked on its own: backprop against its own central
differences for every net and layer kind, BatchNorm over one sample, the dropout hash, the
conv/pool layers against direct loops, and the optimizers on a quadratic."""

import numpy as np
import pytest

import book_numpy as B


def rel_err(a, b):
    return np.linalg.norm(a - b) / max(np.linalg.norm(a) + np.linalg.norm(b), 1e-300)


def data(n, d, classes, seed=0):
    r = np.random.RandomState(seed)
    return r.randn(n, d), r.randint(0, classes, size=n)


# The book's backward drops the 1e-7 of cross_entropy_error's log, so backprop differs from the
# central differences by about 1e-7 / y_t relative (y_t the true class's probability), plus
# O(h²) truncation: 2e-5 leaves room for y_t down to ~0.01 and still catches any real error.
def check_net(net, x, t, tol=2e-5, seed=7):
    np.random.seed(seed)
    num = net.numerical_gradient(x, t)
    np.random.seed(seed)
    ana = net.gradient(x, t)
    assert set(num) == set(ana) == set(net.params)
    for k in num:
        assert ana[k].shape == net.params[k].shape
        if np.abs(num[k]).max() < 1e-10:  # a gradient that is 0 (a bias under BatchNorm)
            assert np.abs(ana[k]).max() < 1e-10, k
            continue
        assert rel_err(ana[k], num[k]) < tol, (k, rel_err(ana[k], num[k]))
    return num, ana


def test_two_layer_net():
    x, t = data(4, 13, 5)
    np.random.seed(1)
    check_net(B.TwoLayerNet(13, 7, 5, weight_init_std=0.3), x, t)


@pytest.mark.parametrize("activation", ["relu", "sigmoid"])
def test_multilayer_net_with_weight_decay(activation):
    x, t = data(5, 11, 4)
    x = 0.3 * x  # keep every true-class probability well above the log's 1e-7
    np.random.seed(2)
    net = B.MultiLayerNet(11, [9, 6], 4, activation=activation, weight_init_std=activation,
                          weight_decay_lambda=0.3)
    check_net(net, x, t)
    # the penalty: 0.5·λ·Σ W² over W1..W3
    plain = B.MultiLayerNet(11, [9, 6], 4, activation=activation)
    plain.params = net.params
    penalty = sum(0.5 * 0.3 * np.sum(net.params["W%d" % i] ** 2) for i in (1, 2, 3))
    assert np.isclose(net.loss(x, t), plain.loss(x, t) + penalty, rtol=1e-14)


def test_extend_batchnorm_dropout_weight_decay():
    x, t = data(6, 10, 4)
    np.random.seed(3)
    net = B.MultiLayerNetExtend(10, [8, 5], 4, use_batchnorm=True, use_dropout=True,
                                dropout_ration=0.3, weight_decay_lambda=0.1)
    for k in ("gamma1", "beta1", "gamma2", "beta2"):
        net.params[k] = net.params[k] + 0.3 * np.random.randn(*net.params[k].shape)
    num, ana = check_net(net, x, t)
    # numerical_gradient left the running stats alone; gradient moved them once
    mu = x @ net.params["W1"] + net.params["b1"]
    np.testing.assert_allclose(net.state["running_mean1"], 0.1 * mu.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(net.state["running_var1"], 0.1 * mu.var(axis=0), rtol=1e-12)


def test_extend_dropout_masks_follow_the_seed():
    x, t = data(6, 10, 4)
    np.random.seed(3)
    net = B.MultiLayerNetExtend(10, [8], 4, use_dropout=True, dropout_ration=0.5)
    np.random.seed(11)
    a = net.loss(x, t, train_flg=True)
    np.random.seed(11)
    b = net.loss(x, t, train_flg=True)
    c = net.loss(x, t, train_flg=True)
    assert a == b and a != c
    # inference scales by 1 - ratio and draws nothing
    st = np.random.get_state()[1].copy()
    net.loss(x, t)
    assert (np.random.get_state()[1] == st).all()


def test_batchnorm_batch_of_one_is_degenerate():
    x, t = data(1, 10, 4)
    np.random.seed(4)
    net = B.MultiLayerNetExtend(10, [8, 5], 4, use_batchnorm=True, use_dropout=True,
                                dropout_ration=0.3)
    # off the ReLU kink at 0 that BatchNorm's zero output and beta = 0 would sit on
    net.params["beta1"] = np.random.rand(8) + 0.1
    net.params["beta2"] = np.random.rand(5) + 0.1
    num, ana = check_net(net, x, t)
    for k in ("W1", "b1", "gamma1", "W2", "b2", "gamma2", "beta1"):
        assert not ana[k].any(), k
        assert not num[k].any(), k
    assert ana["beta2"].any() and ana["W3"].any()


@pytest.mark.parametrize("pad,stride", [(0, 1), (1, 1), (1, 2)])
def test_simple_conv_net(pad, stride):
    r = np.random.RandomState(5)
    size = 11 if stride == 2 else 8  # even conv output, as the book's size formula needs
    x = r.rand(2, 2, size, size)
    t = r.randint(0, 4, size=2)
    np.random.seed(5)
    net = B.SimpleConvNet(input_dim=(2, size, size),
                          conv_param={"filter_num": 3, "filter_size": 3, "pad": pad,
                                      "stride": stride},
                          hidden_size=6, output_size=4, weight_init_std=0.3)
    check_net(net, x, t)
    # flat input is the same net
    assert net.loss(x.reshape(2, -1), t) == net.loss(x, t)


def test_convolution_and_pooling_against_loops():
    r = np.random.RandomState(6)
    x = r.randn(2, 3, 7, 6)
    W = r.randn(4, 3, 3, 2)
    b = r.randn(4)
    conv = B.Convolution(W, b, stride=2, pad=1)
    out = conv.forward(x)
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    oh, ow = (7 + 2 - 3) // 2 + 1, (6 + 2 - 2) // 2 + 1
    ref = np.zeros((2, 4, oh, ow))
    for n in range(2):
        for f in range(4):
            for i in range(oh):
                for j in range(ow):
                    ref[n, f, i, j] = np.sum(xp[n, :, 2 * i:2 * i + 3, 2 * j:2 * j + 2] * W[f]) + b[f]
    np.testing.assert_allclose(out, ref, rtol=1e-12, atol=1e-12)
    pool = B.Pooling(2, 2, stride=2)
    y = r.randn(2, 3, 4, 6)
    p = pool.forward(y)
    np.testing.assert_array_equal(p, y.reshape(2, 3, 2, 2, 3, 2).max(axis=(3, 5)))
    d = pool.backward(np.ones_like(p))
    assert d.sum() == p.size and set(np.unique(d)) <= {0.0, 1.0}
    assert (d * y).sum() == pytest.approx(p.sum())


def test_relu_derivative_at_zero_is_zero():
    r = B.Relu()
    out = r.forward(np.array([-1.0, 0.0, 2.0]))
    np.testing.assert_array_equal(out, [0, 0, 2])
    np.testing.assert_array_equal(r.backward(np.ones(3)), [0, 0, 1])


def _pcg_int(v):
    m = 2**32
    s = (v * 747796405 + 2891336453) % m
    word = (((s >> ((s >> 28) + 4)) ^ s) * 277803737) % m
    return (word >> 22) ^ word


def test_dropout_hash_matches_plain_python_integers():
    for seed in (0, 1, 12345, 2**32 - 1):
        base = _pcg_int(0 ^ _pcg_int(seed))
        thr = min(round(0.3 * 2**32), 2**32 - 1)
        expect = [_pcg_int(i ^ base) >= thr for i in range(3 * 7)]
        np.testing.assert_array_equal(B.dropout_keep(seed, (3, 7), 0.3).ravel(), expect)
    keep = B.dropout_keep(99, (200, 100), 0.3)
    assert abs(keep.mean() - 0.7) < 0.01
    assert B.dropout_keep(99, (4, 5), 0.0).all()
    assert not B.dropout_keep(99, (4, 5), 1.0).any()


def test_softmax_with_loss_one_hot_equals_labels():
    x = np.random.randn(4, 5)
    t = np.array([0, 3, 4, 1])
    oh = np.eye(5)[t]
    a, b = B.SoftmaxWithLoss(), B.SoftmaxWithLoss()
    assert a.forward(x, t) == b.forward(x, oh)
    np.testing.assert_allclose(a.backward(), b.backward(), rtol=1e-15)


def test_init_draw_order_and_scales():
    np.random.seed(9)
    net = B.MultiLayerNetExtend(6, [5, 4], 3, weight_init_std="sigmoid", use_batchnorm=True)
    np.random.seed(9)
    w1 = np.sqrt(1 / 6) * np.random.randn(6, 5)
    w2 = np.sqrt(1 / 5) * np.random.randn(5, 4)
    w3 = np.sqrt(1 / 4) * np.random.randn(4, 3)
    np.testing.assert_array_equal(net.params["W1"], w1)
    np.testing.assert_array_equal(net.params["W2"], w2)
    np.testing.assert_array_equal(net.params["W3"], w3)
    assert list(net.params) == ["W1", "b1", "W2", "b2", "W3", "b3",
                                "gamma1", "beta1", "gamma2", "beta2"]


# --- optimizers on f(p) = 0.5 Σ a p², a > 0: each must approach the minimum 0 -------------------

A = np.array([[1.0, 3.0], [0.5, 2.0]])


def run_opt(opt, steps):
    params = {"p": np.array([[1.0, -2.0], [3.0, 0.5]])}
    for _ in range(steps):
        opt.update(params, {"p": A * params["p"]})
    return params["p"]


@pytest.mark.parametrize("name,param,steps", [
    ("sgd", {"lr": 0.1}, 200), ("momentum", {"lr": 0.05, "momentum": 0.8}, 300),
    ("nesterov", {"lr": 0.05, "momentum": 0.8}, 300), ("adagrad", {"lr": 0.5}, 500),
    ("rmsprop", {"lr": 0.01, "decay_rate": 0.9}, 1000),
    ("adam", {"lr": 0.05, "beta1": 0.8, "beta2": 0.95}, 1000)])
def test_optimizers_minimise_a_quadratic(name, param, steps):
    p = run_opt(B.make_optimizer(name.upper(), param), steps)
    assert np.abs(p).max() < 0.05, p


def test_optimizer_first_steps_by_hand():
    g = A * np.array([[1.0, -2.0], [3.0, 0.5]])
    p0 = np.array([[1.0, -2.0], [3.0, 0.5]])
    np.testing.assert_allclose(run_opt(B.SGD(0.1), 1), p0 - 0.1 * g)
    np.testing.assert_allclose(run_opt(B.Momentum(0.1, 0.7), 1), p0 - 0.1 * g)
    np.testing.assert_allclose(run_opt(B.Nesterov(0.1, 0.7), 1),
                               p0 - 0.7 * 0.7 * 0.1 * g - 1.7 * 0.1 * g)
    np.testing.assert_allclose(run_opt(B.AdaGrad(0.1), 1), p0 - 0.1 * g / (np.abs(g) + 1e-7))
    np.testing.assert_allclose(run_opt(B.RMSprop(0.1, 0.9), 1),
                               p0 - 0.1 * g / (np.sqrt(0.1) * np.abs(g) + 1e-7))
    # Adam's first step: m = 0.2 g, v = 0.05 g², lr_t = lr·sqrt(0.05)/0.2
    lr_t = 0.1 * np.sqrt(1 - 0.95) / (1 - 0.8)
    np.testing.assert_allclose(run_opt(B.Adam(0.1, 0.8, 0.95), 1),
                               p0 - lr_t * 0.2 * g / (np.sqrt(0.05) * np.abs(g) + 1e-7))
    with pytest.raises(ValueError):
        B.make_optimizer("sgdd")


def test_full_batch_train_reduces_loss():
    x, t = data(30, 12, 3)
    np.random.seed(8)
    net = B.MultiLayerNet(12, [10], 3)
    losses, tr, te = B.full_batch_train(net, x, t, x, t, 20, "adam", {"lr": 0.01})
    assert len(losses) == len(tr) == len(te) == 20
    assert losses[-1] < losses[0]


def test_mnist_reader(mnist):
    assert mnist["x_train"].shape == (8004, 784) and mnist["x_test"].shape == (1996, 784)
    assert mnist["x_train"].min() == 0.0 and mnist["x_train"].max() == 1.0
    counts = np.bincount(np.concatenate([mnist["t_train"], mnist["t_test"]]), minlength=10)
    assert list(counts) == [1001, 1127, 991, 1032, 980, 863, 1014, 1070, 944, 978]
