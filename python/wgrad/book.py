"""The nets of "Deep Learning from Scratch" (ゼロから作るDeep Learning) on the GPU.

Same constructors, attributes and methods as the book's ``TwoLayerNet`` (ch05),
``MultiLayerNet`` and ``MultiLayerNetExtend`` (common/), ``SimpleConvNet`` (ch07) and
``Trainer``, so a reader's script runs on the GPU by changing its imports::

    import numpy as np
    from wgrad.book import TwoLayerNet, load_mnist

    (x_train, t_train), (x_test, t_test) = load_mnist(normalize=True, one_hot_label=True)
    np.random.seed(0)
    network = TwoLayerNet(input_size=784, hidden_size=50, output_size=10)
    grad_numerical = network.numerical_gradient(x_train[:3], t_train[:3])
    grad_backprop = network.gradient(x_train[:3], t_train[:3])
    for key in grad_numerical:
        print(key, np.average(np.abs(grad_backprop[key] - grad_numerical[key])))

The numbers are the book's: float64 (where the adapter has SHADER_F64), the book's loss
``-log(y + 1e-7)``, its BatchNorm (eps 1e-6, biased running variance starting at 0), its
dropout (unscaled in training, scaled by 1 - ratio in inference), ReLU's derivative 0 at 0, and
initial weights drawn from ``np.random.randn`` in the book's order. Where wgrad differs, it
fixes a bug of the book's code: ``numerical_gradient`` holds one dropout mask for every
perturbed loss and leaves BatchNorm's running statistics alone; dropout masks come from wgrad's
counter-based hash, seeded by one ``np.random`` draw per training-mode call.
"""

from __future__ import annotations

import sys
from typing import Dict, List, Optional, Sequence

import numpy as np

from . import _native
from ._net import GpuNet, _labels

__all__ = [
    "TwoLayerNet",
    "MultiLayerNet",
    "MultiLayerNetExtend",
    "SimpleConvNet",
    "Trainer",
    "load_mnist",
]


def _init_scale(weight_init_std, fan_in: int) -> float:
    """The book's ``__init_weight``: 'relu'/'he' → √(2/n), 'sigmoid'/'xavier' → √(1/n)."""
    name = str(weight_init_std).lower()
    if name in ("relu", "he"):
        return float(np.sqrt(2.0 / fan_in))
    if name in ("sigmoid", "xavier"):
        return float(np.sqrt(1.0 / fan_in))
    try:
        return float(weight_init_std)
    except ValueError:
        raise ValueError(
            f"weight_init_std '{weight_init_std}': give a number, 'relu'/'he' or 'sigmoid'/'xavier'"
        ) from None


def _activation(name: str) -> str:
    act = str(name).lower()
    if act not in ("relu", "sigmoid"):
        raise ValueError(f"activation '{name}': the book's nets take 'relu' or 'sigmoid'")
    return act


class TwoLayerNet(GpuNet):
    """ch05's TwoLayerNet: Affine → ReLU → Affine → SoftmaxWithLoss.

    ``params``: W1 (input_size, hidden_size), b1, W2 (hidden_size, output_size), b2.
    """

    def __init__(self, input_size: int, hidden_size: int, output_size: int, weight_init_std: float = 0.01):
        super().__init__(f"affine{hidden_size},relu,affine{output_size}", (1, 1, input_size))
        self.params["W1"] = weight_init_std * np.random.randn(input_size, hidden_size)
        self.params["b1"] = np.zeros(hidden_size)
        self.params["W2"] = weight_init_std * np.random.randn(hidden_size, output_size)
        self.params["b2"] = np.zeros(output_size)


class MultiLayerNetExtend(GpuNet):
    """common/multi_layer_net_extend.py: (Affine → [BatchNorm] → activation → [Dropout]) per
    hidden layer, then Affine → SoftmaxWithLoss, with the book's L2 term ½·λ·Σ‖W‖².

    ``params``: W1, b1, (gamma1, beta1,) W2, …; ``state``: running_mean1, running_var1, … with
    BatchNorm. ``loss``, ``predict`` and ``numerical_gradient`` take ``train_flg`` as the book's
    do (``numerical_gradient`` and ``gradient`` use training mode).
    """

    def __init__(
        self,
        input_size: int,
        hidden_size_list: Sequence[int],
        output_size: int,
        activation: str = "relu",
        weight_init_std="relu",
        weight_decay_lambda: float = 0,
        use_dropout: bool = False,
        dropout_ration: float = 0.5,
        use_batchnorm: bool = False,
    ):
        act = _activation(activation)
        if use_dropout and not 0 <= dropout_ration < 1:
            raise ValueError(f"dropout_ration {dropout_ration}: give a probability in [0, 1)")
        words: List[str] = []
        for units in hidden_size_list:
            words.append(f"affine{units}")
            if use_batchnorm:
                words.append("bn")
            words.append(act)
            if use_dropout:
                words.append(f"dropout{dropout_ration!r}")
        words.append(f"affine{output_size}")
        super().__init__(",".join(words), (1, 1, input_size), weight_decay=weight_decay_lambda)
        self.input_size = input_size
        self.output_size = output_size
        self.hidden_size_list = list(hidden_size_list)
        self.hidden_layer_num = len(hidden_size_list)
        self.use_dropout = use_dropout
        self.use_batchnorm = use_batchnorm
        self.weight_decay_lambda = weight_decay_lambda
        all_size_list = [input_size] + list(hidden_size_list) + [output_size]
        for idx in range(1, len(all_size_list)):
            scale = _init_scale(weight_init_std, all_size_list[idx - 1])
            self.params[f"W{idx}"] = scale * np.random.randn(all_size_list[idx - 1], all_size_list[idx])
            self.params[f"b{idx}"] = np.zeros(all_size_list[idx])
        if use_batchnorm:
            for idx in range(1, self.hidden_layer_num + 1):
                self.params[f"gamma{idx}"] = np.ones(hidden_size_list[idx - 1])
                self.params[f"beta{idx}"] = np.zeros(hidden_size_list[idx - 1])


