// Incremental perturbed losses for an MLP with BatchNorm or LayerNorm: one invocation per
// perturbation (flat parameter index, sign), each evaluating the real loss L(θ ± h·e_i) over the
// whole batch. Blocks are Affine → [BatchNorm | LayerNorm] → act → [Dropout], the last one an
// Affine alone (the logits).
//
// Perturbing W_l[i, j] or b_l[j] changes column j of block l's affine output z_l, for every
// sample (by ±h·in[n, i], or ±h); perturbing γ_l[j] or β_l[j] changes column j of its norm.
//   - BatchNorm normalises per feature over the batch: column j's statistics are recomputed in
//     O(N), and the change stays in column j. The activation and dropout mask keep it there, so
//     block l + 1's affine output changes by a rank-one update, Δa[:, j] ⊗ W_{l+1}[j, :].
//   - LayerNorm normalises per sample over the features: a change to one unit moves its sample's
//     mean and variance, so that sample's whole row changes (no other sample's). With ReLU, the
//     units that stay active change linearly in (z_c − μ), so block l + 1's affine output moves by
//     two precomputed vectors of that sample plus exact terms for unit j and the units that cross
//     the kink (layer_norm_row_update). Other activations take a dense product for the row.
// From block l + 1 on, every row is recomputed densely: BatchNorm's statistics there couple all
// samples, so the invocation keeps all N rows in its scratch (two [N, Fmax] buffers).
// Everything unperturbed (inputs, activations, masks, per-sample losses, parameters) is read-only
// and shared; each invocation writes only its own loss, kink count and scratch, so no evaluation
// can see another's change. Samples whose input to a perturbed weight is 0 keep their base row
// where nothing couples them (the perturbed block has no BatchNorm).
//
// layers[l] (13 words): in, out, W offset, b offset, z offset (affine output), norm kind (0 none,
// 1 BatchNorm, 2 LayerNorm), γ offset, β offset, y offset (the norm's output: the activation's
// input), a offset (after activation and dropout), mask offset (NONE: no dropout), LayerNorm sums
// offset (per sample [U_n, V_n], each out_{l+1} wide; NONE: no LayerNorm under ReLU here), γ's
// offset in `norm_consts` (β follows it). The offsets of z, y, a, the mask and the sums point
// into `base`, of W, b, γ, β into θ.

#include "activations.wgsl"
#include "dense_row.wgsl"
#include "cross_entropy.wgsl"

struct Params {
    perturbations: u32,   // invocations in this dispatch
    depth: u32,           // blocks (affine layers)
    n: u32,               // batch rows
    classes: u32,
    scratch_stride: u32,  // reals of scratch per invocation: N + 2·N·max_width + 2·max_width
    max_width: u32,
    row_width: u32,
    _pad: u32,
}

// The hidden layers' ACT_ kind (activations.wgsl), fixed when the host builds the pipeline:
// lavapipe runs every arm of a switch under a mask, so a kind read at run time would make each
// ReLU unit pay for sigmoid's and tanh's exponentials too.
override ACTIVATION: u32;

