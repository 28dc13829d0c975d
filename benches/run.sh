#!/usr/bin/env bash
# Measures what docs/benchmarks.md reports, then writes the page from the measurements:
#
#     bash benches/run.sh                      # on an idle machine
#     WGRAD_BENCH_NOTE="shared with a compile" bash benches/run.sh
#
# Each run of wgrad writes its --json report into benches/results/; machine.json records the
# commit, date, CPU, adapters (driver and Mesa version) and the note. benches/report.py turns
# them into docs/benchmarks.md: the page is never edited by hand.
set -euo pipefail
cd "$(dirname "$0")/.."
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp}"

cargo build --release --bin wgrad
wgrad=target/release/wgrad
out=benches/results
mkdir -p "$out"

python3 - "$wgrad" "${WGRAD_BENCH_NOTE:-}" >"$out/machine.json" <<'PY'
import json, platform, subprocess, sys, datetime
wgrad, note = sys.argv[1], sys.argv[2]
def run(*cmd):
    try:
        return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip()
    except Exception:
        return "unknown"
cpu = "unknown"
try:
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
except OSError:
    cpu = platform.processor() or "unknown"
# The results and the page are rewritten by this run: only other changes make the tree dirty
# (the redirect above has already emptied machine.json).
status = run("git", "status", "--porcelain", "--untracked-files=no", "--", ".",
             ":!benches/results", ":!docs/benchmarks.md")
dirty = status not in ("", "unknown")
json.dump({
    "commit": run("git", "rev-parse", "--short", "HEAD") + ("+dirty" if dirty else ""),
    "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    "cpu": cpu,
    "cores": len(__import__("os").sched_getaffinity(0)),
    "rustc": run("rustc", "--version"),
    "wgrad": run(wgrad, "--version"),
    "devices": json.loads(run(wgrad, "devices", "--json")),
    "note": note,
}, sys.stdout, indent=1)
PY

# Analytic against numerical gradients: the book's TwoLayerNet (784-50-10), batch 100.
"$wgrad" bench --hidden 50 --batch 100 --budget 10 --repeats 2 --json >"$out/bench-twolayernet.json"
# SimpleConvNet, the book's ch07 check size: batch 3, f64.
"$wgrad" bench --model simple-conv --batch 3 --precision f64 --variants incremental \
    --budget 30 --repeats 1 --json >"$out/bench-simpleconv.json"
# Training throughput: the bare MLP recipe and the book's TwoLayerNet, 2 epochs each.
"$wgrad" train --epochs 2 --json >"$out/train-default-mlp.json"
"$wgrad" train --hidden 50 --init 0.01 --optimizer sgd --lr 0.1 --epochs 2 --json \
    >"$out/train-twolayernet.json"

# The Python front against the book's NumPy loop, where the package is installed
# (python3 -m venv .venv && .venv/bin/pip install ./python).
python=${WGRAD_PYTHON:-.venv/bin/python}
if "$python" -c 'import wgrad' 2>/dev/null; then
    "$python" benches/python_book.py >"$out/python-book.json"
else
    echo "run.sh: no wgrad package for $python: the page leaves out the Python section" >&2
    rm -f "$out/python-book.json"
fi

python3 benches/report.py
