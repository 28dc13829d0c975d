"""This build's training samples/s against an earlier build's, net by net, under the distro's
lavapipe and Mesa 25.0.7's, runs interleaved so that both see the same machine:

    python3 benches/versus.py --base /path/to/old/wgrad --base-commit 5cd4952
    bash benches/versus.sh 5cd4952            # builds that commit in a scratch worktree first

Each run is `wgrad train ... --epochs 2 --json` (the trainer's own clock, evaluation excluded),
which every build since the first has; the best of --repeats counts. The figures go to
benches/results/versus.json, and benches/report.py puts them on docs/benchmarks.md.
"""

import argparse
import datetime
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

# The nets of issue #25's table, as `wgrad train` flags.
NETS = [
    ("784-50-10 ReLU, SGD lr 0.1", ["--hidden", "50", "--init", "0.01", "--optimizer", "sgd",
                                    "--lr", "0.1"]),
    ("784-100-100-10 ReLU, momentum lr 0.01", ["--hidden", "100,100", "--optimizer", "momentum",
                                               "--lr", "0.01"]),
    ("bare `wgrad train` (784-256-128-10, BatchNorm)", []),
    ("SimpleConvNet, Adam", ["--model", "simple-conv"]),
]


def train(binary, flags, driver):
    cmd = [*driver, binary, "train", *flags, "--epochs", "2", "--json"]
    run = subprocess.run(cmd, capture_output=True, text=True)
    if run.returncode != 0:
        sys.exit(f"versus.py: {' '.join(cmd)} failed:\n{run.stderr}")
    return json.loads(run.stdout)["samples_per_second"]


def driver_info(binary, driver):
    run = subprocess.run([*driver, binary, "devices", "--json"], capture_output=True, text=True)
    try:
        return json.loads(run.stdout)[0].get("driver_info", "?")
    except (ValueError, IndexError, AttributeError):
        return "?"


def cpu_model():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", required=True, help="the earlier build's wgrad binary")
    ap.add_argument("--base-commit", required=True)
    ap.add_argument("--wgrad", default=os.path.join(ROOT, "target", "release", "wgrad"))
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", default=os.path.join(HERE, "results", "versus.json"))
    args = ap.parse_args()
    with_mesa25 = os.path.join(HERE, "with-mesa25.sh")
    drivers = [("distro", (with_mesa25, "--distro"))]
    if os.path.exists(os.path.join(os.environ.get("MESA25_DIR", "/work/mesa25"), "lvp_icd.json")):
        drivers.append(("mesa25", (with_mesa25,)))
    version = subprocess.run([args.wgrad, "--version"], capture_output=True, text=True).stdout
    result = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu_model(),
        "cores": len(os.sched_getaffinity(0)),
        "wgrad": version.strip(),
        "base_commit": args.base_commit,
        "drivers": {name: driver_info(args.wgrad, d) for name, d in drivers},
        "repeats": args.repeats,
        "note": os.environ.get("WGRAD_BENCH_NOTE", ""),
        "nets": [],
    }
    for label, flags in NETS:
        entry = {"label": label, "flags": " ".join(flags)}
        for name, driver in drivers:
            this, base = [], []
            for _ in range(args.repeats):
                # Interleaved, so that a busy moment falls on both.
                base.append(train(args.base, flags, driver))
                this.append(train(args.wgrad, flags, driver))
            entry[name] = {"this": max(this), "base": max(base), "ratio": max(this) / max(base),
                           "runs_this": this, "runs_base": base}
            print(f"{label} [{name}]: {max(this):,.0f} vs {max(base):,.0f} samples/s, "
                  f"{max(this) / max(base):.2f}x", file=sys.stderr)
        result["nets"].append(entry)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
        f.write("\n")
    print(f"versus.py: wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