@group(0) @binding(0) var<uniform> P: Params;
// The layer table as a uniform array (at most 64 blocks, the host's MAX_NORM_BLOCKS): it is
// read in nearly every loop, and lavapipe compiles a uniform read to a gather, a storage read
// inside a loop to a lane-by-lane loop.
@group(0) @binding(1) var<uniform> layers: array<vec4<u32>, 208>; // 64 blocks · 13 words
@group(0) @binding(2) var<storage, read> theta: array<real>;
@group(0) @binding(3) var<storage, read> x: array<real>;         // [N, D]: the tail's input
@group(0) @binding(4) var<storage, read> labels: array<u32>;     // [N]
@group(0) @binding(5) var<storage, read> base: array<real>;      // z, y, a, masks of every block
@group(0) @binding(6) var<storage, read> base_loss: array<real>; // [N] per-sample loss
@group(0) @binding(7) var<storage, read> pert: array<u32>;       // (flat index, sign) pairs
@group(0) @binding(8) var<storage, read> hstep: array<real>;     // [h]
@group(0) @binding(9) var<storage, read> eps: array<real>;       // [BatchNorm eps, LayerNorm eps]
@group(0) @binding(10) var<storage, read_write> out_loss: array<real>;
@group(0) @binding(11) var<storage, read_write> out_flips: array<u32>;
@group(0) @binding(12) var<storage, read_write> scratch: array<real>;
// The logits' weight [F, C] and bias [C] (F: the last hidden block's width) where they fit
// (LOGITS_UNIFORM), then batchnorm_top's: its BatchNorm block's z, y and mask [N, F] (the mask
// only with dropout), γ and β [F].
@group(0) @binding(13) var<uniform> top_consts: array<vec4<real>, UNIFORM_VEC4S>;
override LOGITS_UNIFORM: bool;

// The base activations again, as a uniform array, where they fit in it (BASE_UNIFORM): lavapipe
// compiles a uniform read to a gather and a storage read inside a loop to a lane-by-lane loop.
// It runs both sides of a branch, so which one is read is fixed when the pipeline is built.
@group(0) @binding(14) var<uniform> base_uniform: array<vec4<real>, UNIFORM_VEC4S>;
override BASE_UNIFORM: bool;

fn base_at(at: u32) -> real {
    if (BASE_UNIFORM) {
        return base_uniform[at >> 2u][at & 3u];
    }
    return base[at];
}

// Every normalised block's γ and β again, as a uniform array, where they fit (NORM_UNIFORM).
@group(0) @binding(15) var<uniform> norm_consts: array<vec4<real>, UNIFORM_VEC4S>;
override NORM_UNIFORM: bool;

// γ_l[c], or β_l[c] when `beta`.
fn norm_param(l: u32, c: u32, beta: bool) -> real {
    if (NORM_UNIFORM) {
        let at = layer(l, 12u) + select(0u, layer(l, 1u), beta) + c;
        return norm_consts[at >> 2u][at & 3u];
    }
    return theta[layer(l, select(6u, 7u, beta)) + c];
}

fn top_const(at: u32) -> real {
    return top_consts[at >> 2u][at & 3u];
}

// The logits of one row: dense_row of the last block, its weight and bias read from
// `top_consts` where the host put them (LOGITS_UNIFORM), from θ otherwise; the same sums in
// the same order.
fn logits_row(row_in: u32, row_out: u32) {
    let last = P.depth - 1u;
    if (!LOGITS_UNIFORM) {
        dense_row(last, row_in, row_out);
        return;
    }
    let ins = layer(last, 0u);
    let outs = P.classes;
    let b = ins * outs;
    // Eight classes a pass over the row, which lavapipe reads from storage lane by lane: ten
    // classes take two passes, not three. Classes past the last repeat it; so do their sums.
    for (var c = 0u; c < outs; c += 8u) {
        let c1 = min(c + 1u, outs - 1u);
        let c2 = min(c + 2u, outs - 1u);
        let c3 = min(c + 3u, outs - 1u);
        let c4 = min(c + 4u, outs - 1u);
        let c5 = min(c + 5u, outs - 1u);
        let c6 = min(c + 6u, outs - 1u);
        let c7 = min(c + 7u, outs - 1u);
        var lo = vec4<real>(top_const(b + c), top_const(b + c1), top_const(b + c2), top_const(b + c3));
        var hi = vec4<real>(top_const(b + c4), top_const(b + c5), top_const(b + c6), top_const(b + c7));
        for (var r = 0u; r < ins; r++) {
            let row = r * outs;
            let x = scratch[row_in + r];
            lo += x * vec4<real>(top_const(row + c), top_const(row + c1), top_const(row + c2), top_const(row + c3));
            hi += x * vec4<real>(top_const(row + c4), top_const(row + c5), top_const(row + c6), top_const(row + c7));
        }
        scratch[row_out + c] = lo.x;
        scratch[row_out + c1] = lo.y;
        scratch[row_out + c2] = lo.z;
        scratch[row_out + c3] = lo.w;
        scratch[row_out + c4] = hi.x;
        scratch[row_out + c5] = hi.y;
        scratch[row_out + c6] = hi.z;
        scratch[row_out + c7] = hi.w;
    }
}

