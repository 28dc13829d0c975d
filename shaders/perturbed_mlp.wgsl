// Incremental perturbed losses for an MLP: one invocation per perturbation (flat parameter
// index, sign), each evaluating the real loss L(θ ± h·e_i) over the batch.
//
// Perturbing W_l[i, j] (or b_l[j]) changes only unit j of layer l's affine output, by ±h times
// its input (or ±h). So, per sample n:
//   - if that input is 0, nothing changes: the sample's loss is the unperturbed one;
//   - else unit j's new pre-activation is a = pre_l[n, j] ± h·in[n, i], its activation is
//     recomputed, and every layer above is recomputed for that sample from the changed unit
//     (the layer right above by a rank-one update of its unperturbed pre-activation).
// Everything unperturbed (inputs, activations, per-sample losses, parameters) is read-only and
// shared; each invocation writes only its own loss, kink count and scratch rows, so no
// evaluation can see another's change.
//
// Dropout after a hidden activation is a fixed mask during a check: the unit's output is
// mask·f(a), with the mask the unperturbed pass drew, so a masked unit changes nothing above.
//
// ReLU's linear regime: while a change dz of unit j's output keeps every unit of the hidden
// layers above on its side of the kink, each of them is linear in dz, and the logits move by
// exactly dz times a row [classes] that the host formed once from the unperturbed pass
// (src/numgrad/linear_regime.rs), with the open interval of dz for which that holds. A change
// inside it reads one row instead of the dense layers; any other takes them, and they count the
// units that cross.
//
// layers[l]: in, out, W offset, b offset, pre offset, act offset (after dropout), mask offset
// (NONE: no dropout), linear-regime rows [N, out, classes] and intervals [N, out, 2] offsets
// (NONE: none, the dense layers serve every change), all into `base`; 9 words a layer.

#include "activations.wgsl"
#include "dense_row.wgsl"
#include "cross_entropy.wgsl"

struct Params {
    perturbations: u32,   // invocations in this dispatch
    depth: u32,           // affine layers
    n: u32,               // batch rows
    classes: u32,
    scratch_stride: u32,  // reals of scratch per invocation (two rows of the widest layer)
    row_width: u32,
    // This dispatch's slice of the batch: lavapipe stops an invocation after 65,535 loop
    // iterations, so long batches of deep nets go in several dispatches that accumulate.
    n_begin: u32,
    n_end: u32,
}

// The hidden layers' ACT_ kind (activations.wgsl), fixed when the host builds the pipeline:
// lavapipe runs every arm of a switch under a mask, so a kind read at run time would make each
// ReLU unit pay for sigmoid's and tanh's exponentials too.
override ACTIVATION: u32;

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> layers: array<u32>;
@group(0) @binding(2) var<storage, read> theta: array<real>;
@group(0) @binding(3) var<storage, read> x: array<real>;         // [N, D]
@group(0) @binding(4) var<storage, read> labels: array<u32>;     // [N]
@group(0) @binding(5) var<storage, read> base: array<real>;      // pre and act of every layer
@group(0) @binding(6) var<storage, read> base_loss: array<real>; // [N] per-sample loss
@group(0) @binding(7) var<storage, read> pert: array<u32>;       // (flat index, sign) pairs
@group(0) @binding(8) var<storage, read> hstep: array<real>;
@group(0) @binding(9) var<storage, read_write> out_loss: array<real>;
@group(0) @binding(10) var<storage, read_write> out_flips: array<u32>;
@group(0) @binding(11) var<storage, read_write> scratch: array<real>;

const NONE: u32 = 0xffffffffu;

fn layer(l: u32, field: u32) -> u32 {
    return layers[9u * l + field];
}

// The dropout mask of hidden layer l at (sample n, unit c): 0 or 1/(1 − p), 1 without dropout.
fn mask(l: u32, n: u32, c: u32) -> real {
    let at = layer(l, 6u);
    if (at == NONE) {
        return real(1.0);
    }
    return base[at + n * layer(l, 1u) + c];
}


// Softmax-CE of the row held in scratch[row_at .. row_at + classes].
fn row_loss(row_at: u32, t: u32) -> real {
    var m = scratch[row_at];
    for (var c = 1u; c < P.classes; c++) {
        m = max(m, scratch[row_at + c]);
    }
    var s = real(0.0);
    for (var c = 0u; c < P.classes; c++) {
        s += exp_r(scratch[row_at + c] - m);
    }
    return sample_loss((m - scratch[row_at + t]) + log_r(s));
}

// Softmax-CE of the logits base[logits ..] moved by dz times base[row ..], formed on the fly.
fn moved_logits_loss(logits: u32, row: u32, dz: real, t: u32) -> real {
    var m = base[logits] + dz * base[row];
    for (var c = 1u; c < P.classes; c++) {
        m = max(m, base[logits + c] + dz * base[row + c]);
    }
    var s = real(0.0);
    for (var c = 0u; c < P.classes; c++) {
        s += exp_r(base[logits + c] + dz * base[row + c] - m);
    }
    return sample_loss((m - (base[logits + t] + dz * base[row + t])) + log_r(s));
}

