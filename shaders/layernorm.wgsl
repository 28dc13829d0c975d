// Layer normalisation with PyTorch's LayerNorm semantics (elementwise affine), forward and
// backward side by side. Each row (sample) is normalised over its own F features, so the
// statistics are per row, not per feature: a conv output is one row of F = C·H·W. Tensors are
// [copies, N, F] with parameter copies outermost; γ and β have F elements each. Per row, over
// its F values:
//
//   forward:   xhat = (x − mean)·inv_std,  inv_std = 1/√(var + eps)  (biased var),
//              y = γ·xhat + β
//   backward:  dγ = Σ_n dy·xhat,  dβ = Σ_n dy  (over the rows, per feature),
//              g = dy·γ,  A = Σ_f g,  B = Σ_f g·xhat  (over the features, per row),
//              dx = inv_std/F·(F·g − A − xhat·B)
//
// Every entry point shares this one binding table, so the host builds one buffer list per
// layer and binds dy at `x` and dx at `y` for the backward pass; the slots an entry point does
// not use get the host's placeholders (kernel::Placeholders). Likewise one Params
// serves all entries; ln_forward dispatches kernel::grid(count) and unfolds with row_width, the
// per-row and per-feature ones dispatch kernel::grid(k·64) or kernel::grid(F) (one workgroup, or
// invocation, each) and unfold with num_workgroups, so they need no row width of their own.
//
// Loops stay short for lavapipe, which ends an invocation after 65,535 loop iterations in all:
// per-row loops take F/64 steps a lane, and ln_backward_params's one loop takes N steps.

#include "moved_channel.wgsl"