// The batch's rows and the net's classes when the host specialises this kernel to them (0: not
// specialised), for batchnorm_top's registers; at most MAX_ROWS, MAX_CLASSES and MAX_LOGITS.
override ROWS: u32 = 0u;
override CLASSES: u32 = 0u;
const MAX_ROWS: u32 = 8u;
const MAX_CLASSES: u32 = 16u;
const MAX_LOGITS: u32 = 64u;

const NONE: u32 = 0xffffffffu;
const NO_NORM: u32 = 0u;
const BATCH_NORM: u32 = 1u;
const LAYER_NORM: u32 = 2u;
// What the perturbation moves.
const MOVES_W: u32 = 0u;
const MOVES_B: u32 = 1u;
const MOVES_GAMMA: u32 = 2u;
const MOVES_BETA: u32 = 3u;

fn layer(l: u32, field: u32) -> u32 {
    let at = 13u * l + field;
    return layers[at >> 2u][at & 3u];
}

// The dropout mask of block l at (sample n, unit c): 0 or 1/(1 − p), 1 without dropout.
fn mask(l: u32, n: u32, c: u32) -> real {
    let at = layer(l, 10u);
    if (at == NONE) {
        return real(1.0);
    }
    return base_at(at + n * layer(l, 1u) + c);
}

// Block l's input at (sample n, unit i): the tail's input, or block l − 1's activations.
fn block_input(l: u32, n: u32, i: u32) -> real {
    if (l == 0u) {
        return x[n * layer(0u, 0u) + i];
    }
    return base_at(layer(l - 1u, 9u) + n * layer(l, 0u) + i);
}

// The change to unit j of block l's affine output in sample n when W_l[i, j] or b_l[j] moves by
// delta (0 when γ or β moves).
fn unit_change(moves: u32, l: u32, n: u32, i: u32, delta: real) -> real {
    if (moves == MOVES_W) {
        return delta * block_input(l, n, i);
    } else if (moves == MOVES_B) {
        return delta;
    }
    return real(0.0);
}

// Softmax-CE of the row of `classes` logits at scratch[at ..].
fn row_loss(at: u32, t: u32) -> real {
    var m = scratch[at];
    for (var c = 1u; c < P.classes; c++) {
        m = max(m, scratch[at + c]);
    }
    var s = real(0.0);
    for (var c = 0u; c < P.classes; c++) {
        s += exp_r(scratch[at + c] - m);
    }
    return sample_loss((m - scratch[at + t]) + log_r(s));
}

// Normalises, activates and masks block k's rows [N, out] in place at scratch[rows ..]
// (γ and β as θ holds them), counting the units whose side of a kink differs from the base
// pass. Returns the count.
fn finish_block(k: u32, rows: u32) -> u32 {
    let outs = layer(k, 1u);
    if (layer(k, 5u) == BATCH_NORM) {
        let bn_eps = eps[0]; // read once: a storage read in the loop costs one per column
        for (var c = 0u; c < outs; c++) {
            var mean = real(0.0);
            for (var n = 0u; n < P.n; n++) {
                mean += scratch[rows + n * outs + c];
            }
            mean = mean / real(P.n);
            var var_ = real(0.0);
            for (var n = 0u; n < P.n; n++) {
                let d = scratch[rows + n * outs + c] - mean;
                var_ += d * d;
            }
            let inv = real(1.0) / sqrt(var_ / real(P.n) + bn_eps);
            for (var n = 0u; n < P.n; n++) {
                let at = rows + n * outs + c;
                scratch[at] = norm_param(k, c, false) * ((scratch[at] - mean) * inv) + norm_param(k, c, true);
            }
        }
    }
    var flips = 0u;
    for (var n = 0u; n < P.n; n++) {
        flips += finish_row(k, rows + n * outs, n, layer(k, 5u) == LAYER_NORM, NONE, real(0.0), real(0.0));
    }
    return flips;
}

