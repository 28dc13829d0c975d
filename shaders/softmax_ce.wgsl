// Softmax with cross-entropy loss, per row (softmax_row.wgsl):   logits: [R, C], labels: [N]
// (row r has label r % N) -> row_loss, row_correct [R], and dlogits [R, C] when WRITE_GRAD.

#include "softmax_row.wgsl"

struct Params {
    rows: u32,      // copies · N
    classes: u32,   // C
    n: u32,         // rows per copy; the loss is a mean over these
    row_width: u32, // invocations per grid row
}

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
    let row = softmax_ce_row(r, labels[r % P.n], P.classes, P.n, WRITE_GRAD);
    row_loss[r] = row.loss;
    row_correct[r] = row.correct;
}
