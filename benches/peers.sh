#!/usr/bin/env bash
# wgrad's training samples/s beside the book's NumPy and PyTorch CPU's, same nets, batch 100,
# bundled data; then docs/benchmarks.md is rewritten with the "against the peers" table:
#
#     bash benches/peers.sh                                  # the Python that has NumPy
#     WGRAD_PEERS_PYTHON=venv/bin/python bash benches/peers.sh   # one with numpy (and torch)
#     WGRAD_BENCH_NOTE="shared with a compile" bash benches/peers.sh --steps 200
#
# Arguments go to benches/peers.py (--steps N, --repeats R, --nets a,b, --skip torch,
# --quiet-wait S). NumPy and PyTorch are optional: the script says which it found and leaves
# the others out (a Python with both: python3 -m venv .venv && .venv/bin/pip install numpy
# torch). The figures go to benches/results/peers.json with the machine they were measured on.
# Where Mesa 25.0.7's lavapipe is installed (bash benches/mesa25.sh DIR, MESA25_DIR=DIR), wgrad
# runs under it too, in the same run.
set -euo pipefail
cd "$(dirname "$0")/.."
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp}"

cargo build --release --bin wgrad
wgrad="${CARGO_TARGET_DIR:-target}/release/wgrad"

# The Python to run the peers in: the one named, else the first that has NumPy.
python="${WGRAD_PEERS_PYTHON:-}"
if [ -z "$python" ]; then
    python=python3
    for candidate in .venv/bin/python python3; do
        if "$candidate" -c 'import numpy' 2>/dev/null; then
            python=$candidate
            break
        fi
    done
fi

# Mesa 25.0.7's lavapipe too, where benches/mesa25.sh has installed it.
mesa25=()
if [ -f "${MESA25_DIR:-/work/mesa25}/lvp_icd.json" ]; then
    mesa25=(--mesa25)
fi
"$python" benches/peers.py --wgrad "$wgrad" --out benches/results/peers.json "${mesa25[@]}" "$@"
python3 benches/report.py
