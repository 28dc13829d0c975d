"""An independent float64 NumPy reference of "Deep Learning from Scratch"'s layers, nets,
optimizers and trainer, written from the book's algorithms, for testing ``wgrad.book``.

It follows the book's code except where wgrad documents a different, testable convention:

* Dropout masks come from one seed per training-mode call (``_draw_seed``) hashed with PCG
  (``dropout_keep``), instead of ``np.random.rand(*x.shape) > ratio`` per forward.
* ``numerical_gradient`` of MultiLayerNetExtend differentiates the training-mode loss with one
  dropout mask for all perturbed losses, BatchNorm on batch statistics, and the running
  statistics left alone (the book's loop updates them twice per element).
* The running statistics live in ``net.state`` (``running_mean{k}``/``running_var{k}``).
* Layers read ``net.params`` on every call, so both in-place changes and replaced arrays count.

Nothing here imports wgrad.
"""

import gzip
import os
from collections import OrderedDict

import numpy as np

# ----------------------------------------------------------------------------------------------
# Dropout masks: wgrad's documented PCG hash
# ----------------------------------------------------------------------------------------------

_M32 = np.uint64(0xFFFFFFFF)


def pcg(v):
    """PCG hash of 32-bit unsigned values (array or scalar), all arithmetic mod 2**32."""
    v = np.asarray(v, dtype=np.uint64) & _M32
    s = (v * np.uint64(747796405) + np.uint64(2891336453)) & _M32
    word = (((s >> ((s >> np.uint64(28)) + np.uint64(4))) ^ s) * np.uint64(277803737)) & _M32
    return (word >> np.uint64(22)) ^ word


def dropout_threshold(ratio):
    return min(int(round(ratio * 2**32)), 2**32 - 1)


def dropout_keep(seed, shape, ratio):
    """Boolean keep mask of a dropout layer whose output has `shape` (N, D)."""
    n = int(np.prod(shape))
    i = np.arange(n, dtype=np.uint64)
    base = pcg(np.uint64(0) ^ pcg(np.uint64(seed)))
    keep = pcg(i ^ base) >= np.uint64(dropout_threshold(ratio))
    return keep.reshape(shape)


def _draw_seed():
    return int(np.random.randint(0, 2**32, dtype=np.uint64))


# ----------------------------------------------------------------------------------------------
# Functions
# ----------------------------------------------------------------------------------------------


def sigmoid(x):
    # exp(-x) overflows to inf for x < -709 and the result is then exactly 0, as it should be
    # (BatchNorm at inference with the initial zero running variance divides by 1e-3)
    with np.errstate(over="ignore"):
        return 1 / (1 + np.exp(-x))


def relu(x):
    return np.maximum(0, x)


def softmax(x):
    x = x - np.max(x, axis=-1, keepdims=True)
    return np.exp(x) / np.sum(np.exp(x), axis=-1, keepdims=True)


def cross_entropy_error(y, t):
    if y.ndim == 1:
        t = t.reshape(1, t.size)
        y = y.reshape(1, y.size)
    if t.size == y.size:
        t = t.argmax(axis=1)
    batch_size = y.shape[0]
    return -np.sum(np.log(y[np.arange(batch_size), t] + 1e-7)) / batch_size


def im2col(input_data, filter_h, filter_w, stride=1, pad=0):
    N, C, H, W = input_data.shape
    out_h = (H + 2 * pad - filter_h) // stride + 1
    out_w = (W + 2 * pad - filter_w) // stride + 1
    img = np.pad(input_data, [(0, 0), (0, 0), (pad, pad), (pad, pad)], "constant")
    col = np.zeros((N, C, filter_h, filter_w, out_h, out_w))
    for y in range(filter_h):
        y_max = y + stride * out_h
        for x in range(filter_w):
            x_max = x + stride * out_w
            col[:, :, y, x, :, :] = img[:, :, y:y_max:stride, x:x_max:stride]
    return col.transpose(0, 4, 5, 1, 2, 3).reshape(N * out_h * out_w, -1)


