#!/usr/bin/env python3
"""The book's numerical gradient, timed on the nets `wgrad gradcheck` checks: for every
parameter, perturb it in place by ±h, run the whole forward pass (NumPy, f64), restore it, as
"Deep Learning from Scratch" ch. 4's numerical_gradient does. Its times are the baseline that
README's gradient-check table sets beside wgrad's.

    python3 benches/numpy_gradcheck.py                       # every net of the table
    python3 benches/numpy_gradcheck.py "affine100,bn,relu,affine100,bn,relu,affine10"
    python3 benches/numpy_gradcheck.py "conv8x3p1,bn,relu,maxpool2,affine10@14"

A net is a layer list of conv<F>x<K>[s<S>][p<P>], maxpool<K>[s<S>], avgpool<K>[s<S>],
affine<N>, relu, sigmoid, tanh, bn (BatchNorm, batch statistics; per channel after a
convolution), ln (LayerNorm over each sample's features) and dropout<P> (a fixed mask, as in a
check), over 1×28×28 images (`@S`: S×S, as `--crop S`), batch 3 (like `wgrad gradcheck`'s
default); inputs and labels are random, which does not change the time.
"""
import sys
import time

import numpy as np

NETS = [
    "affine100,relu,affine100,relu,affine10",
    "affine100,bn,relu,affine100,bn,relu,affine10",
    "affine100,relu,dropout0.2,affine100,relu,dropout0.2,affine10",
    "affine256,bn,relu,affine128,bn,relu,affine10",
    "affine100,ln,relu,affine100,ln,relu,affine10",
    "conv8x3p1,bn,relu,maxpool2,affine10@14",
    "conv4x3,ln,relu,maxpool2,affine10@14",
    "conv3x3p1,relu,conv4x3s2p1,sigmoid,maxpool2,affine10@14",
]
EPS = 1e-5
H = 1e-5


def size_stride_pad(text, default_stride=None):
    """"3s2p1" -> (3, 2, 1), as wgrad's spec words read."""
    main, _, pad = text.partition("p")
    size, _, stride = main.partition("s")
    size = int(size)
    return size, int(stride) if stride else (default_stride or size), int(pad or 0)


