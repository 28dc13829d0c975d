#!/usr/bin/env bash
# One GPU measurement run, self-contained, for a machine with no network: an NVIDIA H100/H200
# with the NVIDIA driver and its Vulkan ICD but no Vulkan loader (docs/platform.md, "NVIDIA
# H200"). benches/gpu-pack.sh assembles its folder on the development machine: this script, a
# release `wgrad` (x86-64, the bundled MNIST compiled in) and Debian's libvulkan1 .deb.
#
#     bash gpu.sh >gpu.json                    # on the GPU machine, from the unpacked folder
#     GPU_SH_QUICK=1 bash benches/gpu.sh       # a smoke test on lavapipe: tiny step counts
#
# Prints ONE JSON object on stdout, whatever fails; progress goes to stderr. Every figure is a
# separate command under `timeout`, and a failed or timed-out one becomes {"error": "..."} in
# its place, so one missing figure never loses the rest. The whole run stays under
# GPU_SH_BUDGET seconds (default 450, inside 8 minutes).
#
# Environment:
#   GPU_SH_QUICK=1      small step counts, repeats and budgets (for lavapipe)
#   GPU_SH_BUDGET=S     wall-clock budget for the whole run in seconds (default 450)
#   GPU_SH_LOGS=DIR     keep each command's stdout/stderr there (default: a temporary folder)
#   GPU_SH_LOADER=local unpack libvulkan1 into this folder (LD_LIBRARY_PATH) even when root;
#                       by default root unpacks it into / and runs ldconfig, as platform.md says
#   WGRAD=PATH          the wgrad binary (default: ./wgrad beside this script, else
#                       target/release/wgrad of the checkout it sits in)
#   VK_DRIVER_FILES     left as given; if unset and no NVIDIA adapter shows, the script retries
#                       with /usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json (GPU_SH_NVIDIA_ICD)
#
# Needs bash, coreutils (timeout, date) and dpkg, ar or python3 only to unpack the .deb.
# python3 or jq, where present, only check that each command's JSON parses before it is embedded.
set -uo pipefail
shopt -s extglob

start=$SECONDS
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
quick=${GPU_SH_QUICK:-0}
[[ $quick == 0 || -z $quick ]] && quick=0 || quick=1
budget=${GPU_SH_BUDGET:-450}
export XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-/tmp}
export NO_COLOR=1
logs=${GPU_SH_LOGS:-$(mktemp -d "${TMPDIR:-/tmp}/gpu-sh.XXXXXX")}
mkdir -p "$logs"

say() { echo "gpu.sh [$((SECONDS - start))s] $*" >&2; }

# ---- JSON helpers (plain bash: neither jq nor python3 may be there) ----------------------------

