// Elementwise nonlinearities, forward and backward side by side, for every kind in
// activations.wgsl (P.kind picks one). All tensors are flat [copies, N, H] arrays of `count`
// elements; the grid is folded into 2-D when it is large.
//
//   forward:  y = f(x)
//   backward: dx = dy · f′, with f′ from the one tensor the forward saved for it: its input for
//             ReLU (whose mask is zero at x = 0, as the book's), its output for the others
//             (σ′ = y(1 − y)).

#include "activations.wgsl"
#include "moved_channel.wgsl"

struct Params {
    count: u32,      // elements
    per_copy: u32,   // N·H: elements of one parameter copy (kink counting only)
    row_width: u32,  // invocations per grid row (x workgroups · 64)
    kind: u32,       // ACT_RELU, ACT_SIGMOID, …
    channels: u32,   // C of [copies, N, C, S] (one-channel routes only)
    plane: u32,      // S (one-channel routes only)
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> x: array<real>;     // input: pre-activation or upstream grad
@group(0) @binding(2) var<storage, read> aux: array<real>;   // the saved tensor backward needs
@group(0) @binding(3) var<storage, read_write> y: array<real>;
@group(0) @binding(4) var<storage, read_write> flips: array<atomic<u32>>;
@group(0) @binding(5) var<storage, read> moved: array<u32>;  // [copies]: each copy's moved channel

// Built into the perturbed-loss engine: count, per copy, the units whose side of a kink differs
// from the unperturbed pass (aux holds the base pre-activations). A central difference whose two
// sides see different states straddles the kink.
override COUNT_KINKS: bool = false;

// Built for a one-channel route (moved_channel.wgsl): `count` covers the moved channel alone.
override ONE_CHANNEL: bool = false;

fn index(gid: vec3<u32>) -> u32 {
    return gid.y * P.row_width + gid.x;
}

// y = f(x)       x, y: [copies, N, H]
@compute @workgroup_size(64)
fn activation_forward(@builtin(global_invocation_id) gid: vec3<u32>) {
    var i = index(gid);
    if (i >= P.count) {
        return;
    }
    if (ONE_CHANNEL) {
        let n = P.per_copy / (P.channels * P.plane);
        i = moved_channel_index(i, n, P.channels, P.plane, moved[i / (n * P.plane)]);
    }
    let a = x[i];
    y[i] = activate(P.kind, a);
    if (COUNT_KINKS && crosses_kink(P.kind, a, aux[i % P.per_copy])) {
        atomicAdd(&flips[i / P.per_copy], 1u);
    }
}

// dx = dy · f′   (x: dy, aux: the saved input or output)
@compute @workgroup_size(64)
fn activation_backward(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = index(gid);
    if (i >= P.count) {
        return;
    }
    y[i] = backpropagate(P.kind, x[i], aux[i]);
}
