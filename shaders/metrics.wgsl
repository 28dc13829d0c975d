// Losses, accuracy counts and step bookkeeping, all on the GPU so a training loop never reads
// back between steps. Sums run in a fixed order (strided partial sums, then a fixed tree), so
// results are deterministic.
//
// The words of `state` and `stats` are named in words.wgsl.

#include "words.wgsl"
#include "softmax_row.wgsl"

struct Params {
    rows: u32,       // rows to reduce (N), or copies for copy_loss
    n: u32,          // rows per copy (copy_loss)
    window: u32,     // train_step_loss: slots of step_losses
    row_width: u32,
    classes: u32,    // train_step_loss: C of the logits
    _pad0: u32, _pad1: u32, _pad2: u32,
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> row_loss: array<real>;
@group(0) @binding(2) var<storage, read> row_correct: array<u32>;
@group(0) @binding(3) var<storage, read_write> stats: array<real>;
@group(0) @binding(4) var<storage, read_write> state: array<u32>;
@group(0) @binding(5) var<storage, read> labels: array<u32>;
@group(0) @binding(6) var<storage, read_write> step_losses: array<real>; // [window]: step t at t % window
@group(0) @binding(7) var<storage, read> logits: array<real>;            // train_step_loss: [N, C]
@group(0) @binding(8) var<storage, read_write> dlogits: array<real>;     // train_step_loss: [N, C]

const WG: u32 = 64u;

var<workgroup> part_loss: array<real, 64>;
var<workgroup> part_count: array<real, 64>;

fn tree_sum(lid: u32) {
    for (var stride = WG / 2u; stride > 0u; stride /= 2u) {
        workgroupBarrier();
        if (lid < stride) {
            part_loss[lid] += part_loss[lid + stride];
            part_count[lid] += part_count[lid + stride];
        }
    }
    workgroupBarrier();
}

// One pass's loss (mean over the batch, plus the L2 penalty) and correct count, from the rows'
// figures the softmax loss wrote.
@compute @workgroup_size(64)
fn train_metrics(@builtin(local_invocation_index) lid: u32) {
    var l = real(0.0);
    var c = real(0.0);
    for (var r = lid; r < P.rows; r += WG) {
        l += row_loss[r];
        c += real(row_correct[r]);
    }
    part_loss[lid] = l;
    part_count[lid] = c;
    tree_sum(lid);
    if (lid == 0u) {
        let loss = part_loss[0] / real(P.rows) + stats[STATS_L2_PENALTY];
        stats[STATS_LOSS_SUM] += loss;
        stats[STATS_LAST_LOSS] = loss;
        stats[STATS_CORRECT_SUM] += part_count[0];
    }
}

// The loss end of a training step, in one dispatch: softmax-CE of every row of the batch and
// its gradient, the step's loss (mean, plus the L2 penalty) and correct count summed in the same
// fixed order as train_metrics, the first step whose loss is not finite, and then t += 1 and
// the next batch. The last `window` steps' losses stay in step_losses, so a submit of that many
// steps can be read back once for all of them. The update that follows reads t + 1.
//
// FROM_ROWS: the rows' figures come from softmax_ce.wgsl instead, for batches whose rows, over
// 64 lanes, would take a lane past lavapipe's 65,535 loop iterations (src/train/metrics.rs).
override FROM_ROWS: bool = false;

@compute @workgroup_size(64)
fn train_step_loss(@builtin(local_invocation_index) lid: u32) {
    var l = real(0.0);
    var c = real(0.0);
    for (var r = lid; r < P.rows; r += WG) {
        if (FROM_ROWS) {
            l += row_loss[r];
            c += real(row_correct[r]);
        } else {
            let row = softmax_ce_row(r, labels[r], P.classes, P.rows, true);
            l += row.loss;
            c += real(row.correct);
        }
    }
    part_loss[lid] = l;
    part_count[lid] = c;
    tree_sum(lid);
    if (lid == 0u) {
        let loss = part_loss[0] / real(P.rows) + stats[STATS_L2_PENALTY];
        stats[STATS_LOSS_SUM] += loss;
        stats[STATS_LAST_LOSS] = loss;
        stats[STATS_CORRECT_SUM] += part_count[0];
        step_losses[state[STATE_STEP] % P.window] = loss;
        if (!is_finite_r(loss) && state[STATE_DIVERGED] == 0u) {
            state[STATE_DIVERGED] = state[STATE_STEP] + 1u;
            stats[STATS_DIVERGED_LOSS] = loss;
        }
        state[STATE_STEP] += 1u;
        state[STATE_BATCH] += 1u;
    }
}

// Accumulates one evaluation batch (padding rows excluded) and moves the eval cursor on.
@compute @workgroup_size(64)
fn eval_metrics(@builtin(local_invocation_index) lid: u32) {
    var l = real(0.0);
    var c = real(0.0);
    var valid = 0u;
    for (var r = lid; r < P.rows; r += WG) {
        if (labels[r] != INVALID) {
            l += row_loss[r];
            c += real(row_correct[r]);
        }
    }
    part_loss[lid] = l;
    part_count[lid] = c;
    tree_sum(lid);
    if (lid == 0u) {
        for (var r = 0u; r < P.rows; r++) {
            valid += select(0u, 1u, labels[r] != INVALID);
        }
        stats[STATS_EVAL_LOSS] += part_loss[0];
        stats[STATS_EVAL_CORRECT] += part_count[0];
        stats[STATS_EVAL_ROWS] += real(valid);
        state[STATE_EVAL_BATCH] += 1u;
    }
}

// Mean data loss of each parameter copy (perturbed-loss engine): out = stats[p].
// One invocation per copy, summing its rows in order.
@compute @workgroup_size(64)
fn copy_loss(@builtin(global_invocation_id) gid: vec3<u32>) {
    let p = gid.y * P.row_width + gid.x;
    if (p >= P.rows) {
        return;
    }
    var l = real(0.0);
    for (var r = 0u; r < P.n; r++) {
        l += row_loss[p * P.n + r];
    }
    stats[p] = l / real(P.n);
}
