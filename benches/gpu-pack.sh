#!/usr/bin/env bash
# Assembles what benches/gpu.sh needs on a GPU machine with no network (docs/platform.md,
# "NVIDIA H200"): a folder and a tarball holding
#
#     wgrad                       the release binary built here (x86-64; the bundled MNIST is
#                                 compiled in), debug info stripped to keep the pack small
#     libvulkan1_<ver>_amd64.deb  Debian's Vulkan loader (`apt-get download libvulkan1`), which
#                                 that machine lacks; gpu.sh unpacks it there
#     gpu.sh                      the measurement script; prints one JSON object
#     MANIFEST                    commit, build date and sha256 of each file
#
#     bash benches/gpu-pack.sh                  # -> target/gpu-pack/ and target/gpu-pack.tar.gz
#     bash benches/gpu-pack.sh /tmp/pack        # -> /tmp/pack/ and /tmp/pack.tar.gz
#
# There: `tar xzf gpu-pack.tar.gz && bash gpu-pack/gpu.sh >gpu.json`.
# GPU_PACK_DEB=PATH uses that libvulkan1 .deb instead of downloading one (no apt, no network);
# GPU_PACK_NO_BUILD=1 packs the binary already in target/release without running cargo.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
target=${CARGO_TARGET_DIR:-$repo/target}
out=${1:-$target/gpu-pack}
mkdir -p "$out"
out=$(cd "$out" && pwd)

say() { echo "gpu-pack.sh: $*" >&2; }

if [[ ${GPU_PACK_NO_BUILD:-0} != 1 ]]; then
    say "cargo build --release --bin wgrad"
    cargo build --release --bin wgrad >&2
fi
bin=$target/release/wgrad
[[ -x $bin ]] || { say "no $bin"; exit 1; }
[[ $(uname -m) == x86_64 ]] || say "warning: built on $(uname -m); the GPU machine is x86-64"

rm -f "$out"/wgrad "$out"/libvulkan1_*.deb "$out"/gpu.sh "$out"/MANIFEST
rm -rf "$out"/.vulkan-loader
if command -v objcopy >/dev/null 2>&1; then
    # The line tables of the release profile are most of the binary's size.
    objcopy --strip-debug "$bin" "$out/wgrad"
else
    cp "$bin" "$out/wgrad"
fi
chmod +x "$out/wgrad"

if [[ -n ${GPU_PACK_DEB:-} ]]; then
    cp "$GPU_PACK_DEB" "$out/"
else
    say "apt-get download libvulkan1"
    # As root apt downloads unsandboxed into a folder _apt cannot write: only a notice.
    (cd "$out" && apt-get download -q libvulkan1 2>&1 | grep -v 'Download is performed unsandboxed' >&2 || true)
fi
deb=$(ls "$out"/libvulkan1_*_amd64.deb 2>/dev/null | head -n 1 || true)
[[ -n $deb ]] || { say "no libvulkan1 .deb (apt-get download failed; try GPU_PACK_DEB=PATH)"; exit 1; }

cp benches/gpu.sh "$out/gpu.sh"
chmod +x "$out/gpu.sh"

commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
dirty=$(git status --porcelain --untracked-files=no 2>/dev/null || true)
{
    echo "wgrad GPU pack, made by benches/gpu-pack.sh"
    echo "commit: $commit${dirty:++dirty}"
    echo "binary: $("$out/wgrad" --version 2>/dev/null || echo '?')"
    echo "made: $(date -u +%Y-%m-%dT%H:%MZ) on $(uname -n) ($(uname -m))"
    echo "run: bash gpu.sh >gpu.json   (GPU_SH_QUICK=1 for a smoke test)"
    echo
    (cd "$out" && sha256sum wgrad "$(basename "$deb")" gpu.sh)
} >"$out/MANIFEST"

tarball=$out.tar.gz
tar -czf "$tarball" -C "$(dirname "$out")" \
    "$(basename "$out")/wgrad" "$(basename "$out")/$(basename "$deb")" \
    "$(basename "$out")/gpu.sh" "$(basename "$out")/MANIFEST"
say "packed $out and $tarball ($(du -h "$tarball" | cut -f1))"
cat "$out/MANIFEST" >&2
echo "$tarball"
