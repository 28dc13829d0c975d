#!/usr/bin/env python3
"""wgrad's training samples/s beside the book's NumPy and PyTorch CPU's, on the same nets.

Each net trains at batch 100 on the bundled data (src/data/mnist-10k): wgrad through
`wgrad bench train --json` (the trainer's own clock, after its untimed warm-up epoch); the
book's way in NumPy (its layer classes, from python/tests/book_numpy.py, float64 as the book
computes, a batch drawn with np.random.choice each step); PyTorch on the CPU (float32,
torch.set_num_threads(2), a batch drawn with torch.randint each step, PyTorch's own
cross_entropy). The peers time the same number of steps after a warm-up of as many steps as
wgrad's warm-up epoch. NumPy and PyTorch are optional: a missing one is
said and left out.

Prints a Markdown table (and the ratios wgrad/NumPy and wgrad/PyTorch per net) and writes the
figures with the machine they were measured on to --out (benches/results/peers.json), which
benches/report.py turns into docs/benchmarks.md's "against the peers" table. Run it through
benches/peers.sh, which builds wgrad first.
"""

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
from benchutil import NCPU, _busy_seconds, wait_quiet  # noqa: E402

BATCH = 100

# name, what, wgrad's flags, the NumPy net and optimizer, the PyTorch net and optimizer.
NETS = [
    {
        "name": "twolayernet",
        "label": "784-50-10 ReLU, SGD lr 0.1",
        "wgrad": ["--hidden", "50", "--init", "0.01", "--optimizer", "sgd", "--lr", "0.1"],
    },
    {
        "name": "mlp-100-100",
        "label": "784-100-100-10 ReLU, momentum 0.9 lr 0.01",
        "wgrad": ["--hidden", "100,100", "--optimizer", "momentum", "--lr", "0.01",
                  "--momentum", "0.9"],
    },
    {
        "name": "train-default",
        "label": "784-256-128-10 ReLU + BatchNorm, momentum 0.9 lr 0.1 (bare `wgrad train`)",
        "wgrad": [],
    },
    {
        "name": "simple-conv",
        "label": "SimpleConvNet, Adam lr 0.001",
        "wgrad": ["--model", "simple-conv", "--optimizer", "adam", "--lr", "0.001"],
    },
]


def numpy_net(name):
    """The book's net and optimizer for `name` (its classes, float64)."""
    import book_numpy as book

    if name == "twolayernet":
        return book.TwoLayerNet(784, 50, 10, weight_init_std=0.01), book.SGD(lr=0.1)
    if name == "mlp-100-100":
        return book.MultiLayerNet(784, [100, 100], 10), book.Momentum(lr=0.01, momentum=0.9)
    if name == "train-default":
        net = book.MultiLayerNetExtend(784, [256, 128], 10, use_batchnorm=True)
        return net, book.Momentum(lr=0.1, momentum=0.9)
    if name == "simple-conv":
        return book.SimpleConvNet(), book.Adam(lr=0.001)
    raise ValueError(name)


