//! One pass of a net over one batch, read back: the loss, the class scores and, with a backward
//! pass, the gradient. What a front that drives a net step by step between its own code asks of
//! it (Python's `wgrad.book`, whose users change the parameters in place between calls); the
//! trainer records its steps on the GPU instead and never reads one back.

use crate::error::Result;
use crate::gpu::{kernel, GpuBuffer, GpuContext};
use crate::nn::{Copies, Kernels, Mode, Model, Recorder, Workspace};
use crate::train::{train_metrics, StatsWord, STATE_WORDS, STATS_WORDS};

/// A label that marks a row with no target: it scores, but adds nothing to the loss.
pub const NO_LABEL: u32 = u32::MAX;

/// What a pass read back.
#[derive(Clone, Debug)]
pub struct PassOutput {
    /// The mean loss over the labelled rows, with the net's L2 term.
    pub loss: f64,
    /// Class scores (the last affine layer's output, before the softmax), [N, classes].
    pub logits: Vec<f64>,
    /// The gradient of the loss, laid out as `model.layout` (with `backward` only).
    pub grads: Option<Vec<f64>>,
}

/// Runs `model` on the batch (x [N, input], `labels` [N]) in `mode`, and its backward pass when
/// `backward`. Dropout masks are those of step 0 and `model.dropout_seed`, the masks a numerical
/// gradient of the same model holds, so the two can be compared. In [`Mode::Train`] BatchNorm's
/// running statistics are updated once ([`Model::read_state`] reads them).
pub fn run(
    ctx: &GpuContext,
    kernels: &Kernels,
    model: &Model,
    x: &[f64],
    labels: &[u32],
    mode: Mode,
    backward: bool,
) -> Result<PassOutput> {
    let rec = Recorder {
        ctx,
        kernels,
        model,
    };
    let rows = labels.len();
    let ws = Workspace::new(ctx, model, rows, 1, backward);
    ws.upload(ctx, x, labels, model.precision);
    let stats = GpuBuffer::real(ctx, "stats", STATS_WORDS, model.precision);
    // The step counter: word 0, the step that seeds dropout masks, is 0.
    let step = GpuBuffer::zeroed(ctx, "state", STATE_WORDS, 4);
    let mut dispatches = rec.l2_penalty(&stats);
    dispatches.extend(rec.forward_with(&ws, &Copies::Single, mode, &step, 0));
    if backward {
        dispatches.extend(rec.backward(&ws));
    }
    dispatches.push(train_metrics(&rec.gpu(), &ws, &stats, &step));
    kernel::run(ctx, &dispatches)?;
    let loss = stats.read_real(ctx, model.precision)?[StatsWord::LastLoss as usize];
    let logits = (ws.out.last())
        .expect("a net has layers")
        .read_real(ctx, model.precision)?;
    let grads = match backward {
        true => Some(model.read_grads(ctx)?),
        false => None,
    };
    Ok(PassOutput {
        loss,
        logits,
        grads,
    })
}
