// Softmax with cross-entropy loss, per row:   logits: [R, C], labels: [N] (row r has label r % N)
//
//   loss_r   = logsumexp(logits_r) − logits_r[t]      (max subtracted first: no overflow)
//   dlogits  = (softmax(logits_r) − onehot(t)) / N    (exact gradient of the mean loss)
//
// The loss is log-softmax's, or the book's −log(y + 1e-7) for a net that follows the book
// (cross_entropy.wgsl); the gradient is log-softmax's for both, as the book's backward pass. Rows whose label is INVALID (padding of a last, partial evaluation batch)
// get loss 0 and are not counted.

#include "cross_entropy.wgsl"

struct Params {
    rows: u32,      // copies · N
    classes: u32,   // C
    n: u32,         // rows per copy; the loss is a mean over these
    row_width: u32, // invocations per grid row
}

const INVALID: u32 = 0xffffffffu;

override WRITE_GRAD: bool = false;

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> logits: array<real>;
@group(0) @binding(2) var<storage, read> labels: array<u32>;
@group(0) @binding(3) var<storage, read_write> row_loss: array<real>;
@group(0) @binding(4) var<storage, read_write> row_correct: array<u32>;
@group(0) @binding(5) var<storage, read_write> dlogits: array<real>;

@compute @workgroup_size(64)
fn softmax_ce(@builtin(global_invocation_id) gid: vec3<u32>) {
    let r = gid.y * P.row_width + gid.x;
    if (r >= P.rows) {
        return;
    }
    let t = labels[r % P.n];
    let base = r * P.classes;
    var m = logits[base];
    var arg = 0u;
    for (var c = 1u; c < P.classes; c++) {
        let v = logits[base + c];
        if (v > m) {
            m = v;
            arg = c;
        }
    }
    var s = real(0.0);
    for (var c = 0u; c < P.classes; c++) {
        s += exp_r(logits[base + c] - m);
    }
    if (t == INVALID) {
        row_loss[r] = real(0.0);
        row_correct[r] = 0u;
    } else {
        // (m − z_t) first: both are large, their difference is small and exact-ish.
        row_loss[r] = sample_loss((m - logits[base + t]) + log_r(s));
        row_correct[r] = select(0u, 1u, arg == t);
    }
    if (WRITE_GRAD) {
        let scale = real(1.0) / (s * real(P.n));
        let inv_n = real(1.0) / real(P.n);
        for (var c = 0u; c < P.classes; c++) {
            var g = exp_r(logits[base + c] - m) * scale;
            if (c == t) {
                g -= inv_n;
            }
            dlogits[base + c] = g;
        }
    }
}
