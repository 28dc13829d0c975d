"""wgrad: neural nets on any GPU through wgpu, with every analytic gradient checkable against
numerical gradients evaluated in parallel on the GPU.

- :mod:`wgrad.book`: the nets of "Deep Learning from Scratch" with the book's interface.
- :func:`gradcheck`: a net's backprop against central differences, per tensor.
- :func:`check_layer`: the same for a layer of your own, written in WGSL.
- :func:`load`: a checkpoint written by ``wgrad train`` as a net with NumPy parameters.
- :func:`devices`: the adapters wgpu sees.

One GPU context serves the process; it is created on first use, on the best adapter (a GPU,
else Mesa's software Vulkan, lavapipe), or the one whose name contains ``$WGRAD_ADAPTER``.
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from . import _native
from ._net import GpuNet

__all__ = ["GpuNet", "book", "check_layer", "devices", "gradcheck", "load"]


def devices() -> List[Dict[str, Any]]:
    """Every adapter wgpu sees, best first: name, backend, device_type, driver, f64, …"""
    return json.loads(_native.devices())


def gradcheck(
    net: GpuNet,
    x,
    t,
    precision: str = "f64",
    h: Optional[float] = None,
    strategy: str = "incremental",
    params: Sequence[str] = (),
    directions: int = 0,
    seed: int = 42,
) -> Dict[str, Any]:
    """Checks ``net``'s backprop on the batch (x, t) against central differences of every
    parameter (or those named in ``params``), all evaluated on the GPU.

    Returns the report of ``wgrad gradcheck --json``: ``passed``, and per tensor in
    ``tensors`` its norm-wise and largest element-wise relative errors, kink crossings left out
    of the verdict, and the verdict. ``h`` defaults to 1e-5 in f64, 5e-3 in f32.
    """
    xs, labels = net._batch(x, t)
    report = net._net.gradcheck(
        net._flat_params(), xs.ravel(), labels, precision, h, strategy, list(params), int(directions), int(seed)
    )
    return json.loads(report)


def check_layer(
    wgsl,
    input_shape: Sequence[int],
    precision: str = "f64",
    batch: int = 3,
    classes: int = 5,
    seed: int = 42,
    h: Optional[float] = None,
) -> Dict[str, Any]:
    """Checks a custom WGSL layer (source text, or a path to a ``.wgsl`` file) on inputs of
    ``input_shape`` per sample (``[D]`` or ``[C, H, W]``): each declared tensor's gradient and
    the input gradient, numerical against analytic. Returns the report, as :func:`gradcheck`."""
    text = str(wgsl)
    if "\n" not in text and text.endswith(".wgsl"):
        if not os.path.isfile(text):
            raise ValueError(f"{text}: no such WGSL file; pass the layer's source text or an existing path")
        with open(text, encoding="utf-8") as f:
            source, name = f.read(), text
    else:
        source, name = text, "<layer>"
    report = _native.check_layer_source(
        source, name, [int(d) for d in input_shape], precision, int(batch), int(classes), int(seed), h
    )
    return json.loads(report)


def load(path: str, precision: Optional[str] = None) -> GpuNet:
    """A checkpoint written by ``wgrad train`` (or any safetensors file with wgrad's ``spec``
    metadata) as a net: ``params`` and ``state`` hold its tensors by name, and ``predict``,
    ``loss``, ``accuracy``, ``gradient`` and ``numerical_gradient`` work as the book's."""
    if not os.path.isfile(path):
        raise ValueError(f"{path}: no such checkpoint")
    layers, image, weight_decay, conventions, flat, state = _native.load_checkpoint(path)
    net = GpuNet(layers, image, weight_decay, conventions, precision)
    net.params.update(net._unflatten(np.asarray(flat)))
    net._take_state(state)
    return net


from . import book  # noqa: E402  (book imports the names above)

