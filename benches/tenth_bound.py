#!/usr/bin/env python3
"""The one-tenth bound, measured: `wgrad gradcheck` on a layer list against one tenth of the
book's NumPy loop (benches/numpy_gradcheck.py) on the same net, for the layer lists the test
suite checks gradients of, each on MNIST's central S×S window (`--crop S`, `@S` there), batch 3,
f64. The wgrad figure is the check's numerical part as it reports it (`seconds_numeric`: building
the perturbed-loss engine, its pipelines included, and every perturbed loss), beside the
building alone (`seconds_numeric_setup`); each side takes its best of three runs.

    cargo build --release && python3 benches/tenth_bound.py [--wgrad PATH] [NET@S …]
"""
import argparse
import json
import os
import subprocess
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import numpy_gradcheck as book  # noqa: E402

# The gradient-checked layer lists of tests/convnets.rs, tests/numgrad.rs and
# tests/net_reference.rs that fit a 1×S×S image and end in MNIST's ten classes, and README's
# table's three convnets.
NETS = [
    "conv10x3,relu,maxpool2,affine10,relu,affine10@10",
    "conv4x3s2p1,sigmoid,avgpool2,affine10@10",
    "conv3x5p2,relu,maxpool3s2,conv2x2,relu,affine7,sigmoid,affine10@10",
    "conv4x3,bn,relu,maxpool2,affine10,bn,sigmoid,dropout0.2,affine10@8",
    "conv5x3p1,bn,relu,dropout0.25,avgpool3s2,affine10@8",
    "conv4x3,ln,relu,maxpool2,affine10@10",
    "conv5x3p1,ln,sigmoid,dropout0.2,avgpool3s2,affine10@10",
    "conv3x3p1,ln,tanh,conv4x3,ln,relu,maxpool2,affine10@10",
    "conv5x3p1,relu,maxpool3s2,conv2x2,bn,relu,affine10@10",
    "conv3x3s2p1,sigmoid,avgpool2,affine7,relu,dropout0.5,affine10@10",
    "affine12,bn,relu,affine9,bn,relu,affine10@8",
    "affine33,ln,tanh,dropout0.2,affine7,ln,relu,affine10@8",
    "conv8x3p1,bn,relu,maxpool2,affine10@14",
    "conv4x3,ln,relu,maxpool2,affine10@14",
    "conv3x3p1,relu,conv4x3s2p1,sigmoid,maxpool2,affine10@14",
]
RUNS = 3


def numpy_seconds(net):
    rng = np.random.default_rng(0)
    t = rng.integers(0, 10, 3)
    runs = [book.timed(net, rng, t) for _ in range(RUNS)]
    return min(seconds for seconds, _ in runs), runs[0][1]


def wgrad_seconds(binary, net):
    layers_text, _, side = net.partition("@")
    command = [binary, "gradcheck", "--layers", layers_text, "--crop", side, "--json"]
    best, setup, losses = float("inf"), 0.0, 0
    for _ in range(RUNS):
        out = subprocess.run(command, capture_output=True, text=True, check=False)
        report = json.loads(out.stdout)
        if report["seconds_numeric"] < best:
            best, setup = report["seconds_numeric"], report["seconds_numeric_setup"]
        losses = report["perturbed_losses"]
    return best, setup, losses


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--wgrad", default="target/release/wgrad", help="the wgrad binary")
    parser.add_argument("nets", nargs="*", help="layer lists with their crop, LIST@S")
    args = parser.parse_args()
    binary, nets = args.wgrad, args.nets or NETS
    print("| net | perturbed losses | wgrad (of it setup) | NumPy loop | a tenth of it | NumPy / wgrad |")
    print("|---|---|---|---|---|---|")
    for net in nets:
        ours, setup, losses = wgrad_seconds(binary, net)
        theirs, their_losses = numpy_seconds(net)
        tenth = theirs / 10
        flag = ""
        if ours > tenth:
            # Whether building the check's engine alone, before any perturbed loss, passes the bound.
            flag = " (under 10×: setup alone over a tenth)" if setup > tenth else " (under 10×)"
        same = "" if losses == their_losses else f" (NumPy: {their_losses:,})"
        print(
            f"| `{net}` | {losses:,}{same} | {ours:.3f} s ({setup:.3f} s) | {theirs:.2f} s | "
            f"{tenth:.3f} s | {theirs / ours:.1f}×{flag} |"
        )

if __name__ == "__main__":
    main()