def col2im(col, input_shape, filter_h, filter_w, stride=1, pad=0):
    N, C, H, W = input_shape
    out_h = (H + 2 * pad - filter_h) // stride + 1
    out_w = (W + 2 * pad - filter_w) // stride + 1
    col = col.reshape(N, out_h, out_w, C, filter_h, filter_w).transpose(0, 3, 4, 5, 1, 2)
    img = np.zeros((N, C, H + 2 * pad + stride - 1, W + 2 * pad + stride - 1))
    for y in range(filter_h):
        y_max = y + stride * out_h
        for x in range(filter_w):
            x_max = x + stride * out_w
            img[:, :, y:y_max:stride, x:x_max:stride] += col[:, :, y, x, :, :]
    return img[:, :, pad:H + pad, pad:W + pad]


# ----------------------------------------------------------------------------------------------
# Layers
# ----------------------------------------------------------------------------------------------


class Relu:
    def __init__(self):
        self.mask = None

    def forward(self, x):
        self.mask = x <= 0
        out = x.copy()
        out[self.mask] = 0
        return out

    def backward(self, dout):
        dout = dout.copy()
        dout[self.mask] = 0
        return dout


class Sigmoid:
    def __init__(self):
        self.out = None

    def forward(self, x):
        self.out = sigmoid(x)
        return self.out

    def backward(self, dout):
        return dout * (1.0 - self.out) * self.out


class Affine:
    def __init__(self, W, b):
        self.W, self.b = W, b
        self.x = self.original_x_shape = self.dW = self.db = None

    def forward(self, x):
        self.original_x_shape = x.shape
        x = x.reshape(x.shape[0], -1)
        self.x = x
        return np.dot(x, self.W) + self.b

    def backward(self, dout):
        dx = np.dot(dout, self.W.T)
        self.dW = np.dot(self.x.T, dout)
        self.db = np.sum(dout, axis=0)
        return dx.reshape(*self.original_x_shape)


class SoftmaxWithLoss:
    def __init__(self):
        self.loss = self.y = self.t = None

    def forward(self, x, t):
        self.t = t
        self.y = softmax(x)
        self.loss = cross_entropy_error(self.y, self.t)
        return self.loss

    def backward(self, dout=1):
        batch_size = self.t.shape[0]
        if self.t.size == self.y.size:
            dx = (self.y - self.t) / batch_size
        else:
            dx = self.y.copy()
            dx[np.arange(batch_size), self.t] -= 1
            dx = dx / batch_size
        return dx


class Dropout:
    """wgrad's convention: the mask comes from `seed` (see dropout_keep); no 1/(1-p) scaling."""

    def __init__(self, dropout_ratio=0.5):
        self.dropout_ratio = dropout_ratio
        self.mask = None
        self.seed = None  # set by the net before each training-mode forward

    def forward(self, x, train_flg=True):
        if train_flg:
            self.mask = dropout_keep(self.seed, x.shape, self.dropout_ratio)
            return x * self.mask
        return x * (1.0 - self.dropout_ratio)

    def backward(self, dout):
        return dout * self.mask


class BatchNormalization:
    """The book's BatchNormalization; running stats read from / written to `state` dict."""

    def __init__(self, gamma, beta, state, key, momentum=0.9):
        self.gamma, self.beta = gamma, beta
        self.momentum = momentum
        self.state, self.key = state, key  # key: the K in running_mean{K}
        self.update_state = True
        self.input_shape = None
        self.batch_size = self.xc = self.xn = self.std = None
        self.dgamma = self.dbeta = None

    def forward(self, x, train_flg=True):
        self.input_shape = x.shape
        if x.ndim != 2:
            N = x.shape[0]
            x = x.reshape(N, -1)
        out = self.__forward(x, train_flg)
        return out.reshape(*self.input_shape)

    def __forward(self, x, train_flg):
        mk, vk = "running_mean" + self.key, "running_var" + self.key
        if mk not in self.state:
            D = x.shape[1]
            self.state[mk] = np.zeros(D)
            self.state[vk] = np.zeros(D)
        if train_flg:
            mu = x.mean(axis=0)
            xc = x - mu
            var = np.mean(xc**2, axis=0)
            std = np.sqrt(var + 10e-7)
            xn = xc / std
            self.batch_size = x.shape[0]
            self.xc, self.xn, self.std = xc, xn, std
            if self.update_state:
                m = self.momentum
                self.state[mk] = m * self.state[mk] + (1 - m) * mu
                self.state[vk] = m * self.state[vk] + (1 - m) * var
        else:
            xc = x - self.state[mk]
            xn = xc / np.sqrt(self.state[vk] + 10e-7)
        return self.gamma * xn + self.beta

    def backward(self, dout):
        if dout.ndim != 2:
            N = dout.shape[0]
            dout = dout.reshape(N, -1)
        dx = self.__backward(dout)
        return dx.reshape(*self.input_shape)

    def __backward(self, dout):
        dbeta = dout.sum(axis=0)
        dgamma = np.sum(self.xn * dout, axis=0)
        dxn = self.gamma * dout
        dxc = dxn / self.std
        dstd = -np.sum((dxn * self.xc) / (self.std * self.std), axis=0)
        dvar = 0.5 * dstd / self.std
        dxc += (2.0 / self.batch_size) * self.xc * dvar
        dmu = np.sum(dxc, axis=0)
        dx = dxc - dmu / self.batch_size
        self.dgamma, self.dbeta = dgamma, dbeta
        return dx


