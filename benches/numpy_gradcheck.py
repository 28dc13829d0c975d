#!/usr/bin/env python3
"""The book's numerical gradient, timed on the nets `wgrad gradcheck` checks: for every
parameter, perturb it in place by ±h, run the whole forward pass (NumPy, f64), restore it, as
"Deep Learning from Scratch" ch. 4's numerical_gradient does. Its times are the baseline that
README's gradient-check table sets beside wgrad's.

    python3 benches/numpy_gradcheck.py                       # every net of the table
    python3 benches/numpy_gradcheck.py "affine100,bn,relu,affine100,bn,relu,affine10"

A net is a layer list of affine<N>, relu, bn (BatchNorm, batch statistics), ln (LayerNorm) and
dropout<P> (a fixed mask, as in a check), over 784 inputs, batch 3 (like `wgrad gradcheck`'s
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
]
EPS = 1e-5
H = 1e-5


def build(spec, d_in, rng, n):
    """Layers as (kind, params) with their parameter arrays, which the loop perturbs in place."""
    layers, width = [], d_in
    for word in spec.split(","):
        if word.startswith("affine"):
            units = int(word[6:])
            w = rng.normal(0.0, 0.01, (width, units))
            layers.append(("affine", [w, np.zeros(units)]))
            width = units
        elif word in ("bn", "ln"):
            layers.append((word, [np.ones(width), np.zeros(width)]))
        elif word == "relu":
            layers.append(("relu", []))
        elif word.startswith("dropout"):
            p = float(word[7:])
            mask = (rng.random((n, width)) >= p) / (1.0 - p)
            layers.append(("dropout", [mask]))
        else:
            raise SystemExit(f"unknown layer {word}")
    return layers


def loss(layers, x, t):
    a = x
    for kind, p in layers:
        if kind == "affine":
            a = a @ p[0] + p[1]
        elif kind == "relu":
            a = np.maximum(a, 0.0)
        elif kind == "bn":
            mu = a.mean(axis=0)
            var = a.var(axis=0)
            a = p[0] * (a - mu) / np.sqrt(var + EPS) + p[1]
        elif kind == "ln":
            mu = a.mean(axis=1, keepdims=True)
            var = a.var(axis=1, keepdims=True)
            a = p[0] * (a - mu) / np.sqrt(var + EPS) + p[1]
        elif kind == "dropout":
            a = a * p[0]
    z = a - a.max(axis=1, keepdims=True)
    log_sum = np.log(np.exp(z).sum(axis=1))
    return float(np.mean(log_sum - z[np.arange(len(t)), t]))


def numerical_gradient(layers, x, t):
    """The book's loop: each element moved by ±h in place, then put back."""
    grads, losses = [], 0
    for kind, params in layers:
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


def main():
    nets = sys.argv[1:] or NETS
    rng = np.random.default_rng(0)
    n = 3
    x = rng.random((n, 784))
    t = rng.integers(0, 10, n)
    for spec in nets:
        layers = build(spec, 784, rng, n)
        start = time.perf_counter()
        _, losses = numerical_gradient(layers, x, t)
        seconds = time.perf_counter() - start
        print(f"{spec}: {losses} perturbed losses in {seconds:.2f} s (NumPy {np.__version__})")


if __name__ == "__main__":
    main()