def torch_net(name, torch):
    nn = torch.nn
    if name == "twolayernet":
        net = nn.Sequential(nn.Linear(784, 50), nn.ReLU(), nn.Linear(50, 10))
        return net, torch.optim.SGD(net.parameters(), lr=0.1)
    if name == "mlp-100-100":
        net = nn.Sequential(nn.Linear(784, 100), nn.ReLU(), nn.Linear(100, 100), nn.ReLU(),
                            nn.Linear(100, 10))
        return net, torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    if name == "train-default":
        net = nn.Sequential(nn.Linear(784, 256), nn.BatchNorm1d(256), nn.ReLU(),
                            nn.Linear(256, 128), nn.BatchNorm1d(128), nn.ReLU(),
                            nn.Linear(128, 10))
        return net, torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    if name == "simple-conv":
        net = nn.Sequential(nn.Conv2d(1, 30, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                            nn.Linear(30 * 12 * 12, 100), nn.ReLU(), nn.Linear(100, 10))
        return net, torch.optim.Adam(net.parameters(), lr=0.001)
    raise ValueError(name)


class Measure:
    """Wall time of a block and the share of the CPUs that other processes took meanwhile
    (0: the machine was otherwise idle); children (a wgrad run) count as ours."""

    def __enter__(self):
        t = os.times()
        self.own0 = t.user + t.system + t.children_user + t.children_system
        self.b0, self.t0 = _busy_seconds(), time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.t0
        t = os.times()
        own = t.user + t.system + t.children_user + t.children_system - self.own0
        others = (_busy_seconds() - self.b0) - own
        self.others_cpu_frac = round(max(0.0, others) / (self.seconds * NCPU), 3)


def timed_steps(step, warmup, steps, quiet_wait):
    """`warmup` untimed steps, then `steps` timed ones: samples/s and how busy the machine was."""
    for _ in range(warmup):
        step()
    wait_quiet(max_wait=quiet_wait)
    with Measure() as m:
        for _ in range(steps):
            step()
    return {"steps": steps, "warmup_steps": warmup, "seconds": m.seconds,
            "samples_per_second": steps * BATCH / m.seconds,
            "others_cpu_frac": m.others_cpu_frac}


def run_numpy(name, data, warmup, steps, quiet_wait):
    import numpy as np

    np.random.seed(0)
    net, opt = numpy_net(name)
    x, t = data
    train_size = x.shape[0]

    def step():  # the book's training loop, ch05 train_neuralnet.py
        mask = np.random.choice(train_size, BATCH)
        grads = net.gradient(x[mask], t[mask])
        opt.update(net.params, grads)

    return timed_steps(step, warmup, steps, quiet_wait)


def run_torch(name, data, warmup, steps, quiet_wait):
    import torch

    torch.manual_seed(0)
    net, opt = torch_net(name, torch)
    net.train()
    x, t = data
    if name == "simple-conv":
        x = x.reshape(-1, 1, 28, 28)
    gen = torch.Generator().manual_seed(1)
    loss_fn = torch.nn.functional.cross_entropy

    def step():
        idx = torch.randint(0, x.shape[0], (BATCH,), generator=gen)
        loss = loss_fn(net(x[idx]), t[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return timed_steps(step, warmup, steps, quiet_wait)


def run_wgrad(wgrad, net, steps, quiet_wait, driver=()):
    """wgrad's figures for `net`; `driver` prefixes the command (benches/with-mesa25.sh picks
    the lavapipe it runs on)."""
    wait_quiet(max_wait=quiet_wait)
    cmd = [*driver, wgrad, "bench", "train", *net["wgrad"], "--batch-size", str(BATCH),
           "--steps", str(steps), "--json"]
    with Measure() as m:
        run = subprocess.run(cmd, capture_output=True, text=True)
    if run.returncode != 0:
        sys.exit(f"peers.py: {' '.join(cmd)} failed:\n{run.stderr}")
    report = json.loads(run.stdout)
    report["command"] = " ".join(["wgrad", *cmd[len(driver) + 1:]])
    report["others_cpu_frac"] = m.others_cpu_frac
    return report


def best_of(repeats, measure):
    """The run of the most samples/s of `repeats`, with every run's samples/s and the share of
    the CPUs other processes took during it."""
    runs = [measure() for _ in range(repeats)]
    best = dict(max(runs, key=lambda r: r["samples_per_second"]))
    best["runs"] = [[round(r["samples_per_second"], 1), r["others_cpu_frac"]] for r in runs]
    return best


def peers_found(skip):
    """Which peers this Python has: {"numpy": version or None, "torch": version or None}."""
    found = {"numpy": None, "torch": None}
    if "numpy" not in skip:
        try:
            import numpy

            found["numpy"] = numpy.__version__
        except ImportError:
            pass
    if "torch" not in skip:
        try:
            import torch

            found["torch"] = torch.__version__
        except ImportError:
            pass
    return found


def load_data(found):
    """The bundled training images as the peers want them: NumPy float64 (the book's), torch
    float32."""
    data = {}
    if found["numpy"]:
        sys.path.insert(0, os.path.join(ROOT, "python", "tests"))
        import book_numpy

        (x, t), _ = book_numpy.load_mnist()
        data["numpy"] = (x, t)
    if found["torch"]:
        import gzip

        import torch

        def idx(name, header):
            with gzip.open(os.path.join(ROOT, "src", "data", "mnist-10k", name), "rb") as f:
                raw = bytearray(f.read())
            return torch.frombuffer(raw, dtype=torch.uint8, offset=header)

        x = idx("train-images-idx3-ubyte.gz", 16).reshape(-1, 784).float() / 255.0
        t = idx("train-labels-idx1-ubyte.gz", 8).long()
        data["torch"] = (x, t)
    return data


def command_output(*cmd):
    try:
        return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def machine(wgrad, found, note):
    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f
                       if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    # This run rewrites only its results and the page: other changes make the tree dirty.
    status = command_output("git", "-C", ROOT, "status", "--porcelain",
                            "--untracked-files=no", "--", ".", ":!benches/results",
                            ":!docs/benchmarks.md")
    dirty = status not in ("", "unknown")
    out = {
        "commit": command_output("git", "-C", ROOT, "rev-parse", "--short", "HEAD")
        + ("+dirty" if dirty else ""),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu,
        "cores": len(os.sched_getaffinity(0)),
        "wgrad": command_output(wgrad, "--version"),
        "python": platform.python_version(),
        "numpy": found["numpy"],
        "torch": found["torch"],
        "note": note,
        "blas_threads_env": {k: os.environ.get(k) for k in
                             ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")},
    }
    if found["torch"]:
        import torch

        out["torch_threads"] = torch.get_num_threads()
    return out


def ratio(a, b):
    return a / b if a and b else None


def table(result):
    """The Markdown table: samples/s of each peer, and wgrad's ratio to each."""
    lines = [
        "| net | wgrad | NumPy (book) | PyTorch CPU | wgrad/NumPy | wgrad/PyTorch |",
        "|---|---:|---:|---:|---:|---:|",
    ]

    def rate(r):
        return f'{r["samples_per_second"]:,.0f}' if r else "–"

    def times(x):
        return f"{x:.3f}" if x else "–"

    for n in result["nets"]:
        w, np_, th = n["wgrad"], n.get("numpy"), n.get("torch")
        lines.append(
            f'| {n["label"]} | {rate(w)} | {rate(np_)} | {rate(th)} | '
            f'{times(n["wgrad_over_numpy"])} | {times(n["wgrad_over_torch"])} |')
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--wgrad", default=os.path.join(ROOT, "target", "release", "wgrad"))
    ap.add_argument("--steps", type=int, default=300, help="timed steps of each run")
    ap.add_argument("--nets", default=",".join(n["name"] for n in NETS),
                    help="comma-separated, of " + ", ".join(n["name"] for n in NETS))
    ap.add_argument("--skip", default="", help="peers to leave out: numpy, torch")
    ap.add_argument("--repeats", type=int, default=1,
                    help="runs of each peer on each net; the fastest counts")
    ap.add_argument("--quiet-wait", type=float, default=10.0,
                    help="seconds to wait at most for a quiet CPU before each measurement")
    ap.add_argument("--out", default=os.path.join(HERE, "results", "peers.json"))
    ap.add_argument("--mesa25", action="store_true",
                    help="run wgrad under both the distro's lavapipe and Mesa 25.0.7's "
                         "(benches/with-mesa25.sh; install it with benches/mesa25.sh)")
    args = ap.parse_args()
    if args.steps < 1 or args.repeats < 1:
        sys.exit("peers.py: --steps and --repeats must be at least 1")
    names = args.nets.split(",")
    unknown = [n for n in names if n not in {net["name"] for net in NETS}]
    if unknown:
        sys.exit(f"peers.py: unknown net {', '.join(unknown)}: use {ap.get_default('nets')}")

    found = peers_found(args.skip.split(","))
    for peer, version in found.items():
        said = f"{peer} {version}" if version else f"{peer}: not found, left out"
        print(f"peers.py: {said} ({sys.executable})", file=sys.stderr)
    if found["torch"]:
        import torch

        torch.set_num_threads(2)
    data = load_data(found)
    result = {"machine": machine(args.wgrad, found, os.environ.get("WGRAD_BENCH_NOTE", "")),
              "batch": BATCH, "steps": args.steps, "repeats": args.repeats, "nets": []}
    for net in (n for n in NETS if n["name"] in names):
        print(f"peers.py: {net['label']}", file=sys.stderr)
        entry = {"name": net["name"], "label": net["label"]}
        with_mesa25 = os.path.join(HERE, "with-mesa25.sh")
        distro = (with_mesa25, "--distro") if args.mesa25 else ()
        entry["wgrad"] = best_of(args.repeats, lambda: run_wgrad(
            args.wgrad, net, args.steps, args.quiet_wait, distro))
        if args.mesa25:
            entry["wgrad_mesa25"] = best_of(args.repeats, lambda: run_wgrad(
                args.wgrad, net, args.steps, args.quiet_wait, (with_mesa25,)))
        # The peers warm up for as many steps as wgrad's warm-up epoch.
        warmup = entry["wgrad"]["warmup_steps"]
        for peer, run in (("numpy", run_numpy), ("torch", run_torch)):
            if found[peer]:
                entry[peer] = best_of(args.repeats, lambda: run(
                    net["name"], data[peer], warmup, args.steps, args.quiet_wait))
        rate = entry["wgrad"]["samples_per_second"]
        for peer in ("numpy", "torch"):
            other = entry.get(peer)
            entry[f"wgrad_over_{peer}"] = ratio(rate, other and other["samples_per_second"])
            if args.mesa25:
                rate25 = entry["wgrad_mesa25"]["samples_per_second"]
                entry[f"wgrad_mesa25_over_{peer}"] = ratio(
                    rate25, other and other["samples_per_second"])
        result["nets"].append(entry)
    if result["nets"]:
        result["machine"]["adapter"] = result["nets"][0]["wgrad"]["adapter"]
        if args.mesa25:
            result["machine"]["adapter_mesa25"] = result["nets"][0]["wgrad_mesa25"]["adapter"]

    m = result["machine"]
    adapter = m.get("adapter", {})
    print(f"Training samples/s, batch {BATCH}, {args.steps} timed steps after a warm-up, best "
          f"of {args.repeats}, bundled data. Commit {m['commit']}, {m['cpu']} ({m['cores']} cores), adapter "
          f"{adapter.get('name')} ({adapter.get('driver_info')}); NumPy {m['numpy'] or '–'} "
          f"(float64, the book's classes), PyTorch {m['torch'] or '–'} "
          f"(float32, {m.get('torch_threads', '–')} threads).\n")
    print(table(result))
    print()
    for n in result["nets"]:
        parts = [f"{peer} {n[f'wgrad_over_{peer}']:.3f}" for peer in ("numpy", "torch")
                 if n[f"wgrad_over_{peer}"]]
        print(f"{n['name']}: wgrad/" + (", wgrad/".join(parts) if parts else "no peer"))
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
        f.write("\n")
    print(f"peers.py: wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