class Convolution:
    def __init__(self, W, b, stride=1, pad=0):
        self.W, self.b, self.stride, self.pad = W, b, stride, pad
        self.x = self.col = self.col_W = self.dW = self.db = None

    def forward(self, x):
        FN, C, FH, FW = self.W.shape
        N, C, H, W = x.shape
        out_h = 1 + (H + 2 * self.pad - FH) // self.stride
        out_w = 1 + (W + 2 * self.pad - FW) // self.stride
        col = im2col(x, FH, FW, self.stride, self.pad)
        col_W = self.W.reshape(FN, -1).T
        out = np.dot(col, col_W) + self.b
        out = out.reshape(N, out_h, out_w, -1).transpose(0, 3, 1, 2)
        self.x, self.col, self.col_W = x, col, col_W
        return out

    def backward(self, dout):
        FN, C, FH, FW = self.W.shape
        dout = dout.transpose(0, 2, 3, 1).reshape(-1, FN)
        self.db = np.sum(dout, axis=0)
        self.dW = np.dot(self.col.T, dout).transpose(1, 0).reshape(FN, C, FH, FW)
        dcol = np.dot(dout, self.col_W.T)
        return col2im(dcol, self.x.shape, FH, FW, self.stride, self.pad)


class Pooling:
    def __init__(self, pool_h, pool_w, stride=2, pad=0):
        self.pool_h, self.pool_w, self.stride, self.pad = pool_h, pool_w, stride, pad
        self.x = self.arg_max = None

    def forward(self, x):
        N, C, H, W = x.shape
        out_h = 1 + (H - self.pool_h) // self.stride
        out_w = 1 + (W - self.pool_w) // self.stride
        col = im2col(x, self.pool_h, self.pool_w, self.stride, self.pad)
        col = col.reshape(-1, self.pool_h * self.pool_w)
        arg_max = np.argmax(col, axis=1)
        out = np.max(col, axis=1)
        out = out.reshape(N, out_h, out_w, C).transpose(0, 3, 1, 2)
        self.x, self.arg_max = x, arg_max
        return out

    def backward(self, dout):
        dout = dout.transpose(0, 2, 3, 1)
        pool_size = self.pool_h * self.pool_w
        dmax = np.zeros((dout.size, pool_size))
        dmax[np.arange(self.arg_max.size), self.arg_max.flatten()] = dout.flatten()
        dmax = dmax.reshape(dout.shape + (pool_size,))
        dcol = dmax.reshape(dmax.shape[0] * dmax.shape[1] * dmax.shape[2], -1)
        return col2im(dcol, self.x.shape, self.pool_h, self.pool_w, self.stride, self.pad)


# ----------------------------------------------------------------------------------------------
# Nets
# ----------------------------------------------------------------------------------------------


def numerical_gradient_array(f, x, h=1e-4):
    """The book's common.gradient.numerical_gradient: central differences, element by element,
    perturbing `x` in place and restoring it."""
    grad = np.zeros_like(x)
    it = np.nditer(x, flags=["multi_index"], op_flags=["readwrite"])
    while not it.finished:
        idx = it.multi_index
        tmp_val = x[idx]
        x[idx] = float(tmp_val) + h
        fxh1 = f()
        x[idx] = tmp_val - h
        fxh2 = f()
        grad[idx] = (fxh1 - fxh2) / (2 * h)
        x[idx] = tmp_val
        it.iternext()
    return grad