# A JSON string literal.
jstr() {
    local s=$1 out="" c i
    s=${s//\\/\\\\}
    s=${s//\"/\\\"}
    s=${s//$'\n'/\\n}
    s=${s//$'\r'/\\r}
    s=${s//$'\t'/\\t}
    # Any other control character is dropped.
    for ((i = 0; i < ${#s}; i++)); do
        c=${s:i:1}
        [[ $c < ' ' ]] && continue
        out+=$c
    done
    printf '"%s"' "$out"
}

# A JSON number, or null when $1 is not one.
jnum() {
    if [[ $1 =~ ^-?[0-9]+(\.[0-9]+)?([eE][-+]?[0-9]+)?$ ]]; then printf '%s' "$1"; else printf null; fi
}

# Whether file $1 holds exactly one JSON value. python3 or jq check it properly; without them,
# a loose check: an object or array whose braces and brackets balance.
is_json() {
    local f=$1
    if command -v python3 >/dev/null 2>&1; then
        python3 -c 'import json,sys; json.load(open(sys.argv[1]))' "$f" 2>/dev/null
    elif command -v jq >/dev/null 2>&1; then
        jq -e . "$f" >/dev/null 2>&1
    else
        local text
        text=$(tr -d '\n\r' <"$f")
        text=${text##+([[:space:]])}
        text=${text%%+([[:space:]])}
        [[ $text == \{*\} || $text == \[*\] ]] || return 1
        local opens=${text//[^\{\[]/} closes=${text//[^\}\]]/}
        ((${#opens} == ${#closes}))
    fi
}

# The first value of "KEY" in the JSON text $2, as JSON (a number, true, false, null or a
# string literal); nothing when the key is missing. Enough for wgrad's flat report fields.
jget() {
    local re m
    re="\"$1\"[[:space:]]*:[[:space:]]*(\"([^\"\\]|\\\\.)*\"|[^],}[:space:]]+)"
    if [[ $2 =~ $re ]]; then
        printf '%s' "${BASH_REMATCH[1]}"
    fi
}

# A short error message from a failed command: its exit status and stderr's last lines, without
# the lines every Mesa driver prints.
err_of() {
    local rc=$1 errf=$2 limit=$3 tail
    if ((rc == 124 || rc == 137)); then
        printf 'timed out after %ss' "$limit"
        return
    fi
    tail=$(grep -v -e 'XDG_RUNTIME_DIR' -e 'lavapipe is not a conformant' -e '^[[:space:]]*$' \
        "$errf" 2>/dev/null | tail -n 4 | tr '\n' ' ')
    tail=${tail% }
    ((${#tail} > 600)) && tail="${tail:0:600}…"
    printf 'exit %s: %s' "$rc" "${tail:-no message on stderr}"
}

# run NAME LIMIT CMD...: runs CMD under timeout (LIMIT, cut to what the budget leaves), stdout in
# $logs/NAME.out, stderr in $logs/NAME.err. Sets RUN_RC, RUN_SECONDS, RUN_ERROR (empty when the
# command succeeded and printed valid JSON if it was asked to: RUN_JSON=1).
run() {
    local name=$1 limit=$2
    shift 2
    local left=$((budget - (SECONDS - start) - 10))
    RUN_ERROR="" RUN_RC=0 RUN_SECONDS=null
    if ((left < 5)); then
        RUN_ERROR="skipped: the run's ${budget}s budget was spent"
        say "$name: $RUN_ERROR"
        return
    fi
    ((limit > left)) && limit=$left
    say "$name: $* (timeout ${limit}s)"
    local t0 t1
    t0=$(date +%s.%N)
    timeout -k 5 "$limit" "$@" >"$logs/$name.out" 2>"$logs/$name.err" </dev/null
    RUN_RC=$?
    t1=$(date +%s.%N)
    RUN_SECONDS=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }' 2>/dev/null || echo null)
    if ((RUN_RC != 0)); then
        RUN_ERROR=$(err_of "$RUN_RC" "$logs/$name.err" "$limit")
    elif [[ ${RUN_JSON:-0} == 1 ]] && ! is_json "$logs/$name.out"; then
        RUN_ERROR="output is not one JSON value: $(head -c 300 "$logs/$name.out" | tr '\n' ' ')"
    fi
    [[ -n $RUN_ERROR ]] && say "$name: $RUN_ERROR"
}

# ---- the binary ------------------------------------------------------------------------------

wgrad=${WGRAD:-}
if [[ -z $wgrad ]]; then
    for w in "$here/wgrad" "$here/../target/release/wgrad"; do
        [[ -x $w ]] && { wgrad=$w; break; }
    done
fi
# The output, piece by piece (each a `"key": value` member).
members=()
errors=0 # figures recorded as {"error": ...}
add() { members+=("$(jstr "$1"): $2"); }

add script '"benches/gpu.sh"'
add schema 1
add quick "$([[ $quick == 1 ]] && echo true || echo false)"
add started_utc "$(jstr "$(date -u +%Y-%m-%dT%H:%M:%SZ)")"
add logs "$(jstr "$logs")"

# ---- the host --------------------------------------------------------------------------------

cpu=$(grep -m1 '^model name' /proc/cpuinfo 2>/dev/null | cut -d: -f2- | sed 's/^ *//')
host="{\"hostname\": $(jstr "$(hostname 2>/dev/null || uname -n)"), \"arch\": $(jstr "$(uname -m)")"
host+=", \"cpu\": $(jstr "${cpu:-unknown}"), \"cores\": $(jnum "$(nproc 2>/dev/null)")"
if command -v nvidia-smi >/dev/null 2>&1; then
    smi=$(timeout 20 nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm \
        --format=csv,noheader 2>&1 | head -n 4)
    host+=", \"nvidia_smi\": $(jstr "$smi")"
fi
host+="}"
add host "$host"

# ---- the Vulkan loader -----------------------------------------------------------------------

has_loader() {
    local cache
    cache=$(ldconfig -p 2>/dev/null)
    [[ $cache == *"libvulkan.so.1 "* ]] && return 0
    local d
    for d in ${LD_LIBRARY_PATH//:/ } /usr/lib/x86_64-linux-gnu /usr/lib64 /usr/lib /usr/local/lib; do
        [[ -e $d/libvulkan.so.1 ]] && return 0
    done
    return 1
}

# unpack_deb DEB DEST: dpkg, else ar + tar, else python3 reading the ar archive.
unpack_deb() {
    local deb=$1 dest=$2
    mkdir -p "$dest"
    if command -v dpkg-deb >/dev/null 2>&1; then
        dpkg-deb -x "$deb" "$dest"
    elif command -v dpkg >/dev/null 2>&1; then
        dpkg -x "$deb" "$dest"
    elif command -v ar >/dev/null 2>&1; then
        local member
        member=$(ar t "$deb" | grep '^data\.tar')
        ar p "$deb" "$member" | tar -x -a -f - -C "$dest" 2>/dev/null ||
            ar p "$deb" "$member" | tar -xJ -C "$dest"
    elif command -v python3 >/dev/null 2>&1; then
        python3 - "$deb" "$dest" <<'PY'
import io, sys, tarfile
deb, dest = sys.argv[1], sys.argv[2]
data = open(deb, "rb").read()
assert data[:8] == b"!<arch>\n", "not an ar archive"
pos = 8
while pos + 60 <= len(data):
    name = data[pos:pos + 16].decode().strip().rstrip("/")
    size = int(data[pos + 48:pos + 58].decode().strip())
    body = data[pos + 60:pos + 60 + size]
    if name.startswith("data.tar"):
        tarfile.open(fileobj=io.BytesIO(body)).extractall(dest)
        break
    pos += 60 + size + (size & 1)
else:
    sys.exit("no data.tar in " + deb)
PY
    else
        echo "no dpkg, ar or python3 to unpack $deb" >&2
        return 1
    fi
}

loader="system"
have_loader=0
has_loader && have_loader=1
if ((!have_loader)) || [[ ${GPU_SH_LOADER:-} == local ]]; then
    deb=$(ls "$here"/libvulkan1_*.deb 2>/dev/null | head -n 1)
    if [[ -z $deb ]]; then
        ((have_loader)) && loader="system (GPU_SH_LOADER=local, but no libvulkan1_*.deb beside gpu.sh)" ||
            loader="missing: no libvulkan.so.1 on this machine and no libvulkan1_*.deb beside gpu.sh"
    elif [[ $(id -u) -eq 0 && ${GPU_SH_LOADER:-} != local ]]; then
        say "unpacking $(basename "$deb") into / (platform.md's recipe), then ldconfig"
        if unpack_deb "$deb" / >"$logs/loader.err" 2>&1 && ldconfig >>"$logs/loader.err" 2>&1; then
            loader="$(basename "$deb"), unpacked into /"
        else
            loader="failed to unpack $(basename "$deb") into /: $(tail -n 2 "$logs/loader.err" | tr '\n' ' ')"
        fi
    else
        dest=$here/.vulkan-loader
        say "unpacking $(basename "$deb") into $dest (LD_LIBRARY_PATH)"
        if unpack_deb "$deb" "$dest" >"$logs/loader.err" 2>&1; then
            libdir=$(dirname "$(find "$dest" -name 'libvulkan.so.1' | head -n 1)")
            export LD_LIBRARY_PATH=$libdir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
            loader="$(basename "$deb"), unpacked into $dest"
        else
            loader="failed to unpack $(basename "$deb"): $(tail -n 2 "$logs/loader.err" | tr '\n' ' ')"
        fi
    fi
fi
say "Vulkan loader: $loader"
add vulkan_loader "$(jstr "$loader")"

if [[ -z $wgrad ]]; then
    add error '"no wgrad binary beside gpu.sh (or WGRAD=...)"'
    printf '{\n'
    for ((i = 0; i < ${#members[@]}; i++)); do
        printf '  %s%s\n' "${members[i]}" "$([[ $i -lt $((${#members[@]} - 1)) ]] && echo ,)"
    done
    printf '}\n'
    exit 1
fi

# ---- the adapter -----------------------------------------------------------------------------

# Whether `wgrad devices --json` listed a GPU through Vulkan (not lavapipe, not GL: over GL wgpu
# has no f64 and no subgroups).
vulkan_gpu() {
    local obj
    while read -r obj; do
        [[ $obj == *'"backend": "Vulkan"'* && $obj == *'"device_type": "'@(Discrete|Integrated|Virtual)Gpu'"'* ]] &&
            return 0
    done < <(tr -d '\n' <"$logs/devices.out" 2>/dev/null | grep -o '{[^{}]*}')
    return 1
}

RUN_JSON=1 run devices 60 "$wgrad" devices --json
nvidia_icd=${GPU_SH_NVIDIA_ICD:-/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json}
if [[ -z ${VK_DRIVER_FILES:-} && -f $nvidia_icd ]] && ! vulkan_gpu; then
    say "no Vulkan GPU adapter: retrying with VK_DRIVER_FILES=$nvidia_icd (platform.md)"
    export VK_DRIVER_FILES=$nvidia_icd
    RUN_JSON=1 run devices 60 "$wgrad" devices --json
    if ! vulkan_gpu; then
        say "still no Vulkan GPU adapter: back to the loader's default drivers"
        unset VK_DRIVER_FILES
        RUN_JSON=1 run devices 60 "$wgrad" devices --json
    fi
fi
add vk_driver_files "$([[ -n ${VK_DRIVER_FILES:-} ]] && jstr "$VK_DRIVER_FILES" || echo null)"
if [[ -n $RUN_ERROR ]]; then
    add adapter "{\"error\": $(jstr "$RUN_ERROR")}"
    ((errors++))
else
    devices=$(<"$logs/devices.out")
    devices=$(tr -d '\n' <<<"$devices")
    # `wgrad devices` lists adapters in the order wgrad ranks them: the first is the one it runs on.
    first=$(sed -E 's/^[[:space:]]*\[[[:space:]]*(\{[^}]*\}).*/\1/' <<<"$devices")
    if [[ $first == \{*\} ]]; then
        add adapter "$first"
        say "adapter: $(jget name "$first") / $(jget driver_info "$first")"
    else
        add adapter '{"error": "wgrad devices listed no adapter"}'
        ((errors++))
        say "no adapter at all"
    fi
    add adapters "$devices"
fi

# ---- the build -------------------------------------------------------------------------------

run version 20 "$wgrad" --version
if [[ -n $RUN_ERROR ]]; then
    add version "{\"error\": $(jstr "$RUN_ERROR")}"
    ((errors++))
    add commit null
else
    version=$(head -n 1 "$logs/version.out")
    add version "$(jstr "$version")"
    commit=$(sed -nE 's/.*\(commit ([^,)]+).*/\1/p' <<<"$version")
    add commit "$([[ -n $commit ]] && jstr "$commit" || echo null)"
fi

# ---- numerical gradients: TwoLayerNet 784-50-10, batch 100, f64 and f32 ----------------------

# --budget caps each (precision, strategy) at about that many seconds a repeat (longer ones are
# timed on a prefix and extrapolated): at most 2 × 3 × repeats × budget in all.
if ((quick)); then ng_budget=2 ng_repeats=1 ng_limit=120; else ng_budget=5 ng_repeats=3 ng_limit=180; fi
ng_cmd=(bench --hidden 50 --batch 100 --budget "$ng_budget" --repeats "$ng_repeats" --json)
RUN_JSON=1 run numgrad "$ng_limit" "$wgrad" "${ng_cmd[@]}"
ng="{\"command\": $(jstr "wgrad ${ng_cmd[*]}"), \"wall_seconds\": $(jnum "$RUN_SECONDS")"
if [[ -n $RUN_ERROR ]]; then
    ng+=", \"error\": $(jstr "$RUN_ERROR")}"
    ((errors++))
else
    out=$(tr -d '\n' <"$logs/numgrad.out")
    ng+=", \"analytic_seconds\": $(jnum "$(jget analytic_seconds "$out")")"
    # One flat object per (precision, strategy) in "numeric": seconds for all 79,520 perturbed
    # losses (extrapolated from a prefix where predicted past --budget).
    for p in f64 f32; do
        entry="{" sep=""
        while read -r obj; do
            [[ $obj == *"\"precision\":\"$p\""* ]] || continue
            strategy=$(jget strategy "$obj")
            extrapolated=$(jget extrapolated "$obj")
            entry+="$sep${strategy:-\"?\"}: {\"seconds\": $(jnum "$(jget seconds "$obj")")"
            entry+=", \"perturbed_losses_per_second\": $(jnum "$(jget perturbed_losses_per_second "$obj")")"
            entry+=", \"extrapolated\": ${extrapolated:-null}}"
            sep=", "
        done < <(grep -o '{[^{}]*"strategy":"[a-z]*"[^{}]*}' <<<"$out")
        entry+="}"
        ng+=", \"$p\": $entry"
    done
    ng+=", \"report\": $out}"
fi
add numerical_gradient "$ng"

# ---- training throughput: `wgrad bench train` --------------------------------------------------

# name | net flags | steps at batch 100 | steps at batch 1000 (quick: the last two columns after /)
nets=(
    "784-50-10 relu sgd|--hidden 50 --optimizer sgd --lr 0.1|3000/50|1000/10"
    "784-100-100-10 momentum|--hidden 100,100 --optimizer momentum --lr 0.01|3000/50|1000/10"
    "wgrad train default||2000/30|500/5"
    "simple-conv|--model simple-conv|500/5|100/2"
)
train="{"
tsep=""
for row in "${nets[@]}"; do
    IFS='|' read -r name flags s100 s1000 _ <<<"$row"
    net="{\"flags\": $(jstr "$flags")"
    for batch in 100 1000; do
        steps=$([[ $batch == 100 ]] && echo "$s100" || echo "$s1000")
        ((quick)) && steps=${steps#*/} || steps=${steps%/*}
        tag=train-${name// /_}-b$batch
        # shellcheck disable=SC2086 # flags are words
        cmd=(bench train $flags --batch-size "$batch" --steps "$steps" --json)
        RUN_JSON=1 run "$tag" "$([[ $name == simple-conv ]] && echo 90 || echo 60)" "$wgrad" "${cmd[@]}"
        fig="{\"command\": $(jstr "wgrad ${cmd[*]}"), \"steps\": $steps, \"wall_seconds\": $(jnum "$RUN_SECONDS")"
        if [[ -n $RUN_ERROR ]]; then
            fig+=", \"error\": $(jstr "$RUN_ERROR")}"
            ((errors++))
        else
            out=$(tr -d '\n' <"$logs/$tag.out")
            for k in samples_per_second steps_per_second dispatches_per_step; do
                fig+=", \"$k\": $(jnum "$(jget "$k" "$out")")"
            done
            fig+=", \"report\": $out}"
        fi
        net+=", \"batch_$batch\": $fig"
    done
    net+="}"
    train+="$tsep$(jstr "$name"): $net"
    tsep=", "
done
train+="}"
add train "$train"

# ---- matmul rate and dispatch cost: `wgrad bench train --profile` ---------------------------

# A wide net at a large batch, so its first matmul (1000×784 by 784×1000, 1.57 GFLOP) keeps a
# GPU busy; --profile times each dispatch of its step alone.
if ((quick)); then pf_steps=2; else pf_steps=20; fi
pf_cmd=(bench train --hidden 1000 --optimizer sgd --lr 0.1 --batch-size 1000 --steps "$pf_steps" --profile --json)
RUN_JSON=1 run profile 120 "$wgrad" "${pf_cmd[@]}"
if [[ -n $RUN_ERROR ]]; then
    add matmul_gflops "{\"error\": $(jstr "$RUN_ERROR")}"
    add dispatch_cost "{\"error\": $(jstr "$RUN_ERROR")}"
    ((errors += 2))
else
    out=$(tr -d '\n' <"$logs/profile.out")
    add matmul_gflops "{\"command\": $(jstr "wgrad ${pf_cmd[*]}"), \"best\": $(jnum "$(jget matmul_gflops "$out")"), \"report\": $out}"
    add dispatch_cost "{\"seconds_at_most\": $(jnum "$(jget dispatch_seconds "$out")"), \"note\": \"the fastest dispatch of that step, alone, repeated in one submit\"}"
fi

# ---- out -------------------------------------------------------------------------------------

add errors "$errors"
add seconds "$((SECONDS - start))"
say "done in $((SECONDS - start))s, $errors figure(s) with errors; logs in $logs"

printf '{\n'
for ((i = 0; i < ${#members[@]}; i++)); do
    printf '  %s%s\n' "${members[i]}" "$([[ $i -lt $((${#members[@]} - 1)) ]] && echo ,)"
done
printf '}\n'