// Block k's row of sample n at scratch[at ..], in place: LayerNorm if `normalise` (γ_j and β_j
// moved by dg and db at unit j; NONE: none moved), then activation and mask, in one pass over
// the row after the statistics. Returns its kink crossings.
fn finish_row(k: u32, at: u32, n: u32, normalise: bool, j: u32, dg: real, db: real) -> u32 {
    let outs = layer(k, 1u);
    var mean = real(0.0);
    var inv = real(1.0);
    if (normalise) {
        for (var c = 0u; c < outs; c++) {
            mean += scratch[at + c];
        }
        mean = mean / real(outs);
        var var_ = real(0.0);
        for (var c = 0u; c < outs; c++) {
            let d = scratch[at + c] - mean;
            var_ += d * d;
        }
        inv = real(1.0) / sqrt(var_ / real(outs) + eps[1]);
    }
    var flips = 0u;
    for (var c = 0u; c < outs; c++) {
        var y = scratch[at + c];
        if (normalise) {
            var gamma = norm_param(k, c, false);
            var beta = norm_param(k, c, true);
            if (c == j) {
                gamma += dg;
                beta += db;
            }
            y = gamma * ((y - mean) * inv) + beta;
        }
        if (crosses_kink(ACTIVATION, y, base_at(layer(k, 8u) + n * outs + c))) {
            flips += 1u;
        }
        scratch[at + c] = activate(ACTIVATION, y) * mask(k, n, c);
    }
    return flips;
}

// LayerNorm block l's sample n, moved by d at unit j's affine output or by dg, db at γ_j, β_j:
// block l + 1's affine output row at scratch[out ..], without a dense product. A unit c ≠ j that
// stays active under ReLU changes by m_c·γ_c·((z_c − μ)·α − κ), with α = 1/σ' − 1/σ and
// κ = d/(F·σ'), so together they move the row by α·U_n − κ·V_n, where the base pass gives
// U_n = Σ_active m_c·γ_c·(z_c − μ)·W[c, :] and V_n = Σ_active m_c·γ_c·W[c, :]. Unit j and the units
// that cross the kink are then corrected exactly. σ'² − σ² is formed from d directly, so α
// carries no cancellation. Returns the kink crossings.
fn layer_norm_row_update(l: u32, n: u32, j: u32, d: real, dg: real, db: real, out: u32) -> u32 {
    let f = layer(l, 1u);
    let next = layer(l + 1u, 1u);
    let z = layer(l, 4u) + n * f;
    let y = layer(l, 8u) + n * f;
    let a = layer(l, 9u) + n * f;
    let w = layer(l + 1u, 2u);
    let fr = real(f);
    var mean = real(0.0);
    for (var c = 0u; c < f; c++) {
        mean += base_at(z + c);
    }
    mean = mean / fr;
    var var_ = real(0.0);
    for (var c = 0u; c < f; c++) {
        let e = base_at(z + c) - mean;
        var_ += e * e;
    }
    var_ = var_ / fr;
    let dvar = (real(2.0) * d * (base_at(z + j) - mean) + d * d * (real(1.0) - real(1.0) / fr)) / fr;
    let s = sqrt(var_ + eps[1]);
    let s_new = sqrt(var_ + dvar + eps[1]);
    let alpha = -dvar / (s * s_new * (s + s_new));
    let kappa = d / (fr * s_new);
    let mean_new = mean + d / fr;
    let sums = layer(l, 11u) + 2u * n * next;
    let z_next = layer(l + 1u, 4u) + n * next;
    for (var k = 0u; k < next; k++) {
        scratch[out + k] = base_at(z_next + k) + alpha * base_at(sums + k) - kappa * base_at(sums + next + k);
    }
    var flips = 0u;
    for (var c = 0u; c < f; c++) {
        let moved = c == j;
        if (!moved && d == real(0.0)) {
            continue; // only γ_j or β_j moved: no other unit changes
        }
        var zc = base_at(z + c);
        var gamma = norm_param(l, c, false);
        var beta = norm_param(l, c, true);
        if (moved) {
            zc += d;
            gamma += dg;
            beta += db;
        }
        let y_new = gamma * ((zc - mean_new) / s_new) + beta;
        let crossed = crosses_kink(ACTIVATION, y_new, base_at(y + c));
        if (crossed) {
            flips += 1u;
        }
        if (!moved && !crossed) {
            continue;
        }
        let m = mask(l, n, c);
        var linear = real(0.0);
        if (base_at(y + c) > real(0.0)) {
            linear = m * norm_param(l, c, false) * ((base_at(z + c) - mean) * alpha - kappa);
        }
        let correction = activate(ACTIVATION, y_new) * m - base_at(a + c) - linear;
        for (var k = 0u; k < next; k++) {
            scratch[out + k] += correction * theta[w + c * next + k];
        }
    }
    return flips;
}