@compute @workgroup_size(64)
fn perturbed_losses(@builtin(global_invocation_id) gid: vec3<u32>) {
    let q = gid.y * P.row_width + gid.x;
    if (q >= P.perturbations) {
        return;
    }
    let flat = pert[2u * q];
    let delta = select(hstep[0], -hstep[0], pert[2u * q + 1u] == 1u);

    // Which layer, and which (input i, unit j) of it; i = NONE for a bias.
    var l = 0u;
    var i = NONE;
    var j = 0u;
    for (var k = 0u; k < P.depth; k++) {
        let w_off = layer(k, 2u);
        let b_off = layer(k, 3u);
        let outs = layer(k, 1u);
        if (flat >= w_off && flat < w_off + layer(k, 0u) * outs) {
            l = k;
            i = (flat - w_off) / outs;
            j = (flat - w_off) % outs;
        } else if (flat >= b_off && flat < b_off + outs) {
            l = k;
            j = flat - b_off;
        }
    }

    let ins = layer(l, 0u);
    let outs = layer(l, 1u);
    let last = P.depth - 1u;
    let row_a = q * P.scratch_stride;
    let row_b = row_a + P.scratch_stride / 2u;
    var total = real(0.0);
    var flips = 0u;
    for (var n = P.n_begin; n < P.n_end; n++) {
        var input = real(1.0);
        if (i != NONE) {
            if (l == 0u) {
                input = x[n * ins + i];
            } else {
                input = base[layer(l - 1u, 5u) + n * ins + i];
            }
        }
        if (input == real(0.0)) {
            total += base_loss[n];
            continue;
        }
        let base_a = base[layer(l, 4u) + n * outs + j];
        let a = base_a + delta * input;
        if (l == last) {
            // The perturbed unit is a logit: copy the row, change one entry.
            for (var c = 0u; c < outs; c++) {
                scratch[row_a + c] = base[layer(l, 4u) + n * outs + c];
            }
            scratch[row_a + j] = a;
            total += row_loss(row_a, labels[n]);
            continue;
        }
        if (crosses_kink(ACTIVATION, a, base_a)) {
            flips += 1u;
        }
        let dz = activate(ACTIVATION, a) * mask(l, n, j) - base[layer(l, 5u) + n * outs + j];
        // Layer l+1: its unperturbed pre-activation plus dz times row j of its W.
        let up = l + 1u;
        let up_out = layer(up, 1u);
        let up_pre = layer(up, 4u) + n * up_out;
        let w_row = layer(up, 2u) + j * up_out;
        if (up == last) {
            // The common case (the last hidden layer perturbed): the changed logits are formed
            // on the fly, twice (max, then sum), instead of through scratch memory.
            var m = base[up_pre] + dz * theta[w_row];
            for (var c = 1u; c < up_out; c++) {
                m = max(m, base[up_pre + c] + dz * theta[w_row + c]);
            }
            var s = real(0.0);
            for (var c = 0u; c < up_out; c++) {
                s += exp_r(base[up_pre + c] + dz * theta[w_row + c] - m);
            }
            let t = labels[n];
            total += sample_loss((m - (base[up_pre + t] + dz * theta[w_row + t])) + log_r(s));
            continue;
        }
        let rows = layer(l, 7u);
        if (rows != NONE) {
            let unit = n * outs + j;
            let bounds = layer(l, 8u) + 2u * unit;
            if (dz > base[bounds] && dz < base[bounds + 1u]) {
                let logits = layer(last, 4u) + n * P.classes;
                total += moved_logits_loss(logits, rows + unit * P.classes, dz, labels[n]);
                continue;
            }
        }
        for (var c = 0u; c < up_out; c++) {
            let base_up = base[up_pre + c];
            let v = base_up + dz * theta[w_row + c];
            scratch[row_a + c] = v;
            if (crosses_kink(ACTIVATION, v, base_up)) {
                flips += 1u;
            }
            scratch[row_a + c] = activate(ACTIVATION, v) * mask(up, n, c);
        }
        // Layers above that: dense, per sample, ping-ponging between two scratch rows (which hold
        // activations, or logits for the last layer).
        var src = row_a;
        var dst = row_b;
        for (var k = up + 1u; k <= last; k++) {
            dense_row(k, src, dst);
            let k_out = layer(k, 1u);
            for (var c = 0u; c < k_out && k < last; c++) {
                let s = scratch[dst + c];
                if (crosses_kink(ACTIVATION, s, base[layer(k, 4u) + n * k_out + c])) {
                    flips += 1u;
                }
                scratch[dst + c] = activate(ACTIVATION, s) * mask(k, n, c);
            }
            let t = src;
            src = dst;
            dst = t;
        }
        total += row_loss(src, labels[n]);
    }
    if (P.n_begin > 0u) {
        total += out_loss[q];
        flips += out_flips[q];
    }
    if (P.n_end == P.n) {
        total = total / real(P.n);
    }
    out_loss[q] = total;
    out_flips[q] = flips;
}