class _Net:
    """Shared machinery: `self.layers` (OrderedDict name -> layer), `self.last_layer`,
    `_bind()` pointing layers at the current `self.params` arrays."""

    has_dropout = False
    weight_decay_lambda = 0.0
    state = None

    # -- hooks ---------------------------------------------------------------------------
    def _bind(self):
        raise NotImplementedError

    def _affine_weight_keys(self):
        return []

    def _prepare_x(self, x):
        return np.asarray(x, dtype=np.float64)

    # -- forward / loss --------------------------------------------------------------------
    def _forward(self, x, train_flg, seed=None, update_state=True):
        self._bind()
        x = self._prepare_x(x)
        for key, layer in self.layers.items():
            if isinstance(layer, Dropout):
                layer.seed = seed
                x = layer.forward(x, train_flg)
            elif isinstance(layer, BatchNormalization):
                layer.update_state = update_state
                x = layer.forward(x, train_flg)
            else:
                x = layer.forward(x)
        return x

    def _decay(self):
        if not self.weight_decay_lambda:
            return 0.0
        w = 0.0
        for k in self._affine_weight_keys():
            w += 0.5 * self.weight_decay_lambda * np.sum(self.params[k] ** 2)
        return w

    def _loss(self, x, t, train_flg, seed=None, update_state=True):
        y = self._forward(x, train_flg, seed, update_state)
        return self.last_layer.forward(y, np.asarray(t)) + self._decay()

    def _seed_if(self, train_flg):
        return _draw_seed() if (train_flg and self.has_dropout) else None

    # -- the book's methods ------------------------------------------------------------------
    def predict(self, x, train_flg=False):
        seed = self._seed_if(train_flg)
        return self._forward(x, train_flg, seed)

    def loss(self, x, t, train_flg=False):
        seed = self._seed_if(train_flg)
        return self._loss(x, t, train_flg, seed)

    def accuracy(self, x, t):
        y = self._forward(x, False)
        y = np.argmax(y, axis=1)
        t = np.asarray(t)
        if t.ndim != 1:
            t = np.argmax(t, axis=1)
        return np.sum(y == t) / float(np.asarray(x).shape[0])

    def _numeric_train_flg(self):
        return False

    def numerical_gradient(self, x, t, h=1e-4):
        train = self._numeric_train_flg()
        seed = self._seed_if(train)
        f = lambda: self._loss(x, t, train, seed, update_state=False)  # noqa: E731
        grads = OrderedDict()
        for key in self._gradient_order():
            grads[key] = numerical_gradient_array(f, self.params[key], h)
        return grads

    def _gradient_order(self):
        """The book's numerical_gradient fills its dict layer by layer: W1, b1, gamma1, beta1,
        W2, … (its params dict holds every W and b before the first gamma)."""
        def layer(key):
            digits = "".join(ch for ch in key if ch.isdigit())
            kind = key.rstrip("0123456789")
            return (int(digits), ["W", "b", "gamma", "beta"].index(kind))
        return sorted(self.params, key=layer)

    def gradient(self, x, t):
        seed = self._seed_if(True)
        self.last_loss = self._loss(x, t, True, seed, update_state=True)
        dout = self.last_layer.backward(1)
        for layer in reversed(list(self.layers.values())):
            dout = layer.backward(dout)
        return self._collect_grads()

    # -- pickles (the book's format) ---------------------------------------------------------
    def save_params(self, file_name="params.pkl"):
        import pickle

        params = {k: v for k, v in self.params.items()}
        with open(file_name, "wb") as f:
            pickle.dump(params, f)

    def load_params(self, file_name="params.pkl"):
        import pickle

        with open(file_name, "rb") as f:
            params = pickle.load(f)
        for key, val in params.items():
            self.params[key] = val


class TwoLayerNet(_Net):
    def __init__(self, input_size, hidden_size, output_size, weight_init_std=0.01):
        self.params = OrderedDict()
        self.params["W1"] = weight_init_std * np.random.randn(input_size, hidden_size)
        self.params["b1"] = np.zeros(hidden_size)
        self.params["W2"] = weight_init_std * np.random.randn(hidden_size, output_size)
        self.params["b2"] = np.zeros(output_size)
        self.layers = OrderedDict()
        self.layers["Affine1"] = Affine(self.params["W1"], self.params["b1"])
        self.layers["Relu1"] = Relu()
        self.layers["Affine2"] = Affine(self.params["W2"], self.params["b2"])
        self.last_layer = SoftmaxWithLoss()

    def _bind(self):
        for i in (1, 2):
            a = self.layers["Affine%d" % i]
            a.W, a.b = self.params["W%d" % i], self.params["b%d" % i]

    def _collect_grads(self):
        grads = OrderedDict()
        for i in (1, 2):
            grads["W%d" % i] = self.layers["Affine%d" % i].dW
            grads["b%d" % i] = self.layers["Affine%d" % i].db
        return grads