// LayerNorm block l's sample n, with unit j's affine output at z_j and γ_j, β_j moved by dg, db,
// under any activation: the row recomputed at scratch[row ..], then block l + 1's affine output
// at scratch[out ..] by a dense product. Returns the kink crossings.
fn layer_norm_row_dense(l: u32, n: u32, j: u32, z_j: real, dg: real, db: real, row: u32, out: u32) -> u32 {
    let outs = layer(l, 1u);
    for (var c = 0u; c < outs; c++) {
        scratch[row + c] = base_at(layer(l, 4u) + n * outs + c);
    }
    scratch[row + j] = z_j;
    let flips = finish_row(l, row, n, true, j, dg, db);
    dense_row(l + 1u, row, out);
    return flips;
}

// rows_out [N, out_k] = rows_in [N, in_k] · W_k + b_k
fn dense(k: u32, rows_in: u32, rows_out: u32) {
    for (var n = 0u; n < P.n; n++) {
        dense_row(k, rows_in + n * layer(k, 0u), rows_out + n * layer(k, 1u));
    }
}

// The summed loss and kink crossings of a batch whose block l output changed by scratch[col + n]
// in column j of each sample n, when block l + 1 has BatchNorm and block l + 2 is the logits.
// Column c of block l + 1's affine output moves by that change times W_{l+1}[j, c]; the column's
// statistics, normalised values, activations (times the dropout mask) and their products with
// row c of the logits' weight are formed at once, the N·C logits held in registers (ROWS and
// CLASSES fix the loops over them). The general route instead writes the rank-one update, the
// normalised rows and the logits to scratch and reads them back: on lavapipe every storage read
// inside a loop costs a lane-by-lane loop, and this reads one storage number a column (the
// perturbed row's weight) and about 2N + C + 2 from `top_consts`, a uniform array, whose reads
// compile to plain gathers. The arithmetic is the general route's, in the same order.
struct Top {
    total: real,
    flips: u32,
}