class MultiLayerNet(MultiLayerNetExtend):
    """common/multi_layer_net.py: (Affine → activation) per hidden layer, then Affine →
    SoftmaxWithLoss, with the book's L2 term ½·λ·Σ‖W‖²."""

    def __init__(
        self,
        input_size: int,
        hidden_size_list: Sequence[int],
        output_size: int,
        activation: str = "relu",
        weight_init_std="relu",
        weight_decay_lambda: float = 0,
    ):
        super().__init__(
            input_size, hidden_size_list, output_size, activation, weight_init_std, weight_decay_lambda
        )


class SimpleConvNet(GpuNet):
    """ch07's SimpleConvNet: Convolution → ReLU → max-pool 2×2 → Affine → ReLU → Affine →
    SoftmaxWithLoss.

    ``params``: W1 (filter_num, C, filter_size, filter_size), b1, W2 (pooled outputs,
    hidden_size), b2, W3 (hidden_size, output_size), b3. ``x`` may be images [N, C, H, W] or
    flat rows.
    """

    def __init__(
        self,
        input_dim=(1, 28, 28),
        conv_param: Optional[Dict[str, int]] = None,
        hidden_size: int = 100,
        output_size: int = 10,
        weight_init_std: float = 0.01,
    ):
        conv = {"filter_num": 30, "filter_size": 5, "pad": 0, "stride": 1}
        conv.update(conv_param or {})
        f, k, pad, stride = conv["filter_num"], conv["filter_size"], conv["pad"], conv["stride"]
        layers = f"conv{f}x{k}s{stride}p{pad},relu,maxpool2,affine{hidden_size},relu,affine{output_size}"
        super().__init__(layers, tuple(input_dim))
        conv_output_size = (input_dim[1] - k + 2 * pad) // stride + 1
        pool_output_size = int(f * (conv_output_size / 2) * (conv_output_size / 2))
        self.params["W1"] = weight_init_std * np.random.randn(f, input_dim[0], k, k)
        self.params["b1"] = np.zeros(f)
        self.params["W2"] = weight_init_std * np.random.randn(pool_output_size, hidden_size)
        self.params["b2"] = np.zeros(hidden_size)
        self.params["W3"] = weight_init_std * np.random.randn(hidden_size, output_size)
        self.params["b3"] = np.zeros(output_size)


# The book's optimizers: their keyword arguments and defaults (common/optimizer.py).
_OPTIMIZERS = {
    "sgd": {"lr": 0.01},
    "momentum": {"lr": 0.01, "momentum": 0.9},
    "nesterov": {"lr": 0.01, "momentum": 0.9},
    "adagrad": {"lr": 0.01},
    "rmsprop": {"lr": 0.01, "decay_rate": 0.99},
    "adam": {"lr": 0.001, "beta1": 0.9, "beta2": 0.999},
}


def _pixels(x, net: GpuNet, what: str) -> np.ndarray:
    """Images as the trainer uploads them, uint8: values k/255, as ``load_mnist(normalize=True)``
    gives them."""
    xs = net._inputs(x)
    scaled = xs * 255.0
    levels = np.rint(scaled)
    if xs.size and (levels.min() < 0 or levels.max() > 255 or np.max(np.abs(scaled - levels)) > 1e-4):
        raise ValueError(
            f"{what} holds values that are not pixels k/255 in [0, 1]: Trainer uploads uint8 "
            "images, as load_mnist(normalize=True) gives them; for other inputs train with "
            "network.gradient() in a loop of your own"
        )
    return levels.astype(np.uint8).ravel()