def build(spec, shape, rng, n):
    """Layers as (kind, params, config) with their parameter arrays, which the loop perturbs in
    place; `shape` is one sample's (C, H, W)."""
    layers = []
    c, h, w = shape
    for word in spec.split(","):
        width = c * h * w
        if word.startswith("affine"):
            units = int(word[6:])
            wt = rng.normal(0.0, 0.01, (width, units))
            layers.append(("affine", [wt, np.zeros(units)], None))
            c, h, w = units, 1, 1
        elif word.startswith("conv"):
            filters, rest = word[4:].split("x")
            k, s, p = size_stride_pad(rest, default_stride=1)
            wt = rng.normal(0.0, 0.01, (int(filters), c, k, k))
            layers.append(("conv", [wt, np.zeros(int(filters))], (k, s, p)))
            c, h, w = int(filters), (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
        elif word.startswith(("maxpool", "avgpool")):
            k, s, _ = size_stride_pad(word[7:])
            layers.append((word[:7], [], (k, s)))
            h, w = (h - k) // s + 1, (w - k) // s + 1
        elif word == "bn":
            layers.append(("bn", [np.ones(c), np.zeros(c)], h * w > 1))
        elif word == "ln":
            layers.append(("ln", [np.ones(width), np.zeros(width)], None))
        elif word in ("relu", "sigmoid", "tanh"):
            layers.append((word, [], None))
        elif word.startswith("dropout"):
            p = float(word[7:])
            mask = (rng.random((n, c, h, w)) >= p) / (1.0 - p)
            layers.append(("dropout", [mask], None))
        else:
            raise SystemExit(f"unknown layer {word}")
    return layers


def conv(a, wt, b, k, s, p):
    """[N, C, H, W] * [F, C, K, K] -> [N, F, OH, OW] by im2col, as the book's Convolution."""
    n, c, h, w = a.shape
    a = np.pad(a, ((0, 0), (0, 0), (p, p), (p, p)))
    oh, ow = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
    cols = np.empty((n, c, k, k, oh, ow))
    for i in range(k):
        for j in range(k):
            cols[:, :, i, j] = a[:, :, i : i + s * oh : s, j : j + s * ow : s]
    cols = cols.transpose(0, 4, 5, 1, 2, 3).reshape(n * oh * ow, -1)
    out = cols @ wt.reshape(len(wt), -1).T + b
    return out.reshape(n, oh, ow, -1).transpose(0, 3, 1, 2)


def pool(a, k, s, reduce):
    n, c, h, w = a.shape
    oh, ow = (h - k) // s + 1, (w - k) // s + 1
    windows = np.empty((n, c, k * k, oh, ow))
    for i in range(k):
        for j in range(k):
            windows[:, :, i * k + j] = a[:, :, i : i + s * oh : s, j : j + s * ow : s]
    return reduce(windows, axis=2)


def loss(layers, x, t):
    a = x
    for kind, p, config in layers:
        if kind == "affine":
            a = a.reshape(len(a), -1) @ p[0] + p[1]
        elif kind == "conv":
            a = conv(a, p[0], p[1], *config)
        elif kind in ("maxpool", "avgpool"):
            a = pool(a, *config, np.max if kind == "maxpool" else np.mean)
        elif kind == "relu":
            a = np.maximum(a, 0.0)
        elif kind == "sigmoid":
            a = 1.0 / (1.0 + np.exp(-a))
        elif kind == "tanh":
            a = np.tanh(a)
        elif kind == "bn" and config:
            # After a convolution: per channel, over the batch and the image.
            mu = a.mean(axis=(0, 2, 3), keepdims=True)
            var = a.var(axis=(0, 2, 3), keepdims=True)
            a = p[0][:, None, None] * (a - mu) / np.sqrt(var + EPS) + p[1][:, None, None]
        elif kind == "bn":
            a = a.reshape(len(a), -1)
            mu = a.mean(axis=0)
            var = a.var(axis=0)
            a = p[0] * (a - mu) / np.sqrt(var + EPS) + p[1]
        elif kind == "ln":
            shape = a.shape
            a = a.reshape(len(a), -1)
            mu = a.mean(axis=1, keepdims=True)
            var = a.var(axis=1, keepdims=True)
            a = (p[0] * (a - mu) / np.sqrt(var + EPS) + p[1]).reshape(shape)
        elif kind == "dropout":
            a = a * p[0].reshape(a.shape)
    z = a - a.max(axis=1, keepdims=True)
    log_sum = np.log(np.exp(z).sum(axis=1))
    return float(np.mean(log_sum - z[np.arange(len(t)), t]))


def numerical_gradient(layers, x, t):
    """The book's loop: each element moved by ±h in place, then put back."""
    grads, losses = [], 0
    for kind, params, _ in layers:
        if kind == "dropout":
            continue
        for p in params:
            g = np.zeros_like(p)
            it = np.nditer(p, flags=["multi_index"])
            while not it.finished:
                i = it.multi_index
                keep = p[i]
                p[i] = keep + H
                up = loss(layers, x, t)
                p[i] = keep - H
                down = loss(layers, x, t)
                p[i] = keep
                g[i] = (up - down) / (2 * H)
                losses += 2
                it.iternext()
            grads.append(g)
    return grads, losses


def timed(spec, rng, t):
    """(seconds, perturbed losses) of the loop on net `spec` (`LAYERS@S`), batch len(t)."""
    layers_text, _, side = spec.partition("@")
    side = int(side or 28)
    x = rng.random((len(t), 1, side, side))
    layers = build(layers_text, (1, side, side), rng, len(t))
    start = time.perf_counter()
    _, losses = numerical_gradient(layers, x, t)
    return time.perf_counter() - start, losses


def main():
    nets = sys.argv[1:] or NETS
    rng = np.random.default_rng(0)
    t = rng.integers(0, 10, 3)
    for spec in nets:
        seconds, losses = timed(spec, rng, t)
        print(f"{spec}: {losses} perturbed losses in {seconds:.2f} s (NumPy {np.__version__})")


if __name__ == "__main__":
    main()
