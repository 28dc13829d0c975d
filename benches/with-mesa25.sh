#!/usr/bin/env bash
# Runs a command under lavapipe from Mesa 25.0.7 (installed by benches/mesa25.sh), or, with
# --distro, under the distro's Mesa 22.3.6 with any Mesa 25 driver choice taken out of the
# environment, so a bench can compare the two drivers with one line each:
#
#     benches/with-mesa25.sh target/release/wgrad devices
#     benches/with-mesa25.sh --distro target/release/wgrad devices
#     for d in --distro ""; do benches/with-mesa25.sh $d target/release/wgrad bench --json; done
#
# The Mesa 25 folder is $MESA25_DIR (default /work/mesa25); install it first with
# `bash benches/mesa25.sh "$MESA25_DIR"`. This script only sets variables and execs: it never
# touches apt or the network.
set -euo pipefail
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp}"

dir=${MESA25_DIR:-/work/mesa25}
icd=$dir/lvp_icd.json
lib=$dir/root/usr/lib/x86_64-linux-gnu

if [[ ${1:-} == --distro ]]; then
    shift
    (($#)) || { echo "usage: $0 [--distro] CMD [ARGS...]" >&2; exit 2; }
    # The distro's driver is what the loader finds with no override.
    unset VK_ICD_FILENAMES VK_DRIVER_FILES VK_ADD_DRIVER_FILES
    # Mesa 25's libdrm must not shadow the system's either.
    path=:${LD_LIBRARY_PATH:-}:
    path=${path//:$lib:/:}
    path=${path#:} path=${path%:}
    if [[ -n $path ]]; then export LD_LIBRARY_PATH=$path; else unset LD_LIBRARY_PATH; fi
    exec "$@"
fi

(($#)) || { echo "usage: $0 [--distro] CMD [ARGS...]" >&2; exit 2; }
if [[ ! -f $icd || ! -f $lib/libvulkan_lvp.so ]]; then
    echo "with-mesa25.sh: no Mesa 25 lavapipe in $dir: run bash $(dirname "$0")/mesa25.sh $dir" \
        "(or set MESA25_DIR)" >&2
    exit 127
fi
# VK_DRIVER_FILES is the newer name (loader 1.3.234+); the distro's loader reads both, but an
# older VK_DRIVER_FILES left in the environment would win over VK_ICD_FILENAMES.
export VK_ICD_FILENAMES=$icd
export VK_DRIVER_FILES=$icd
unset VK_ADD_DRIVER_FILES
export LD_LIBRARY_PATH=$lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
exec "$@"
