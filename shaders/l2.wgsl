// The book's weight decay as an L2 term of the loss, forward and backward side by side:
//
//   penalty = Σ_i (λ_i / 2)·θ_i²       dθ_i += λ_i·θ_i
//
// λ_i = λ for weight-matrix elements and 0 for biases; `half_decay` holds λ_i / 2.

#include "words.wgsl"

struct Params {
    numel: u32,
    row_width: u32,
    _pad0: u32, _pad1: u32,
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> params: array<real>;
@group(0) @binding(2) var<storage, read> half_decay: array<real>;
@group(0) @binding(3) var<storage, read_write> grads: array<real>;
@group(0) @binding(4) var<storage, read_write> stats: array<real>;

const WG: u32 = 64u;
var<workgroup> part: array<real, 64>;

// Two passes with a fixed summation order. lavapipe stops an invocation after 65,535 loop
// iterations in all, so no invocation may loop over the whole arena.
// Pass 1: workgroup g sums elements [g·BLOCK, (g+1)·BLOCK) into partials[g] (each invocation
// at most BLOCK/64 = 1,024 strided elements).
const BLOCK: u32 = 65536u;

@compute @workgroup_size(64)
fn l2_partial(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wg: vec3<u32>) {
    let begin = wg.x * BLOCK;
    let end = min(begin + BLOCK, P.numel);
    var l = real(0.0);
    for (var i = begin + lid; i < end; i += WG) {
        l += half_decay[i] * params[i] * params[i];
    }
    reduce(lid, l);
    if (lid == 0u) {
        grads[wg.x] = part[0];
    }
}

// Pass 2: stats[STATS_L2_PENALTY] = Σ partials (`grads` is bound to the partials buffer in both passes; P.numel
// is the arena size, so there are ceil(numel / BLOCK) partials).
@compute @workgroup_size(64)
fn l2_penalty(@builtin(local_invocation_index) lid: u32) {
    let count = (P.numel + BLOCK - 1u) / BLOCK;
    var l = real(0.0);
    for (var i = lid; i < count; i += WG) {
        l += grads[i];
    }
    reduce(lid, l);
    if (lid == 0u) {
        stats[STATS_L2_PENALTY] = part[0];
    }
}

fn reduce(lid: u32, value: real) {
    part[lid] = value;
    for (var stride = WG / 2u; stride > 0u; stride /= 2u) {
        workgroupBarrier();
        if (lid < stride) {
            part[lid] += part[lid + stride];
        }
    }
    workgroupBarrier();
}

@compute @workgroup_size(64)
fn l2_grad(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.y * P.row_width + gid.x;
    if (i >= P.numel) {
        return;
    }
    grads[i] += real(2.0) * half_decay[i] * params[i];
}
