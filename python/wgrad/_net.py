"""A net on the GPU whose parameters live in a dict of NumPy arrays.

Each call hands the native net the arrays the dict holds at that moment, so a user may change
them in place or replace them between calls, as the book's training loops do.
"""

from __future__ import annotations

import json
import pickle
import warnings
from typing import Dict, Optional

import numpy as np

from . import _native

_LABEL_DTYPE = np.uint32


def _precision(requested: Optional[str]) -> str:
    """f64 where the adapter has SHADER_F64, else f32 with a warning (or the one asked for)."""
    if requested is not None:
        return requested
    if json.loads(_native.adapter()).get("f64", False):
        return "f64"
    warnings.warn(
        "this adapter has no SHADER_F64: wgrad computes in float32, so figures differ from "
        "NumPy's float64 in the 7th digit; install a Vulkan driver with f64 (lavapipe has it)",
        RuntimeWarning,
        stacklevel=3,
    )
    return "f32"


class GpuNet:
    """A layer list on the GPU with NumPy parameters: the base of the book's classes and of
    :func:`wgrad.load`'s nets.

    ``params`` maps each tensor's name (W1, b1, ..., gamma1, beta1) to a float64 array;
    ``state`` maps BatchNorm's running statistics (running_mean1, running_var1, ...) likewise.
    """

    params: Dict[str, np.ndarray]
    state: Dict[str, np.ndarray]

    def __init__(
        self,
        layers: str,
        image: tuple,
        weight_decay: float = 0.0,
        conventions: str = "book",
        precision: Optional[str] = None,
    ) -> None:
        self._net = _native.Net(layers, tuple(image), float(weight_decay), conventions, _precision(precision))
        self._image = tuple(image)
        self._layout = [(name, tuple(shape)) for name, shape in self._net.layout]
        # Filled by the constructor that knows the values, in its own order (the book's classes
        # add gamma and beta after every W and b, as the book does).
        self.params = {}
        self.state = {name: np.zeros(n) for name, n in self._net.state_layout}

    # ----- what the book's classes add to this is their constructor and their names -----

    @property
    def layers_spec(self) -> str:
        """The net as wgrad's layer list (``affine50,relu,affine10``)."""
        return self._net.layers

    @property
    def precision(self) -> str:
        """'f64', or 'f32' on an adapter without SHADER_F64 (or when asked for)."""
        return self._net.precision

    @property
    def has_dropout(self) -> bool:
        return "dropout" in self._net.layers

    def predict(self, x, train_flg: bool = False) -> np.ndarray:
        """Class scores (the last affine layer's output, before the softmax), [N, classes]."""
        xs = self._inputs(x)
        labels = np.full(xs.shape[0], np.iinfo(_LABEL_DTYPE).max, dtype=_LABEL_DTYPE)
        logits, _, _ = self._run(xs, labels, bool(train_flg), backward=False)
        return logits.reshape(xs.shape[0], -1)

    def loss(self, x, t, train_flg: bool = False) -> float:
        """The mean cross-entropy over the batch, plus the L2 term 0.5·λ·Σ‖W‖²."""
        _, loss, _ = self._run(*self._batch(x, t), bool(train_flg), backward=False)
        return float(loss)

    def accuracy(self, x, t) -> float:
        """The fraction of samples whose highest score is their class (inference mode)."""
        xs, labels = self._batch(x, t)
        y = np.argmax(self.predict(xs), axis=1)
        return float(np.sum(y == labels)) / float(xs.shape[0])

    def gradient(self, x, t) -> Dict[str, np.ndarray]:
        """Backprop: the gradient of ``loss(x, t, train_flg=True)`` per parameter. BatchNorm's
        running statistics are updated once, as the book's forward pass does."""
        _, _, grads = self._run(*self._batch(x, t), True, backward=True)
        return self._unflatten(grads)

    def numerical_gradient(self, x, t, h: float = 1e-4) -> Dict[str, np.ndarray]:
        """Central differences (L(θ + h·eᵢ) − L(θ − h·eᵢ)) / 2h of the training-mode loss for
        every parameter, all evaluated on the GPU, each against its own copy of the parameters.

        Unlike the book's loop, one dropout mask holds for every perturbed loss (the book draws
        a fresh one for each, which makes its numerical gradient noise), and BatchNorm's running
        statistics are left as they are (the book's loop updates them twice per parameter).
        """
        xs, labels = self._batch(x, t)
        grads = self._net.numerical_gradient(
            self._flat_params(), self._state(), xs.ravel(), labels, float(h), self._seed(True)
        )
        return self._unflatten(grads)

    def save_params(self, file_name: str = "params.pkl") -> None:
        """Pickles ``params`` as the book does (a dict of arrays), written atomically."""
        import os
        import tempfile

        folder = os.path.dirname(os.path.abspath(file_name))
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".params-", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                pickle.dump({k: np.asarray(v) for k, v in self.params.items()}, f)
            os.replace(tmp, file_name)
        except BaseException:
            os.unlink(tmp)
            raise

    def load_params(self, file_name: str = "params.pkl") -> None:
        """Loads a pickled dict of arrays (the book's ``params.pkl`` among them). Every tensor
        is checked before any is taken: a missing key or a wrong shape raises ``ValueError``
        and leaves the net as it was."""
        with open(file_name, "rb") as f:
            loaded = pickle.load(f)
        if not isinstance(loaded, dict):
            raise ValueError(f"{file_name} holds a {type(loaded).__name__}, not a dict of arrays")
        taken = {}
        for name, shape in self._layout:
            if name not in loaded:
                raise ValueError(
                    f"{file_name} has no '{name}' (the net needs {', '.join(n for n, _ in self._layout)})"
                )
            value = np.asarray(loaded[name], dtype=np.float64)
            if value.shape != shape:
                raise ValueError(
                    f"{file_name}: '{name}' has shape {value.shape}, the net needs {shape}"
                )
            taken[name] = value.copy()
        self.params.update(taken)

    # ----- plumbing -----

    def _run(self, xs: np.ndarray, labels: np.ndarray, train: bool, backward: bool):
        """One pass on the GPU: (logits, loss, gradient or None). A training-mode pass takes
        its dropout seed from NumPy and keeps BatchNorm's updated running statistics."""
        logits, loss, grads, state = self._net.run(
            self._flat_params(), self._state(), xs.ravel(), labels, train, backward, self._seed(train)
        )
        if train:
            self._take_state(state)
        return logits, loss, grads

    def _seed(self, train: bool) -> int:
        """One dropout seed per training-mode pass, from NumPy's global generator, so that
        ``np.random.seed`` fixes the masks; nets without dropout draw nothing."""
        if train and self.has_dropout:
            return int(np.random.randint(0, 2**32, dtype=np.uint64))
        return 0

    def _flat_params(self) -> np.ndarray:
        parts = []
        for name, shape in self._layout:
            if name not in self.params:
                raise ValueError(f"params has no '{name}': the net needs every one of its tensors")
            value = np.asarray(self.params[name], dtype=np.float64)
            if value.shape != shape:
                raise ValueError(f"params['{name}'] has shape {value.shape}, the net needs {shape}")
            parts.append(value.ravel())
        return np.concatenate(parts)

    def _unflatten(self, flat: np.ndarray) -> Dict[str, np.ndarray]:
        out, at = {}, 0
        for name, shape in self._layout:
            n = int(np.prod(shape))
            out[name] = flat[at : at + n].reshape(shape).copy()
            at += n
        return out

    def _state(self) -> Dict[str, np.ndarray]:
        return {k: np.ascontiguousarray(v, dtype=np.float64).ravel() for k, v in self.state.items()}

    def _take_state(self, state: Dict[str, np.ndarray]) -> None:
        for name, values in state.items():
            self.state[name] = np.asarray(values)

    def _inputs(self, x) -> np.ndarray:
        xs = np.asarray(x, dtype=np.float64)
        per_sample = int(np.prod(self._image))
        if xs.ndim == 1 and xs.size == per_sample:
            xs = xs.reshape(1, -1)
        if xs.ndim < 2 or int(np.prod(xs.shape[1:])) != per_sample:
            raise ValueError(
                f"x has shape {xs.shape}; the net takes [N, {per_sample}] or [N, "
                f"{', '.join(map(str, self._image))}]"
            )
        return np.ascontiguousarray(xs.reshape(xs.shape[0], per_sample))

    def _batch(self, x, t):
        xs = self._inputs(x)
        labels = _labels(t, xs.shape[0], self._net.classes)
        return xs, labels


def _labels(t, n: int, classes: int) -> np.ndarray:
    """Class indices from labels [N] or one-hot rows [N, C], as the book's
    ``cross_entropy_error`` takes them."""
    ts = np.asarray(t)
    if ts.ndim == 2:
        if ts.shape != (n, classes):
            raise ValueError(f"t has shape {ts.shape}; one-hot targets for this x are ({n}, {classes})")
        ts = np.argmax(ts, axis=1)
    elif ts.ndim == 0:
        ts = ts.reshape(1)
    if ts.shape != (n,):
        raise ValueError(f"t has shape {ts.shape}; give ({n},) labels or ({n}, {classes}) one-hot rows")
    if not np.issubdtype(ts.dtype, np.integer):
        if not np.all(np.equal(np.mod(ts, 1), 0)):
            raise ValueError("t holds fractions: give class indices or one-hot rows")
    if ts.size and (ts.min() < 0 or ts.max() >= classes):
        raise ValueError(f"t holds the label {int(ts.max() if ts.max() >= classes else ts.min())}, outside 0..{classes - 1}")
    return np.ascontiguousarray(ts, dtype=_LABEL_DTYPE)