def _init_scale(weight_init_std, n_prev):
    scale = weight_init_std
    if str(weight_init_std).lower() in ("relu", "he"):
        scale = np.sqrt(2.0 / n_prev)
    elif str(weight_init_std).lower() in ("sigmoid", "xavier"):
        scale = np.sqrt(1.0 / n_prev)
    return scale


class MultiLayerNetExtend(_Net):
    def __init__(self, input_size, hidden_size_list, output_size, activation="relu",
                 weight_init_std="relu", weight_decay_lambda=0, use_dropout=False,
                 dropout_ration=0.5, use_batchnorm=False):
        if activation not in ("relu", "sigmoid"):
            raise ValueError("unknown activation %r" % (activation,))
        self.input_size = input_size
        self.output_size = output_size
        self.hidden_size_list = list(hidden_size_list)
        self.hidden_layer_num = len(hidden_size_list)
        self.use_dropout = use_dropout
        self.has_dropout = bool(use_dropout)
        self.weight_decay_lambda = weight_decay_lambda
        self.use_batchnorm = use_batchnorm
        self.params = OrderedDict()
        self.state = OrderedDict()

        all_size_list = [input_size] + self.hidden_size_list + [output_size]
        for idx in range(1, len(all_size_list)):
            scale = _init_scale(weight_init_std, all_size_list[idx - 1])
            self.params["W" + str(idx)] = scale * np.random.randn(all_size_list[idx - 1],
                                                                  all_size_list[idx])
            self.params["b" + str(idx)] = np.zeros(all_size_list[idx])

        act = {"sigmoid": Sigmoid, "relu": Relu}[activation]
        self.layers = OrderedDict()
        for idx in range(1, self.hidden_layer_num + 1):
            self.layers["Affine" + str(idx)] = Affine(None, None)
            if self.use_batchnorm:
                self.params["gamma" + str(idx)] = np.ones(hidden_size_list[idx - 1])
                self.params["beta" + str(idx)] = np.zeros(hidden_size_list[idx - 1])
                self.state["running_mean" + str(idx)] = np.zeros(hidden_size_list[idx - 1])
                self.state["running_var" + str(idx)] = np.zeros(hidden_size_list[idx - 1])
                self.layers["BatchNorm" + str(idx)] = BatchNormalization(
                    None, None, self.state, str(idx))
            self.layers["Activation_function" + str(idx)] = act()
            if self.use_dropout:
                self.layers["Dropout" + str(idx)] = Dropout(dropout_ration)
        idx = self.hidden_layer_num + 1
        self.layers["Affine" + str(idx)] = Affine(None, None)
        self.last_layer = SoftmaxWithLoss()

    def _bind(self):
        for key, layer in self.layers.items():
            if key.startswith("Affine"):
                i = key[len("Affine"):]
                layer.W, layer.b = self.params["W" + i], self.params["b" + i]
            elif key.startswith("BatchNorm"):
                i = key[len("BatchNorm"):]
                layer.gamma, layer.beta = self.params["gamma" + i], self.params["beta" + i]
                layer.state = self.state

    def _affine_weight_keys(self):
        return ["W%d" % i for i in range(1, self.hidden_layer_num + 2)]

    def _numeric_train_flg(self):
        return True

    def _collect_grads(self):
        grads = OrderedDict()
        for idx in range(1, self.hidden_layer_num + 2):
            a = self.layers["Affine" + str(idx)]
            grads["W" + str(idx)] = a.dW + self.weight_decay_lambda * self.params["W" + str(idx)]
            grads["b" + str(idx)] = a.db
            if self.use_batchnorm and idx != self.hidden_layer_num + 1:
                bn = self.layers["BatchNorm" + str(idx)]
                grads["gamma" + str(idx)] = bn.dgamma
                grads["beta" + str(idx)] = bn.dbeta
        return grads


class MultiLayerNet(MultiLayerNetExtend):
    def __init__(self, input_size, hidden_size_list, output_size, activation="relu",
                 weight_init_std="relu", weight_decay_lambda=0):
        super().__init__(input_size, hidden_size_list, output_size, activation,
                         weight_init_std, weight_decay_lambda)
        self.state = None

    def _numeric_train_flg(self):
        return False