class Trainer:
    """common/trainer.py's Trainer, with the whole run on the GPU: the data uploaded once,
    every step (batch gather, forward, backward, the book's optimizer update, metrics)
    recorded on the GPU with no round trip to Python.

    Each epoch visits ``len(x_train) // mini_batch_size`` batches of a shuffle (wgrad's own,
    seeded from one ``np.random`` draw) rather than the book's draws with replacement.
    ``train_loss_list`` gets each step's loss on its batch in training mode, before the update;
    ``train_acc_list`` and ``test_acc_list`` the accuracies after each epoch, over the first
    ``evaluate_sample_num_per_epoch`` samples of each set, or all of them.
    """

    def __init__(
        self,
        network: GpuNet,
        x_train,
        t_train,
        x_test,
        t_test,
        epochs: int = 20,
        mini_batch_size: int = 100,
        optimizer: str = "SGD",
        optimizer_param: Optional[Dict[str, float]] = None,
        evaluate_sample_num_per_epoch: Optional[int] = None,
        verbose: bool = True,
    ):
        name = str(optimizer).lower()
        if name not in _OPTIMIZERS:
            raise ValueError(
                f"optimizer '{optimizer}': use SGD, Momentum, Nesterov, AdaGrad, RMSprop or Adam"
            )
        param = dict(optimizer_param if optimizer_param is not None else {"lr": 0.01})
        unknown = sorted(set(param) - set(_OPTIMIZERS[name]))
        if unknown:
            raise ValueError(
                f"optimizer_param {unknown} is not a parameter of {optimizer}: it takes "
                f"{sorted(_OPTIMIZERS[name])}"
            )
        if evaluate_sample_num_per_epoch is not None and evaluate_sample_num_per_epoch < 1:
            raise ValueError("evaluate_sample_num_per_epoch must be a positive count, or None for all")
        self.network = network
        self.verbose = verbose
        self.x_train, self.t_train, self.x_test, self.t_test = x_train, t_train, x_test, t_test
        self.epochs = int(epochs)
        self.batch_size = int(mini_batch_size)
        self.optimizer = name
        self.optimizer_param = {k: float(v) for k, v in param.items()}
        self.evaluate_sample_num_per_epoch = evaluate_sample_num_per_epoch
        self.train_size = int(np.asarray(x_train).shape[0])
        self.iter_per_epoch = max(self.train_size // self.batch_size, 1)
        self.max_iter = int(self.epochs * self.iter_per_epoch)
        self.train_loss_list: List[float] = []
        self.train_acc_list: List[float] = []
        self.test_acc_list: List[float] = []
        self.samples_per_second = float("nan")

    def train(self) -> None:
        net = self.network
        classes = net._net.classes
        train_set = (
            _pixels(self.x_train, net, "x_train"),
            _labels(self.t_train, self.train_size, classes).astype(np.uint8),
        )
        n_test = int(np.asarray(self.x_test).shape[0])
        test_set = (
            _pixels(self.x_test, net, "x_test"),
            _labels(self.t_test, n_test, classes).astype(np.uint8),
        )
        seed = int(np.random.randint(0, 2**63, dtype=np.int64))
        run = net._net.train(
            net._flat_params(),
            net._state(),
            train_set,
            test_set,
            (self.optimizer, self.optimizer_param),
            (self.epochs, self.batch_size, seed),
            self.evaluate_sample_num_per_epoch,
            bool(self.verbose),
        )
        net.params.update(net._unflatten(run["params"]))
        net._take_state(run["state"])
        self.train_loss_list += run["train_loss_list"]
        self.train_acc_list += run["train_acc_list"]
        self.test_acc_list += run["test_acc_list"]
        self.samples_per_second = run["samples_per_second"]
        if self.verbose:
            for epoch, (tr, te) in enumerate(zip(run["train_acc_list"], run["test_acc_list"]), 1):
                print(f"=== epoch:{epoch}, train acc:{tr}, test acc:{te} ===", file=sys.stdout)
            print("=============== Final Test Accuracy ===============")
            print(f"test acc:{run['test_accuracy']}")


def load_mnist(normalize: bool = True, flatten: bool = True, one_hot_label: bool = False):
    """The MNIST subset bundled with wgrad (8,004 training and 1,996 test images), shaped as the
    book's ``dataset.mnist.load_mnist`` returns the full set: ``(x_train, t_train), (x_test,
    t_test)``, images float32 in [0, 1] when ``normalize`` (else uint8), [N, 784] when
    ``flatten`` (else [N, 1, 28, 28]), labels [N] or one-hot [N, 10]."""
    train_x, train_t, test_x, test_t = _native.bundled_mnist()

    def images(flat):
        x = flat.reshape(-1, 784)
        if normalize:
            x = x.astype(np.float32) / 255.0
        return x if flatten else x.reshape(-1, 1, 28, 28)

    def labels(t):
        t = t.astype(np.int64)
        if not one_hot_label:
            return t
        one_hot = np.zeros((t.size, 10))
        one_hot[np.arange(t.size), t] = 1
        return one_hot

    return (images(train_x), labels(train_t)), (images(test_x), labels(test_t))
