"""Pickles in the book's format, bundled MNIST, and bad inputs raising ValueError that names the
argument or key and both shapes."""

import pickle

import numpy as np
import pytest

from wgrad import book

import book_numpy as ref
from checks import assert_params_equal, assert_rel, mentions_shape


def two_layer(seed=1):
    np.random.seed(seed)
    return book.TwoLayerNet(20, 11, 4, weight_init_std=0.3)


def data(n=6, d=20, classes=4):
    r = np.random.RandomState(0)
    return r.randn(n, d), r.randint(0, classes, size=n)


# ---- pickles ------------------------------------------------------------------------------------

def test_pickle_round_trip(tmp_path):
    net = two_layer()
    net.params["b1"] += 0.25  # a change after construction is what gets saved
    path = tmp_path / "p.pkl"
    net.save_params(str(path))
    with open(path, "rb") as f:
        saved = pickle.load(f)
    assert isinstance(saved, dict)
    assert_params_equal({k: saved[k] for k in net.params}, net.params)
    other = two_layer(seed=2)
    other.load_params(str(path))
    x, t = data()
    assert_params_equal(other.params, net.params)
    assert other.loss(x, t) == net.loss(x, t)
    # the reference (the book's load_params) reads wgrad's file
    np.random.seed(3)
    rf = ref.TwoLayerNet(20, 11, 4)
    rf.load_params(str(path))
    assert_rel(net.loss(x, t), rf.loss(x, t))


def test_pickle_written_by_the_book_loads(tmp_path):
    np.random.seed(5)
    rf = ref.MultiLayerNetExtend(20, [9, 7], 4, use_batchnorm=True)
    for k in rf.params:
        rf.params[k] = rf.params[k] + 0.1
    rf.save_params(str(tmp_path / "book.pkl"))
    np.random.seed(6)
    net = book.MultiLayerNetExtend(20, [9, 7], 4, use_batchnorm=True)
    net.load_params(str(tmp_path / "book.pkl"))
    assert_params_equal(net.params, rf.params, ordered=False)
    x, t = data()
    assert_rel(net.loss(x, t), rf.loss(x, t))


def test_default_file_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    net = two_layer()
    net.save_params()
    assert (tmp_path / "params.pkl").exists()
    other = two_layer(seed=9)
    other.load_params()
    assert_params_equal(other.params, net.params)


def test_load_params_missing_key_or_wrong_shape_leaves_net_unchanged(tmp_path):
    net = two_layer()
    before = {k: v.copy() for k, v in net.params.items()}
    good = {k: v.copy() + 1.0 for k, v in net.params.items()}

    missing = dict(good)
    del missing["b2"]
    with open(tmp_path / "missing.pkl", "wb") as f:
        pickle.dump(missing, f)
    with pytest.raises(ValueError, match="b2"):
        net.load_params(str(tmp_path / "missing.pkl"))
    assert_params_equal(net.params, before)

    wrong = dict(good)
    wrong["W2"] = np.zeros((4, 11))  # transposed: (11, 4) expected
    with open(tmp_path / "wrong.pkl", "wb") as f:
        pickle.dump(wrong, f)
    with pytest.raises(ValueError, match="W2") as info:
        net.load_params(str(tmp_path / "wrong.pkl"))
    assert mentions_shape(str(info.value), (4, 11)), str(info.value)
    assert mentions_shape(str(info.value), (11, 4)), str(info.value)
    assert_params_equal(net.params, before)


# ---- bad inputs ---------------------------------------------------------------------------------

def test_wrong_shaped_x_names_both_shapes():
    net = two_layer()
    x, t = data(d=19)
    for call in (lambda: net.predict(x), lambda: net.loss(x, t), lambda: net.gradient(x, t),
                 lambda: net.accuracy(x, t)):
        with pytest.raises(ValueError) as info:
            call()
        msg = str(info.value)
        assert "x" in msg and mentions_shape(msg, (6, 19)) and "20" in msg, msg


def test_labels_out_of_range():
    net = two_layer()
    x, _ = data()
    t = np.array([0, 1, 4, 2, 3, 1])  # 4 classes: 0..3
    with pytest.raises(ValueError, match=r"(?i)\bt\b|label"):
        net.loss(x, t)
    with pytest.raises(ValueError):
        net.gradient(x, t)
    with pytest.raises(ValueError):
        net.loss(x, np.array([0, 1, -1, 2, 3, 1]))


def test_targets_of_the_wrong_count_or_width():
    net = two_layer()
    x, t = data()
    with pytest.raises(ValueError):
        net.loss(x, t[:5])
    with pytest.raises(ValueError):
        net.loss(x, np.eye(5)[t])  # one-hot over 5 classes for a 4-class net


def test_parameter_replaced_with_wrong_shape():
    net = two_layer()
    x, t = data()
    net.params["W1"] = np.zeros((11, 20))
    with pytest.raises(ValueError, match="W1") as info:
        net.loss(x, t)
    msg = str(info.value)
    assert mentions_shape(msg, (11, 20)) and mentions_shape(msg, (20, 11)), msg
    net.params["W1"] = np.zeros((20, 11))
    net.params["b2"] = np.zeros(5)
    with pytest.raises(ValueError, match="b2"):
        net.gradient(x, t)


def test_unknown_activation():
    with pytest.raises(ValueError):
        book.MultiLayerNet(20, [5], 4, activation="tanhh")
    with pytest.raises(ValueError):
        book.MultiLayerNetExtend(20, [5], 4, activation="softplus", use_batchnorm=True)


def test_unknown_optimizer():
    net = two_layer()
    x, t = data()
    with pytest.raises(ValueError):
        trainer = book.Trainer(net, x, t, x, t, epochs=1, mini_batch_size=6, optimizer="sgdd",
                               verbose=False)
        trainer.train()


# ---- load_mnist ---------------------------------------------------------------------------------

def test_load_mnist_matches_the_idx_files(mnist):
    (x, t), (xt, tt) = book.load_mnist()
    assert x.shape == (8004, 784) and xt.shape == (1996, 784)
    # float32, as the book's load_mnist (astype(np.float32) / 255.0).
    assert x.dtype == np.float32
    np.testing.assert_allclose(x, mnist["x_train"], rtol=1e-7, atol=0)
    np.testing.assert_allclose(xt, mnist["x_test"], rtol=1e-7, atol=0)
    np.testing.assert_array_equal(t, mnist["t_train"])
    np.testing.assert_array_equal(tt, mnist["t_test"])


def test_load_mnist_options(mnist):
    (x, t), (xt, tt) = book.load_mnist(normalize=False, flatten=False, one_hot_label=True)
    assert x.dtype == np.uint8 and x.shape == (8004, 1, 28, 28) and xt.shape == (1996, 1, 28, 28)
    np.testing.assert_array_equal(x.reshape(8004, -1) / 255.0, mnist["x_train"])
    assert t.shape == (8004, 10) and tt.shape == (1996, 10)
    np.testing.assert_array_equal(np.argmax(t, axis=1), mnist["t_train"])
    np.testing.assert_array_equal(t.sum(axis=1), 1)
    (x2, _), _ = book.load_mnist(normalize=True, flatten=False)
    assert x2.shape == (8004, 1, 28, 28) and x2.dtype == np.float32
