#!/usr/bin/env bash
# This build's training samples/s against COMMIT's, under both lavapipes, by turns:
#
#     bash benches/versus.sh 5cd4952
#
# Builds COMMIT in a scratch worktree (target/versus/COMMIT), then runs benches/versus.py and
# rewrites docs/benchmarks.md. Mesa 25.0.7 is used where benches/mesa25.sh installed it.
set -euo pipefail
cd "$(dirname "$0")/.."
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp}"
commit=${1:?usage: bash benches/versus.sh COMMIT}

cargo build --release --bin wgrad
tree=target/versus/$commit
if [ ! -x "$tree/target/release/wgrad" ]; then
    git worktree add --force --detach "$tree" "$commit" >/dev/null
    (cd "$tree" && cargo build --release --bin wgrad)
fi
python3 benches/versus.py --base "$tree/target/release/wgrad" --base-commit "$commit"
python3 benches/report.py