class SimpleConvNet(_Net):
    def __init__(self, input_dim=(1, 28, 28),
                 conv_param={"filter_num": 30, "filter_size": 5, "pad": 0, "stride": 1},
                 hidden_size=100, output_size=10, weight_init_std=0.01):
        filter_num = conv_param["filter_num"]
        filter_size = conv_param["filter_size"]
        filter_pad = conv_param["pad"]
        filter_stride = conv_param["stride"]
        input_size = input_dim[1]
        conv_output_size = (input_size - filter_size + 2 * filter_pad) / filter_stride + 1
        pool_output_size = int(filter_num * (conv_output_size / 2) * (conv_output_size / 2))
        self.input_dim = tuple(input_dim)
        self.conv_stride, self.conv_pad = filter_stride, filter_pad

        self.params = OrderedDict()
        self.params["W1"] = weight_init_std * np.random.randn(filter_num, input_dim[0],
                                                              filter_size, filter_size)
        self.params["b1"] = np.zeros(filter_num)
        self.params["W2"] = weight_init_std * np.random.randn(pool_output_size, hidden_size)
        self.params["b2"] = np.zeros(hidden_size)
        self.params["W3"] = weight_init_std * np.random.randn(hidden_size, output_size)
        self.params["b3"] = np.zeros(output_size)

        self.layers = OrderedDict()
        self.layers["Conv1"] = Convolution(None, None, filter_stride, filter_pad)
        self.layers["Relu1"] = Relu()
        self.layers["Pool1"] = Pooling(pool_h=2, pool_w=2, stride=2)
        self.layers["Affine1"] = Affine(None, None)
        self.layers["Relu2"] = Relu()
        self.layers["Affine2"] = Affine(None, None)
        self.last_layer = SoftmaxWithLoss()

    def _prepare_x(self, x):
        x = np.asarray(x, dtype=np.float64)
        return x.reshape((x.shape[0],) + self.input_dim)

    def _bind(self):
        c = self.layers["Conv1"]
        c.W, c.b = self.params["W1"], self.params["b1"]
        for i, key in ((2, "Affine1"), (3, "Affine2")):
            self.layers[key].W = self.params["W%d" % i]
            self.layers[key].b = self.params["b%d" % i]

    def _collect_grads(self):
        grads = OrderedDict()
        grads["W1"], grads["b1"] = self.layers["Conv1"].dW, self.layers["Conv1"].db
        grads["W2"], grads["b2"] = self.layers["Affine1"].dW, self.layers["Affine1"].db
        grads["W3"], grads["b3"] = self.layers["Affine2"].dW, self.layers["Affine2"].db
        return grads


# ----------------------------------------------------------------------------------------------
# Optimizers (the book's common/optimizer.py)
# ----------------------------------------------------------------------------------------------


class SGD:
    def __init__(self, lr=0.01):
        self.lr = lr

    def update(self, params, grads):
        for key in params.keys():
            params[key] -= self.lr * grads[key]


class Momentum:
    def __init__(self, lr=0.01, momentum=0.9):
        self.lr, self.momentum, self.v = lr, momentum, None

    def update(self, params, grads):
        if self.v is None:
            self.v = {k: np.zeros_like(v) for k, v in params.items()}
        for key in params.keys():
            self.v[key] = self.momentum * self.v[key] - self.lr * grads[key]
            params[key] += self.v[key]


class Nesterov:
    def __init__(self, lr=0.01, momentum=0.9):
        self.lr, self.momentum, self.v = lr, momentum, None

    def update(self, params, grads):
        if self.v is None:
            self.v = {k: np.zeros_like(v) for k, v in params.items()}
        for key in params.keys():
            self.v[key] *= self.momentum
            self.v[key] -= self.lr * grads[key]
            params[key] += self.momentum * self.momentum * self.v[key]
            params[key] -= (1 + self.momentum) * self.lr * grads[key]


class AdaGrad:
    def __init__(self, lr=0.01):
        self.lr, self.h = lr, None

    def update(self, params, grads):
        if self.h is None:
            self.h = {k: np.zeros_like(v) for k, v in params.items()}
        for key in params.keys():
            self.h[key] += grads[key] * grads[key]
            params[key] -= self.lr * grads[key] / (np.sqrt(self.h[key]) + 1e-7)