fn batchnorm_top(l: u32, j: u32, col: u32, logits_at: u32) -> Top {
    let k = l + 1u;
    let outs = layer(k, 1u);
    let w_row = layer(k, 2u) + j * outs;
    let w_top = 0u;
    let b_top = outs * CLASSES;
    let z = b_top + CLASSES;
    let y_base = z + ROWS * outs;
    let has_mask = layer(k, 10u) != NONE;
    let masks = y_base + ROWS * outs;
    let g = select(masks, masks + ROWS * outs, has_mask);
    let b = g + outs;
    let bn_eps = eps[0]; // read once: a storage read in the loop costs one per column
    var change: array<real, MAX_ROWS>;
    var logits: array<real, MAX_LOGITS>;
    for (var n = 0u; n < ROWS; n++) {
        change[n] = scratch[col + n];
        for (var t = 0u; t < CLASSES; t++) {
            logits[n * CLASSES + t] = top_const(b_top + t);
        }
    }
    var flips = 0u;
    for (var c = 0u; c < outs; c++) {
        let w = theta[w_row + c];
        var v: array<real, MAX_ROWS>;
        var mean = real(0.0);
        for (var n = 0u; n < ROWS; n++) {
            v[n] = top_const(z + n * outs + c) + change[n] * w;
            mean += v[n];
        }
        mean = mean / real(ROWS);
        var spread = real(0.0);
        for (var n = 0u; n < ROWS; n++) {
            let e = v[n] - mean;
            spread += e * e;
        }
        let inv = real(1.0) / sqrt(spread / real(ROWS) + bn_eps);
        let gamma = top_const(g + c);
        let beta = top_const(b + c);
        var w_out: array<real, MAX_CLASSES>;
        for (var t = 0u; t < CLASSES; t++) {
            w_out[t] = top_const(w_top + c * CLASSES + t);
        }
        for (var n = 0u; n < ROWS; n++) {
            let y = gamma * ((v[n] - mean) * inv) + beta;
            if (crosses_kink(ACTIVATION, y, top_const(y_base + n * outs + c))) {
                flips += 1u;
            }
            var a = activate(ACTIVATION, y);
            if (has_mask) {
                a *= top_const(masks + n * outs + c);
            }
            for (var t = 0u; t < CLASSES; t++) {
                logits[n * CLASSES + t] += a * w_out[t];
            }
        }
    }
    // The loss from scratch, not from registers: unrolled over the rows and classes, its
    // exponentials would take lavapipe longer to compile than they take to read back.
    var total = real(0.0);
    for (var n = 0u; n < ROWS; n++) {
        for (var t = 0u; t < CLASSES; t++) {
            scratch[logits_at + n * CLASSES + t] = logits[n * CLASSES + t];
        }
    }
    for (var n = 0u; n < P.n; n++) {
        total += row_loss(logits_at + n * CLASSES, labels[n]);
    }
    return Top(total, flips);
}

// Whether a block above l has BatchNorm, whose statistics couple the samples.
fn coupled_above(l: u32) -> bool {
    for (var k = l + 1u; k < P.depth; k++) {
        if (layer(k, 5u) == BATCH_NORM) {
            return true;
        }
    }
    return false;
}

// Whether sample n's affine output of block k at scratch[row ..] differs from the base pass.
fn row_moved(k: u32, n: u32, row: u32) -> bool {
    let outs = layer(k, 1u);
    for (var c = 0u; c < outs; c++) {
        if (scratch[row + c] != base_at(layer(k, 4u) + n * outs + c)) {
            return true;
        }
    }
    return false;
}

