// Softmax with cross-entropy loss of one row of logits [R, C], written once for the loss kernels
// that include it (softmax_ce.wgsl per row, metrics.wgsl's train_step_loss per batch). The
// including shader declares the bindings `logits` and `dlogits`.
//
//   loss     = logsumexp(z) − z_t                 (max subtracted first: no overflow)
//   dlogits  = (softmax(z) − onehot(t)) / N       (exact gradient of the mean loss)
//
// The loss is log-softmax's, or the book's −log(y + 1e-7) for a net that follows the book
// (cross_entropy.wgsl); the gradient is log-softmax's for both, as the book's backward pass. A
// row whose label is INVALID (padding of a last, partial evaluation batch) has loss 0 and is
// not counted correct.

#include "cross_entropy.wgsl"

const INVALID: u32 = 0xffffffffu;

struct RowLoss {
    loss: real,
    correct: u32,
}

// Row `r` with label `t`, `n` rows to the mean; dlogits written when `write_grad`.
fn softmax_ce_row(r: u32, t: u32, classes: u32, n: u32, write_grad: bool) -> RowLoss {
    let base = r * classes;
    var m = logits[base];
    var arg = 0u;
    for (var c = 1u; c < classes; c++) {
        let v = logits[base + c];
        if (v > m) {
            m = v;
            arg = c;
        }
    }
    var s = real(0.0);
    for (var c = 0u; c < classes; c++) {
        s += exp_r(logits[base + c] - m);
    }
    var out = RowLoss(real(0.0), 0u);
    if (t != INVALID) {
        // (m − z_t) first: both are large, their difference is small and exact-ish.
        out = RowLoss(sample_loss((m - logits[base + t]) + log_r(s)), select(0u, 1u, arg == t));
    }
    if (write_grad) {
        let scale = real(1.0) / (s * real(n));
        let inv_n = real(1.0) / real(n);
        for (var c = 0u; c < classes; c++) {
            var g = exp_r(logits[base + c] - m) * scale;
            if (c == t) {
                g -= inv_n;
            }
            dlogits[base + c] = g;
        }
    }
    return out;
}