class RMSprop:
    def __init__(self, lr=0.01, decay_rate=0.99):
        self.lr, self.decay_rate, self.h = lr, decay_rate, None

    def update(self, params, grads):
        if self.h is None:
            self.h = {k: np.zeros_like(v) for k, v in params.items()}
        for key in params.keys():
            self.h[key] *= self.decay_rate
            self.h[key] += (1 - self.decay_rate) * grads[key] * grads[key]
            params[key] -= self.lr * grads[key] / (np.sqrt(self.h[key]) + 1e-7)


class Adam:
    def __init__(self, lr=0.001, beta1=0.9, beta2=0.999):
        self.lr, self.beta1, self.beta2 = lr, beta1, beta2
        self.iter, self.m, self.v = 0, None, None

    def update(self, params, grads):
        if self.m is None:
            self.m = {k: np.zeros_like(v) for k, v in params.items()}
            self.v = {k: np.zeros_like(v) for k, v in params.items()}
        self.iter += 1
        lr_t = self.lr * np.sqrt(1.0 - self.beta2**self.iter) / (1.0 - self.beta1**self.iter)
        for key in params.keys():
            self.m[key] += (1 - self.beta1) * (grads[key] - self.m[key])
            self.v[key] += (1 - self.beta2) * (grads[key] ** 2 - self.v[key])
            params[key] -= lr_t * self.m[key] / (np.sqrt(self.v[key]) + 1e-7)


OPTIMIZERS = {"sgd": SGD, "momentum": Momentum, "nesterov": Nesterov, "adagrad": AdaGrad,
              "rmsprop": RMSprop, "adam": Adam}


def make_optimizer(name, optimizer_param=None):
    try:
        cls = OPTIMIZERS[name.lower()]
    except KeyError:
        raise ValueError("unknown optimizer %r" % (name,)) from None
    return cls(**(optimizer_param or {}))


def full_batch_train(network, x_train, t_train, x_test, t_test, epochs, optimizer="SGD",
                     optimizer_param=None, evaluate_sample_num_per_epoch=None):
    """wgrad's Trainer semantics with mini_batch_size = len(x_train): one step per epoch on the
    whole set. Returns (train_loss_list, train_acc_list, test_acc_list); updates
    network.params in place."""
    opt = make_optimizer(optimizer, optimizer_param if optimizer_param is not None
                         else {"lr": 0.01})
    losses, train_acc, test_acc = [], [], []
    n = evaluate_sample_num_per_epoch
    for _ in range(epochs):
        grads = network.gradient(x_train, t_train)
        # the batch's training-mode loss before the update: the gradient's own forward
        losses.append(network.last_loss)
        opt.update(network.params, grads)
        xs, ts = (x_train, t_train) if n is None else (x_train[:n], t_train[:n])
        xt, tt = (x_test, t_test) if n is None else (x_test[:n], t_test[:n])
        train_acc.append(network.accuracy(xs, ts))
        test_acc.append(network.accuracy(xt, tt))
    return losses, train_acc, test_acc


# ----------------------------------------------------------------------------------------------
# MNIST (IDX, gzip), as the book's dataset.mnist.load_mnist but float64
# ----------------------------------------------------------------------------------------------

MNIST_DIR = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                          "..", "..", "src", "data", "mnist-10k"))


def read_idx(path):
    with gzip.open(path, "rb") as f:
        data = f.read()
    magic = int.from_bytes(data[0:4], "big")
    ndim = magic & 0xFF
    dims = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    arr = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    return arr.reshape(dims).copy()


def load_mnist(normalize=True, flatten=True, one_hot_label=False, directory=MNIST_DIR):
    def imgs(name):
        x = read_idx(os.path.join(directory, name))
        x = x.reshape(x.shape[0], 1, 28, 28)
        if normalize:
            x = x.astype(np.float64) / 255.0
        if flatten:
            x = x.reshape(x.shape[0], -1)
        return x

    def labels(name):
        t = read_idx(os.path.join(directory, name)).astype(np.int64)
        if one_hot_label:
            oh = np.zeros((t.size, 10))
            oh[np.arange(t.size), t] = 1
            return oh
        return t

    return ((imgs("train-images-idx3-ubyte.gz"), labels("train-labels-idx1-ubyte.gz")),
            (imgs("t10k-images-idx3-ubyte.gz"), labels("t10k-labels-idx1-ubyte.gz")))
