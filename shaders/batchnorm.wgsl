// Batch normalisation with PyTorch's BatchNorm{1d,2d} semantics, forward and backward side by
// side. Tensors are NCHW with parameter copies outermost: [copies, N, C, S], S = H·W (S = 1
// after an affine layer, where C is the feature count). Per channel c, over the M = N·S values
// of one copy:
//
//   training:   xhat = (x − mean)·inv_std,  inv_std = 1/√(var + eps)  (biased var),
//               y = γ·xhat + β;  running ← (1 − m)·running + m·(mean, var·M/(M − 1)), or
//               m·(mean, var) where the net follows the book (consts[2] = 0)
//   evaluation: y = γ·(x − running_mean)/√(running_var + eps) + β
//   backward:   dγ = Σ dy·xhat,  dβ = Σ dy,  dx = γ·inv_std/M·(M·dy − dβ − xhat·dγ)
//
// Every entry point shares this one binding table, so the host builds one buffer list per
// layer and binds dy at `x` and dx at `y` for the backward pass; the slots an entry point does
// not use get the host's placeholders (kernel::Placeholders). Likewise one Params
// serves all entries; elementwise entries dispatch kernel::grid(count) and unfold with
// row_width, per-channel ones dispatch kernel::grid(k·64) (one workgroup, or invocation, each)
// and unfold with num_workgroups, so they need no row width of their own.

#include "moved_channel.wgsl"

