"""wgrad.book.Trainer: full-batch runs (the shuffle cannot matter) against the reference's steps
with each of the book's optimizers, and one run on the bundled MNIST subset."""

import numpy as np
import pytest

from wgrad import book

import book_numpy as ref

N_TRAIN, N_TEST = 50, 40


def small_data(mnist):
    return (mnist["x_train"][:N_TRAIN], mnist["t_train"][:N_TRAIN],
            mnist["x_test"][:N_TEST], mnist["t_test"][:N_TEST])


# lr, momentum, decay and betas differ from the defaults and from each other, so a swapped or
# ignored setting changes the result. Names in the case the user may type them.
OPTIMIZERS = [
    ("SGD", {"lr": 0.3}),
    ("Momentum", {"lr": 0.07, "momentum": 0.6}),
    ("nesterov", {"lr": 0.05, "momentum": 0.75}),
    ("AdaGrad", {"lr": 0.04}),
    ("RMSprop", {"lr": 0.003, "decay_rate": 0.8}),
    ("Adam", {"lr": 0.002, "beta1": 0.7, "beta2": 0.95}),
    ("adam", {"lr": 0.01}),  # the book's defaults for beta1 and beta2
    ("momentum", {"lr": 0.02}),  # the default momentum 0.9
]

NETS = {
    "two_layer": lambda m: m.TwoLayerNet(784, 16, 10, weight_init_std=0.05),
    "mln_decay": lambda m: m.MultiLayerNet(784, [12, 9], 10, activation="sigmoid",
                                           weight_init_std="xavier", weight_decay_lambda=0.02),
}

EPOCHS = 6


def run_pair(mnist, net_name, optimizer, param, epochs=EPOCHS, evaluate=None):
    x, t, xt, tt = small_data(mnist)
    np.random.seed(31)
    rf = NETS[net_name](ref)
    losses, train_acc, test_acc = ref.full_batch_train(
        rf, x, t, xt, tt, epochs, optimizer, dict(param), evaluate_sample_num_per_epoch=evaluate)
    np.random.seed(31)
    wg = NETS[net_name](book)
    trainer = book.Trainer(wg, x, t, xt, tt, epochs=epochs, mini_batch_size=N_TRAIN,
                           optimizer=optimizer, optimizer_param=dict(param),
                           evaluate_sample_num_per_epoch=evaluate, verbose=False)
    trainer.train()
    return wg, rf, trainer, losses, train_acc, test_acc


def check_run(wg, rf, trainer, losses, train_acc, test_acc):
    assert set(wg.params) == set(rf.params)
    for key in rf.params:
        p = np.asarray(wg.params[key])
        scale = np.abs(rf.params[key]).max()
        np.testing.assert_allclose(p, rf.params[key], rtol=1e-9, atol=1e-12 * scale,
                                   err_msg=key)
    np.testing.assert_allclose(trainer.train_loss_list, losses, rtol=1e-9, atol=0)
    assert list(trainer.train_acc_list) == pytest.approx(train_acc, abs=1e-12)
    assert list(trainer.test_acc_list) == pytest.approx(test_acc, abs=1e-12)


@pytest.mark.parametrize("optimizer,param", OPTIMIZERS, ids=[o + str(i) for i, (o, _) in
                                                              enumerate(OPTIMIZERS)])
def test_full_batch_matches_reference_steps(mnist, optimizer, param):
    check_run(*run_pair(mnist, "two_layer", optimizer, param))


@pytest.mark.parametrize("optimizer,param", [("nesterov", {"lr": 0.3, "momentum": 0.85}),
                                             ("ADAM", {"lr": 0.02, "beta1": 0.85,
                                                       "beta2": 0.9})])
def test_full_batch_with_weight_decay(mnist, optimizer, param):
    """The loss list carries the 0.5·λ·ΣW² term and the update the λ·W gradient."""
    check_run(*run_pair(mnist, "mln_decay", optimizer, param))


def test_evaluate_sample_num(mnist):
    run = run_pair(mnist, "two_layer", "sgd", {"lr": 0.5}, epochs=3, evaluate=17)
    check_run(*run)
    # 17 samples: every accuracy is a multiple of 1/17
    for acc in list(run[2].train_acc_list) + list(run[2].test_acc_list):
        assert round(acc * 17, 9) == int(round(acc * 17))


def test_list_lengths_follow_floor_n_over_b(mnist):
    x, t, xt, tt = small_data(mnist)
    np.random.seed(2)
    net = book.TwoLayerNet(784, 8, 10)
    trainer = book.Trainer(net, x, t, xt, tt, epochs=3, mini_batch_size=15, verbose=False)
    trainer.train()
    assert len(trainer.train_loss_list) == 3 * (N_TRAIN // 15)
    assert len(trainer.train_acc_list) == len(trainer.test_acc_list) == 3


def test_two_layer_net_learns_mnist(mnist):
    np.random.seed(0)
    net = book.TwoLayerNet(input_size=784, hidden_size=50, output_size=10)
    trainer = book.Trainer(net, mnist["x_train"], mnist["t_train"], mnist["x_test"],
                           mnist["t_test"], epochs=3, mini_batch_size=100, optimizer="SGD",
                           optimizer_param={"lr": 0.1}, verbose=False)
    trainer.train()
    assert len(trainer.train_loss_list) == 3 * (8004 // 100)
    assert len(trainer.test_acc_list) == 3
    assert trainer.test_acc_list[-1] > 0.85, trainer.test_acc_list
    # the last epoch's accuracy is what the trained net scores (inference mode)
    assert net.accuracy(mnist["x_test"], mnist["t_test"]) == pytest.approx(
        trainer.test_acc_list[-1], abs=1e-12)
    assert trainer.train_loss_list[-1] < trainer.train_loss_list[0]
