#!/usr/bin/env bash
# Installs lavapipe from Mesa 25.0.7 (Debian's bookworm-backports) into a folder, beside the
# distro's Mesa 22.3.6, which stays the default: nothing but an apt source is added system-wide.
# The 25.0 figures in the benchmarks were measured with this driver; this makes them reproducible.
#
#     bash benches/mesa25.sh /work/mesa25          # prints the two variables to export
#     eval "$(bash benches/mesa25.sh /work/mesa25)"
#     benches/with-mesa25.sh target/release/wgrad devices
#
# Idempotent: a folder that already holds this version is left as it is, without touching apt or
# the network. The steps are docs' platform.md, "lavapipe from Mesa 25.0.7 beside the distro's":
# add bookworm-backports to apt's sources (root, once), apt-get update, `apt-get download` the
# three .debs into the folder, `dpkg-deb -x` them into <folder>/root, and write
# <folder>/lvp_icd.json with library_path made absolute.
#
# Progress goes to stderr; stdout is only the `export` lines. Versions can be overridden with
# MESA25_VERSION and MESA25_LIBDRM_VERSION (the pinned ones are what the figures used).
set -euo pipefail

mesa_version=${MESA25_VERSION:-25.0.7-2~bpo12+1}
drm_version=${MESA25_LIBDRM_VERSION:-2.4.123-1~bpo12+1}
sources=/etc/apt/sources.list.d/bookworm-backports.sources

if [[ $# -ne 1 || $1 == -h || $1 == --help ]]; then
    sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//' >&2
    echo "usage: $0 FOLDER" >&2
    exit 2
fi
mkdir -p "$1"
dir=$(cd "$1" && pwd)
lib=$dir/root/usr/lib/x86_64-linux-gnu
icd=$dir/lvp_icd.json
stamp=$dir/.installed

say() { echo "mesa25.sh: $*" >&2; }

print_env() {
    echo "export VK_ICD_FILENAMES=$icd"
    echo "export LD_LIBRARY_PATH=$lib"
}

want="mesa-vulkan-drivers=$mesa_version libdrm2=$drm_version libdrm-amdgpu1=$drm_version"
if [[ -f $stamp && $(cat "$stamp") == "$want" && -f $icd && -f $lib/libvulkan_lvp.so ]]; then
    say "$dir already holds $want"
    print_env
    exit 0
fi

if [[ $(dpkg --print-architecture) != amd64 ]]; then
    say "these are the amd64 packages; this machine is $(dpkg --print-architecture)"
    exit 1
fi

# apt must know the backports versions: add the suite if no source names it, then update.
# (Not `| grep -q`: under pipefail, grep's early exit fails apt-cache with SIGPIPE.)
known() { [[ $(apt-cache policy mesa-vulkan-drivers 2>/dev/null) == *"$mesa_version"* ]]; }
if ! known; then
    if ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
        if [[ $(id -u) -ne 0 ]]; then
            say "bookworm-backports is not in apt's sources; run once as root, or add $sources"
            exit 1
        fi
        say "adding bookworm-backports to apt's sources ($sources)"
        # Backports have priority 100: nothing installed is upgraded from them, and
        # the distro's Mesa stays the candidate.
        cat >"$sources" <<'EOF'
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
    fi
    say "apt-get update"
    if [[ $(id -u) -eq 0 ]]; then apt-get update -qq >&2; else sudo apt-get update -qq >&2; fi
    known || { say "apt knows no mesa-vulkan-drivers $mesa_version"; exit 1; }
fi

# Download into a scratch folder, then move: an interrupted run leaves no half .deb behind.
debs=$dir/debs
mkdir -p "$debs"
tmp=$(mktemp -d "$dir/.download.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
need=()
for pkg in $want; do
    name=${pkg%%=*} ver=${pkg#*=}
    # apt-get download writes the epoch-less version with ':' as %3a; these have no epoch.
    compgen -G "$debs/${name}_${ver}_amd64.deb" >/dev/null || need+=("$pkg")
done
if ((${#need[@]})); then
    say "apt-get download ${need[*]}"
    # _apt cannot write into root's folders; as root apt then downloads unsandboxed (a notice).
    (cd "$tmp" && apt-get download -q "${need[@]}" 2>&1 | grep -v 'Download is performed unsandboxed' >&2 || true)
    for pkg in "${need[@]}"; do
        name=${pkg%%=*} ver=${pkg#*=}
        f=$tmp/${name}_${ver}_amd64.deb
        [[ -f $f ]] || { say "download of $pkg failed"; exit 1; }
        mv "$f" "$debs/"
    done
fi

say "extracting into $dir/root"
rm -rf "$dir/root"
mkdir -p "$dir/root"
for pkg in $want; do
    name=${pkg%%=*} ver=${pkg#*=}
    dpkg-deb -x "$debs/${name}_${ver}_amd64.deb" "$dir/root"
done
[[ -f $lib/libvulkan_lvp.so ]] || { say "no libvulkan_lvp.so in $lib"; exit 1; }

# The packaged manifest names the library by file name only, for the system's search path.
src=$dir/root/usr/share/vulkan/icd.d/lvp_icd.json
[[ -f $src ]] || src=$(ls "$dir"/root/usr/share/vulkan/icd.d/lvp_icd*.json 2>/dev/null | head -n1 || true)
[[ -f $src ]] || { say "no lvp_icd*.json in the package"; exit 1; }
sed -E "s#(\"library_path\"[[:space:]]*:[[:space:]]*\")[^\"]*\"#\\1$lib/libvulkan_lvp.so\"#" \
    "$src" >"$icd.tmp"
grep -qF "\"$lib/libvulkan_lvp.so\"" "$icd.tmp" || { say "could not rewrite library_path in $src"; exit 1; }
mv "$icd.tmp" "$icd"
echo "$want" >"$stamp"
say "installed $want into $dir"
print_env