struct Params {
    n: u32,          // batch rows N
    c: u32,          // channels C
    s: u32,          // spatial size S = H·W (1 after an affine layer)
    copies: u32,     // parameter copies P (1 outside the perturbed-loss engine)
    g_off: u32,      // γ's offset in theta and grads
    b_off: u32,      // β's offset in theta and grads
    count: u32,      // elements of the elementwise entries: copies·N·C·S
    row_width: u32,  // invocations per grid row of kernel::grid(count)
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> consts: array<real>;          // [eps, momentum, unbiased (1 or 0)]
@group(0) @binding(2) var<storage, read> x: array<real>;               // x, or dy in backward
@group(0) @binding(3) var<storage, read_write> stats: array<real>;     // [copies, C, 3]
@group(0) @binding(4) var<storage, read> theta: array<real>;           // parameter arena
@group(0) @binding(5) var<storage, read_write> xhat: array<real>;      // [copies, N, C, S]
@group(0) @binding(6) var<storage, read_write> y: array<real>;         // y, or dx in backward
@group(0) @binding(7) var<storage, read_write> grads: array<real>;     // gradient arena
@group(0) @binding(8) var<storage, read_write> running: array<real>;   // [C, 2]
@group(0) @binding(9) var<storage, read> pert: array<u32>;
@group(0) @binding(10) var<storage, read> hstep: array<real>;
@group(0) @binding(11) var<storage, read> moved: array<u32>;           // [copies]: moved channels

// stats record of one (copy, channel): mean, inv_std, and the biased variance, which only the
// running update needs (recovering it from inv_std would lose it to eps in f32).
const STATS: u32 = 3u;
const MEAN: u32 = 0u;
const INV_STD: u32 = 1u;
const VAR: u32 = 2u;

// Set when built for the perturbed-loss engine: pert[2p] is copy p's flat parameter index,
// pert[2p+1] its sign (0: +h, 1: −h), and hstep[0] is h. Each copy reads γ and β as the shared
// base plus its own one-element change, so no copy writes what another reads.
override PERTURBED: bool = false;

// Built for a one-channel route (moved_channel.wgsl): bn_stats runs one workgroup per copy, for
// its moved channel, and bn_forward_train's `count` covers the moved channel alone.
override ONE_CHANNEL: bool = false;

const WG: u32 = 64u;

var<workgroup> part_a: array<real, 64>;
var<workgroup> part_b: array<real, 64>;

// Fixed-order reduction of both partial arrays into element 0 (deterministic), visible to the
// whole workgroup on return.
fn tree_sum(lid: u32) {
    for (var stride = WG / 2u; stride > 0u; stride /= 2u) {
        workgroupBarrier();
        if (lid < stride) {
            part_a[lid] += part_a[lid + stride];
            part_b[lid] += part_b[lid + stride];
        }
    }
    workgroupBarrier();
}

// Index of the j-th of channel ch's M = N·S values in copy p.
fn at(p: u32, ch: u32, j: u32) -> u32 {
    let row = j / P.s;
    return ((p * P.n + row) * P.c + ch) * P.s + (j % P.s);
}

fn elementwise_index(gid: vec3<u32>) -> u32 {
    return gid.y * P.row_width + gid.x;
}

// Channel of flat element i of a [copies, N, C, S] tensor.
fn channel(i: u32) -> u32 {
    return (i / P.s) % P.c;
}

// (γ, β) of channel ch as copy p sees them.
fn gamma_beta(p: u32, ch: u32) -> vec2<real> {
    var g = theta[P.g_off + ch];
    var b = theta[P.b_off + ch];
    if (PERTURBED) {
        let flat = pert[2u * p];
        let delta = select(hstep[0], -hstep[0], pert[2u * p + 1u] == 1u);
        if (flat == P.g_off + ch) {
            g = g + delta;
        }
        if (flat == P.b_off + ch) {
            b = b + delta;
        }
    }
    return vec2<real>(g, b);
}

// Batch statistics. One workgroup per (copy, channel), grid kernel::grid(copies·C·64); two
// passes (mean, then Σ(x − mean)²) because the one-pass E[x²] − mean² cancels badly in f32.
//   x: [copies, N, C, S] -> stats: [copies, C, 3] (mean, inv_std, biased var)
@compute @workgroup_size(64)
fn bn_stats(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    var pc = wid.y * nwg.x + wid.x;
    if (pc >= select(P.copies * P.c, P.copies, ONE_CHANNEL)) {
        return;
    }
    if (ONE_CHANNEL) {
        pc = pc * P.c + moved[pc];
    }
    let p = pc / P.c;
    let ch = pc % P.c;
    let m = P.n * P.s;
    var acc = real(0.0);
    for (var j = lid; j < m; j += WG) {
        acc += x[at(p, ch, j)];
    }
    part_a[lid] = acc;
    part_b[lid] = real(0.0);
    tree_sum(lid);
    let mean = part_a[0] / real(m);
    // Every lane has read the mean before the second pass overwrites part_a.
    workgroupBarrier();
    var sq = real(0.0);
    for (var j = lid; j < m; j += WG) {
        let d = x[at(p, ch, j)] - mean;
        sq += d * d;
    }
    part_a[lid] = sq;
    tree_sum(lid);
    if (lid == 0u) {
        let v = part_a[0] / real(m);
        stats[pc * STATS + MEAN] = mean;
        stats[pc * STATS + INV_STD] = real(1.0) / sqrt(v + consts[0]);
        stats[pc * STATS + VAR] = v;
    }
}

// Training forward, per element, grid kernel::grid(count). xhat is kept for the backward pass;
// the perturbed build has no backward pass and skips it (bind any read_write buffer there).
//   x, stats: [copies, C, 3], θ -> xhat, y: [copies, N, C, S]
@compute @workgroup_size(64)
fn bn_forward_train(@builtin(global_invocation_id) gid: vec3<u32>) {
    var i = elementwise_index(gid);
    if (i >= P.count) {
        return;
    }
    if (ONE_CHANNEL) {
        i = moved_channel_index(i, P.n, P.c, P.s, moved[i / (P.n * P.s)]);
    }
    let ch = channel(i);
    let p = i / (P.n * P.c * P.s);
    let st = (p * P.c + ch) * STATS;
    let xh = (x[i] - stats[st + MEAN]) * stats[st + INV_STD];
    if (!PERTURBED) {
        xhat[i] = xh;
    }
    let gb = gamma_beta(p, ch);
    y[i] = gb.x * xh + gb.y;
}

// dγ and dβ, written (=) into grads at g_off and b_off. One workgroup per channel, grid
// kernel::grid(C·64); copies = 1. bn_backward_input reads the two sums back from there, so
// nothing may change those grads in between.
//   dy (at x), xhat: [N, C, S] -> grads[g_off + c] = Σ dy·xhat, grads[b_off + c] = Σ dy
@compute @workgroup_size(64)
fn bn_backward_params(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let ch = wid.y * nwg.x + wid.x;
    if (ch >= P.c) {
        return;
    }
    let m = P.n * P.s;
    var sdy = real(0.0);
    var sdyx = real(0.0);
    for (var j = lid; j < m; j += WG) {
        let k = at(0u, ch, j);
        sdy += x[k];
        sdyx += x[k] * xhat[k];
    }
    part_a[lid] = sdyx;
    part_b[lid] = sdy;
    tree_sum(lid);
    if (lid == 0u) {
        grads[P.g_off + ch] = part_a[0];
        grads[P.b_off + ch] = part_b[0];
    }
}

// Input gradient, per element, grid kernel::grid(count); copies = 1, after bn_backward_params.
//   dy (at x), xhat: [N, C, S], stats: [1, C, 3], γ, grads (the sums) -> dx (at y): [N, C, S]
@compute @workgroup_size(64)
fn bn_backward_input(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = elementwise_index(gid);
    if (i >= P.count) {
        return;
    }
    let ch = channel(i);
    let m = real(P.n * P.s);
    let scale = theta[P.g_off + ch] * stats[ch * STATS + INV_STD] / m;
    y[i] = scale * (m * x[i] - grads[P.b_off + ch] - xhat[i] * grads[P.g_off + ch]);
}

// Running statistics, one invocation per channel, grid kernel::grid(C); copies = 1. M = 1 has
// no unbiased variance (PyTorch refuses to train on it); the batch variance, 0, is used instead
// of dividing by zero.
//   stats: [1, C, 3], running: [C, 2] (mean, var) -> running
@compute @workgroup_size(64)
fn bn_update_running(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let ch = gid.y * nwg.x * WG + gid.x;
    if (ch >= P.c) {
        return;
    }
    let m = P.n * P.s;
    let mom = consts[1];
    let keep = real(1.0) - mom;
    let var_ = stats[ch * STATS + VAR];
    let unbiased = select(var_, var_ * real(m) / real(max(m, 2u) - 1u), consts[2] != real(0.0));
    running[2u * ch] = keep * running[2u * ch] + mom * stats[ch * STATS + MEAN];
    running[2u * ch + 1u] = keep * running[2u * ch + 1u] + mom * unbiased;
}

// Evaluation forward with the running statistics, per element, grid kernel::grid(count). Any
// number of copies (all share the running statistics); PERTURBED as in bn_forward_train.
//   x: [copies, N, C, S], running: [C, 2], θ -> y: [copies, N, C, S]
@compute @workgroup_size(64)
fn bn_forward_eval(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = elementwise_index(gid);
    if (i >= P.count) {
        return;
    }
    let ch = channel(i);
    let p = i / (P.n * P.c * P.s);
    let inv_std = real(1.0) / sqrt(running[2u * ch + 1u] + consts[0]);
    let gb = gamma_beta(p, ch);
    y[i] = gb.x * ((x[i] - running[2u * ch]) * inv_std) + gb.y;
}