@compute @workgroup_size(64)
fn perturbed_losses(@builtin(global_invocation_id) gid: vec3<u32>) {
    let q = gid.y * P.row_width + gid.x;
    if (q >= P.perturbations) {
        return;
    }
    let flat = pert[2u * q];
    let delta = select(hstep[0], -hstep[0], pert[2u * q + 1u] == 1u);

    // Which block, what it moves, and which (input i, unit j).
    var l = 0u;
    var moves = MOVES_W;
    var i = 0u;
    var j = 0u;
    for (var k = 0u; k < P.depth; k++) {
        let ins = layer(k, 0u);
        let outs = layer(k, 1u);
        let w = layer(k, 2u);
        let b = layer(k, 3u);
        if (flat >= w && flat < w + ins * outs) {
            l = k;
            moves = MOVES_W;
            i = (flat - w) / outs;
            j = (flat - w) % outs;
        } else if (flat >= b && flat < b + outs) {
            l = k;
            moves = MOVES_B;
            j = flat - b;
        } else if (layer(k, 5u) != NO_NORM && flat >= layer(k, 6u) && flat < layer(k, 6u) + outs) {
            l = k;
            moves = MOVES_GAMMA;
            j = flat - layer(k, 6u);
        } else if (layer(k, 5u) != NO_NORM && flat >= layer(k, 7u) && flat < layer(k, 7u) + outs) {
            l = k;
            moves = MOVES_BETA;
            j = flat - layer(k, 7u);
        }
    }

    let outs = layer(l, 1u);
    let last = P.depth - 1u;
    let norm = layer(l, 5u);
    let col = q * P.scratch_stride;
    let rows_a = col + P.n;
    let rows_b = rows_a + P.n * P.max_width;

    // Column j of z_l, per sample, into scratch[col ..]; `moved` says whether any changed.
    var moved = moves == MOVES_GAMMA || moves == MOVES_BETA;
    for (var n = 0u; n < P.n; n++) {
        let dz = unit_change(moves, l, n, i, delta);
        moved = moved || dz != real(0.0);
        scratch[col + n] = base_at(layer(l, 4u) + n * outs + j) + dz;
    }
    var total = real(0.0);
    if (!moved) {
        // A weight whose input is 0 in every sample changes nothing.
        for (var n = 0u; n < P.n; n++) {
            total += base_loss[n];
        }
        out_loss[q] = total / real(P.n);
        out_flips[q] = 0u;
        return;
    }
    var flips = 0u;
    if (l == last) {
        // The logits themselves: copy each row, change unit j.
        for (var n = 0u; n < P.n; n++) {
            for (var c = 0u; c < outs; c++) {
                scratch[rows_a + c] = base_at(layer(l, 4u) + n * outs + c);
            }
            scratch[rows_a + j] = scratch[col + n];
            total += row_loss(rows_a, labels[n]);
        }
        out_loss[q] = total / real(P.n);
        out_flips[q] = 0u;
        return;
    }

    let dg = select(real(0.0), delta, moves == MOVES_GAMMA);
    let db = select(real(0.0), delta, moves == MOVES_BETA);
    let next_outs = layer(l + 1u, 1u);
    if (norm == LAYER_NORM) {
        // Each sample's row moves with unit j (or with γ_j, β_j). One whose unit j did not move
        // (its input to the weight is 0) keeps its rows: block l + 1's affine output is the
        // base pass's.
        let gamma_or_beta = moves == MOVES_GAMMA || moves == MOVES_BETA;
        for (var n = 0u; n < P.n; n++) {
            let out_row = rows_b + n * next_outs;
            let z_j = scratch[col + n];
            let unmoved = !gamma_or_beta && z_j == base_at(layer(l, 4u) + n * outs + j);
            // Column j is spent: it now says whether the row moved, which spares independent
            // rows above a copy of the base row and row_moved's comparison with it. BatchNorm
            // above reads every row.
            scratch[col + n] = select(real(1.0), real(0.0), unmoved);
            if (unmoved) {
                if (coupled_above(l)) {
                    for (var c = 0u; c < next_outs; c++) {
                        scratch[out_row + c] = base_at(layer(l + 1u, 4u) + n * next_outs + c);
                    }
                }
                continue;
            }
            if (layer(l, 11u) != NONE) {
                let d = unit_change(moves, l, n, i, delta);
                flips += layer_norm_row_update(l, n, j, d, dg, db, out_row);
            } else {
                flips += layer_norm_row_dense(l, n, j, z_j, dg, db, rows_a + n * outs, out_row);
            }
        }
    } else {
        // Column j alone: BatchNorm's statistics of that column over the batch.
        var gamma = real(1.0);
        var beta = real(0.0);
        var mean = real(0.0);
        var inv = real(1.0);
        if (norm == BATCH_NORM) {
            gamma = norm_param(l, j, false) + dg;
            beta = norm_param(l, j, true) + db;
            for (var n = 0u; n < P.n; n++) {
                mean += scratch[col + n];
            }
            mean = mean / real(P.n);
            var spread = real(0.0);
            for (var n = 0u; n < P.n; n++) {
                let d = scratch[col + n] - mean;
                spread += d * d;
            }
            inv = real(1.0) / sqrt(spread / real(P.n) + eps[0]);
        }
        for (var n = 0u; n < P.n; n++) {
            var y = scratch[col + n];
            if (norm == BATCH_NORM) {
                y = gamma * ((y - mean) * inv) + beta;
            }
            if (crosses_kink(ACTIVATION, y, base_at(layer(l, 8u) + n * outs + j))) {
                flips += 1u;
            }
            let a = activate(ACTIVATION, y) * mask(l, n, j);
            scratch[col + n] = a - base_at(layer(l, 9u) + n * outs + j);
        }
        if (ROWS > 0u && l + 2u == last && layer(l + 1u, 5u) == BATCH_NORM) {
            let top = batchnorm_top(l, j, col, rows_a);
            out_loss[q] = top.total / real(P.n);
            out_flips[q] = flips + top.flips;
            return;
        }
        // Block l + 1's affine output: its base plus Δa[:, j] ⊗ W_{l+1}[j, :].
        let w_row = layer(l + 1u, 2u) + j * next_outs;
        for (var n = 0u; n < P.n; n++) {
            for (var c = 0u; c < next_outs; c++) {
                let z = base_at(layer(l + 1u, 4u) + n * next_outs + c);
                scratch[rows_b + n * next_outs + c] = z + scratch[col + n] * theta[w_row + c];
            }
        }
    }

    if (!coupled_above(l)) {
        // The samples are independent from here on: a row that did not move keeps its base
        // loss, and each one that did is carried up alone, between two one-row buffers.
        let one = rows_b + P.n * P.max_width;
        for (var n = 0u; n < P.n; n++) {
            let row = rows_b + n * next_outs;
            var moved_row: bool;
            if (norm == LAYER_NORM) {
                moved_row = scratch[col + n] != real(0.0);
            } else {
                moved_row = row_moved(l + 1u, n, row);
            }
            if (!moved_row) {
                total += base_loss[n];
                continue;
            }
            var cur = row;
            var other = one;
            for (var k = l + 1u; k + 1u < last; k++) {
                flips += finish_row(k, cur, n, layer(k, 5u) == LAYER_NORM, NONE, real(0.0), real(0.0));
                dense_row(k + 1u, cur, other);
                cur = other;
                other = select(one, one + P.max_width, cur == one);
            }
            if (l + 1u < last) {
                let normalise = layer(last - 1u, 5u) == LAYER_NORM;
                flips += finish_row(last - 1u, cur, n, normalise, NONE, real(0.0), real(0.0));
                logits_row(cur, other);
                cur = other;
            }
            total += row_loss(cur, labels[n]);
        }
        out_loss[q] = total / real(P.n);
        out_flips[q] = flips;
        return;
    }
    // Blocks l + 1 … last, every row, ping-ponging between the two scratch buffers.
    var cur = rows_b;
    var other = rows_a;
    for (var k = l + 1u; k + 1u < last; k++) {
        flips += finish_block(k, cur);
        dense(k + 1u, cur, other);
        let t = cur;
        cur = other;
        other = t;
    }
    if (l + 1u < last) {
        flips += finish_block(last - 1u, cur);
        let ins = layer(last, 0u);
        for (var n = 0u; n < P.n; n++) {
            logits_row(cur + n * ins, other + n * P.classes);
        }
        cur = other;
    }
    for (var n = 0u; n < P.n; n++) {
        total += row_loss(cur + n * P.classes, labels[n]);
    }
    out_loss[q] = total / real(P.n);
    out_flips[q] = flips;
}