struct Params {
    n: u32,          // rows per copy N
    f: u32,          // features per row F
    copies: u32,     // parameter copies P (1 outside the perturbed-loss engine)
    g_off: u32,      // γ's offset in theta and grads
    b_off: u32,      // β's offset in theta and grads
    count: u32,      // elements of the elementwise entries: copies·N·F
    row_width: u32,  // invocations per grid row of kernel::grid(count)
    input_shared: u32,  // 1: x is [N, F], read by every copy (a perturbed route's start)
    plane: u32,      // features per channel, F/C (one-channel routes only)
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> consts: array<real>;       // [eps]
@group(0) @binding(2) var<storage, read> x: array<real>;            // x, or dy in backward
@group(0) @binding(3) var<storage, read_write> stats: array<real>;  // [copies, N, 2]: mean, inv_std
@group(0) @binding(4) var<storage, read> theta: array<real>;        // parameter arena
@group(0) @binding(5) var<storage, read_write> xhat: array<real>;   // [copies, N, F]
@group(0) @binding(6) var<storage, read_write> y: array<real>;      // y, or dx in backward
@group(0) @binding(7) var<storage, read_write> grads: array<real>;  // gradient arena
@group(0) @binding(8) var<storage, read> pert: array<u32>;
@group(0) @binding(9) var<storage, read> hstep: array<real>;
@group(0) @binding(10) var<storage, read> moved: array<u32>;    // [copies]: moved channels

// stats record of one (copy, row).
const STATS: u32 = 2u;
const MEAN: u32 = 0u;
const INV_STD: u32 = 1u;

// Set when built for the perturbed-loss engine: pert[2p] is copy p's flat parameter index,
// pert[2p+1] its sign (0: +h, 1: −h), and hstep[0] is h. Each copy reads γ and β as the shared
// base plus its own one-element change, so no copy writes what another reads.
override PERTURBED: bool = false;

// Built for a one-channel route (moved_channel.wgsl): ln_forward's `count` covers each copy's
// moved channel alone (a γ or β change moves one feature of every row).
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

fn elementwise_index(gid: vec3<u32>) -> u32 {
    return gid.y * P.row_width + gid.x;
}

// The row of x, and of the statistics, that (copy, row) `row` reads: its own, or the shared one
// of every copy (whose statistics ln_stats computes once).
fn input_row(row: u32) -> u32 {
    return select(row, row % P.n, P.input_shared == 1u);
}

// (γ, β) of feature k as copy p sees them.
fn gamma_beta(p: u32, k: u32) -> vec2<real> {
    var g = theta[P.g_off + k];
    var b = theta[P.b_off + k];
    if (PERTURBED) {
        let flat = pert[2u * p];
        let delta = select(hstep[0], -hstep[0], pert[2u * p + 1u] == 1u);
        if (flat == P.g_off + k) {
            g = g + delta;
        }
        if (flat == P.b_off + k) {
            b = b + delta;
        }
    }
    return vec2<real>(g, b);
}

// Row statistics. One workgroup per (copy, row), grid kernel::grid(copies·N·64), or per row of
// a shared input, grid kernel::grid(N·64); two passes (mean, then Σ(x − mean)²) because the
// one-pass E[x²] − mean² cancels badly in f32.
//   x: [copies, N, F] or shared [N, F] -> stats: [copies, N, 2] or [N, 2] (mean, inv_std)
@compute @workgroup_size(64)
fn ln_stats(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let row = wid.y * nwg.x + wid.x;
    if (row >= select(P.copies * P.n, P.n, P.input_shared == 1u)) {
        return;
    }
    let base = row * P.f;
    var acc = real(0.0);
    for (var j = lid; j < P.f; j += WG) {
        acc += x[base + j];
    }
    part_a[lid] = acc;
    part_b[lid] = real(0.0);
    tree_sum(lid);
    let mean = part_a[0] / real(P.f);
    // Every lane has read the mean before the second pass overwrites part_a.
    workgroupBarrier();
    var sq = real(0.0);
    for (var j = lid; j < P.f; j += WG) {
        let d = x[base + j] - mean;
        sq += d * d;
    }
    part_a[lid] = sq;
    tree_sum(lid);
    if (lid == 0u) {
        let v = part_a[0] / real(P.f);
        stats[row * STATS + MEAN] = mean;
        stats[row * STATS + INV_STD] = real(1.0) / sqrt(v + consts[0]);
    }
}

// Forward, per element, grid kernel::grid(count). xhat is kept for the backward pass; the
// perturbed build has no backward pass and skips it (bind any read_write buffer there).
//   x, stats: [copies, N, 2], θ -> xhat, y: [copies, N, F]
@compute @workgroup_size(64)
fn ln_forward(@builtin(global_invocation_id) gid: vec3<u32>) {
    var i = elementwise_index(gid);
    if (i >= P.count) {
        return;
    }
    if (ONE_CHANNEL) {
        let c = P.f / P.plane;
        i = moved_channel_index(i, P.n, c, P.plane, moved[i / (P.n * P.plane)]);
    }
    let row = i / P.f;
    let k = i % P.f;
    let p = i / (P.n * P.f);
    let xi = input_row(row) * P.f + k;
    let st = input_row(row) * STATS;
    let xh = (x[xi] - stats[st + MEAN]) * stats[st + INV_STD];
    if (!PERTURBED) {
        xhat[i] = xh;
    }
    let gb = gamma_beta(p, k);
    y[i] = gb.x * xh + gb.y;
}

// dγ and dβ, written (=) into grads at g_off and b_off. One invocation per feature, grid
// kernel::grid(F); copies = 1. Each sums its column over the N rows in order (deterministic);
// neighbouring invocations read neighbouring features of a row.
//   dy (at x), xhat: [N, F] -> grads[g_off + f] = Σ_n dy·xhat, grads[b_off + f] = Σ_n dy
@compute @workgroup_size(64)
fn ln_backward_params(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let k = gid.y * nwg.x * WG + gid.x;
    if (k >= P.f) {
        return;
    }
    var sdy = real(0.0);
    var sdyx = real(0.0);
    for (var r = 0u; r < P.n; r++) {
        let at = r * P.f + k;
        sdy += x[at];
        sdyx += x[at] * xhat[at];
    }
    grads[P.g_off + k] = sdyx;
    grads[P.b_off + k] = sdy;
}

// Input gradient. One workgroup per row, grid kernel::grid(N·64); copies = 1. Needs no result
// of ln_backward_params: the two row sums are its own.
//   dy (at x), xhat: [N, F], stats: [1, N, 2], γ -> dx (at y): [N, F]
@compute @workgroup_size(64)
fn ln_backward_input(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let row = wid.y * nwg.x + wid.x;
    if (row >= P.n) {
        return;
    }
    let base = row * P.f;
    var a = real(0.0);
    var b = real(0.0);
    for (var j = lid; j < P.f; j += WG) {
        let g = x[base + j] * theta[P.g_off + j];
        a += g;
        b += g * xhat[base + j];
    }
    part_a[lid] = a;
    part_b[lid] = b;
    tree_sum(lid);
    let sum_g = part_a[0];
    let sum_gx = part_b[0];
    let fr = real(P.f);
    let scale = stats[row * STATS + INV_STD] / fr;
    for (var j = lid; j < P.f; j += WG) {
        let g = x[base + j] * theta[P.g_off + j];
        y[base + j] = scale * (fr * g - sum_g - xhat[base + j] * sum_gx);
    }
}
