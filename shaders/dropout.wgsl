// Inverted dropout as PyTorch does it: in training each element is kept with probability 1 − p
// and kept ones are scaled by 1/(1 − p), so evaluation is the identity: the model records the
// same dispatch there with threshold 0 and a scale of 1, so one path serves both modes.
//
// The mask comes from a counter-based hash, not a stateful RNG, so runs repeat exactly and the
// host never uploads anything per step:
//
//   keep(seed, step, i) = pcg(i ^ pcg(step ^ pcg(seed))) >= threshold,  threshold = round(p·2³²)
//
// `step` is read from the GPU step counter (word step_slot of `state`, see metrics.wgsl), so each
// training step draws a fresh mask, and a numerical-gradient check can hold it fixed. `i` is the
// element's index within one parameter copy, so all perturbed copies of a check share one mask.
// src/reference/norm.rs holds the same hash.

#include "moved_channel.wgsl"

struct Params {
    count: u32,      // elements: copies · per_copy
    per_copy: u32,   // elements of one copy
    seed: u32,
    threshold: u32,  // round(p·2³²) clamped to u32; 0 keeps everything
    step_slot: u32,  // word of `state` holding the step
    row_width: u32,  // invocations per grid row of kernel::grid(count)
    channels: u32,   // C of [copies, N, C, S] (one-channel routes only)
    plane: u32,      // S (one-channel routes only)
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> x: array<real>;            // x, or dy in backward
@group(0) @binding(2) var<storage, read> state: array<u32>;         // GPU step counter words
@group(0) @binding(3) var<storage, read_write> y: array<real>;      // y, or dx in backward
@group(0) @binding(4) var<storage, read_write> mask: array<real>;   // [per_copy]: 0 or 1/(1 − p)
@group(0) @binding(5) var<storage, read> consts: array<real>;       // [1/(1 − p)]
@group(0) @binding(6) var<storage, read> moved: array<u32>;         // [copies]: moved channels

// Built for a one-channel route (moved_channel.wgsl): `count` covers the moved channel alone.
override ONE_CHANNEL: bool = false;

// PCG's output permutation (RXS-M-XS) applied to one LCG step: a cheap hash whose low and high
// bits are both well mixed. u32 arithmetic wraps. (`s` is PCG's `state`, renamed so it does
// not shadow the binding.)
fn pcg(v: u32) -> u32 {
    let s = v * 747796405u + 2891336453u;
    let word = ((s >> ((s >> 28u) + 4u)) ^ s) * 277803737u;
    return (word >> 22u) ^ word;
}

fn index(gid: vec3<u32>) -> u32 {
    return gid.y * P.row_width + gid.x;
}

// Grid kernel::grid(count). Copy 0's invocations store the mask, which every copy shares.
//   x: [copies, per_copy], state -> y: [copies, per_copy], mask: [per_copy]
@compute @workgroup_size(64)
fn dropout_forward(@builtin(global_invocation_id) gid: vec3<u32>) {
    var i = index(gid);
    if (i >= P.count) {
        return;
    }
    if (ONE_CHANNEL) {
        let n = P.per_copy / (P.channels * P.plane);
        i = moved_channel_index(i, n, P.channels, P.plane, moved[i / (n * P.plane)]);
    }
    let j = i % P.per_copy;
    let stream = pcg(state[P.step_slot] ^ pcg(P.seed));
    let kept = pcg(j ^ stream) >= P.threshold;
    let m = select(real(0.0), consts[0], kept);
    y[i] = x[i] * m;
    if (i < P.per_copy) {
        mask[i] = m;
    }
}

// dx = dy · mask. Grid kernel::grid(count) (state and consts are not read).
//   dy (at x): [copies, per_copy], mask: [per_copy] -> dx (at y): [copies, per_copy]
@compute @workgroup_size(64)
fn dropout_backward(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = index(gid);
    if (i >= P.count) {
        return;
    }
    y[i] = x[i] * mask[i % P.per_copy];
}
