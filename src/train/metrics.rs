//! Losses, accuracy counts and step bookkeeping on the GPU (shaders/metrics.wgsl), so a training
//! loop never reads back between steps, and the named words of the two buffers they keep.
//!
//! Shapes: row_loss and row_correct [P, N] (from the softmax loss), labels [N]; `state` holds
//! [`STATE_WORDS`] u32 words and `stats` [`STATS_WORDS`] reals.

use bytemuck::{Pod, Zeroable};

use crate::gpu::kernel::{grid, shaders, Binding, Entry, KernelBindings, Placeholders};
use crate::gpu::{Dispatch, Gpu, GpuBuffer};
use crate::nn::layers::softmax_loss::{softmax_loss, SoftmaxBindings};
use crate::nn::Workspace;

/// Words of the GPU state buffer (u32), as shaders/words.wgsl names them (STATE_…).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StateWord {
    /// Completed training steps t.
    Step = 0,
    /// Batch number within the epoch.
    Batch = 1,
    /// The first step whose loss was not finite, + 1 (0: none).
    Diverged = 2,
    /// Evaluation batch number.
    EvalBatch = 3,
}

/// Words of the GPU stats buffer (reals), as shaders/words.wgsl names them (STATS_…).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatsWord {
    /// Σ step losses of the epoch.
    LossSum = 0,
    /// The last step's loss (mean data loss plus the L2 penalty).
    LastLoss = 1,
    /// Σ correct predictions of the epoch's steps.
    CorrectSum = 2,
    /// The L2 penalty of this step.
    L2Penalty = 3,
    /// Σ evaluation loss.
    EvalLoss = 4,
    /// Σ evaluation correct predictions.
    EvalCorrect = 5,
    /// Evaluation rows (padding excluded).
    EvalRows = 6,
    /// The loss of the first non-finite step.
    DivergedLoss = 7,
}

impl StateWord {
    const ALL: [StateWord; 4] = [
        StateWord::Step,
        StateWord::Batch,
        StateWord::Diverged,
        StateWord::EvalBatch,
    ];
}

impl StatsWord {
    const ALL: [StatsWord; 8] = [
        StatsWord::LossSum,
        StatsWord::LastLoss,
        StatsWord::CorrectSum,
        StatsWord::L2Penalty,
        StatsWord::EvalLoss,
        StatsWord::EvalCorrect,
        StatsWord::EvalRows,
        StatsWord::DivergedLoss,
    ];
}

/// u32 words of the state buffer.
pub const STATE_WORDS: usize = StateWord::ALL.len();
/// Reals of the stats buffer.
pub const STATS_WORDS: usize = StatsWord::ALL.len();

/// metrics.wgsl's Params.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Default)]
pub struct MetricsParams {
    /// Rows to reduce (N), or copies for copy_loss.
    pub rows: u32,
    /// Rows per copy (copy_loss).
    pub n: u32,
    /// Slots of `step_losses` (train_step_loss).
    pub window: u32,
    pub row_width: u32,
    /// Classes of the logits (train_step_loss).
    pub classes: u32,
    pub _pad: [u32; 3],
}

/// metrics.wgsl's buffers.
pub struct MetricsBindings<'a> {
    pub row_loss: &'a GpuBuffer,
    pub row_correct: &'a GpuBuffer,
    /// The stats words, or each copy's loss (copy_loss).
    pub stats: &'a GpuBuffer,
    pub state: Option<&'a GpuBuffer>,
    pub labels: &'a GpuBuffer,
    /// train_step_loss: the last steps' losses, step t at t % len.
    pub step_losses: Option<&'a GpuBuffer>,
    /// train_step_loss: the logits and their gradient, [N, C].
    pub logits: Option<&'a GpuBuffer>,
    pub dlogits: Option<&'a GpuBuffer>,
}

impl KernelBindings for MetricsBindings<'_> {
    type Params = MetricsParams;
    const ACCESS: &'static [Binding] = &[
        Binding::Read,
        Binding::Read,
        Binding::ReadWrite,
        Binding::ReadWrite,
        Binding::Read,
        Binding::ReadWrite,
        Binding::Read,
        Binding::ReadWrite,
    ];
    fn buffers<'a>(&'a self, unused: &'a Placeholders) -> Vec<&'a wgpu::Buffer> {
        vec![
            &self.row_loss.buffer,
            &self.row_correct.buffer,
            &self.stats.buffer,
            unused.word_rw(self.state),
            &self.labels.buffer,
            unused.real_rw(self.step_losses),
            unused.real(self.logits),
            unused.real_rw(self.dlogits),
        ]
    }
}

const TRAIN: Entry = Entry::new(shaders::METRICS, "train_metrics");
const STEP_LOSS: Entry = Entry::new(shaders::METRICS, "train_step_loss");
const STEP_LOSS_FROM_ROWS: Entry = STEP_LOSS.with(&[("FROM_ROWS", 1.0)]);
const EVAL: Entry = Entry::new(shaders::METRICS, "eval_metrics");
const COPY_LOSS: Entry = Entry::new(shaders::METRICS, "copy_loss");

/// `entry` of metrics.wgsl over `rows` rows of `ws` (the rows' figures, or the logits and their
/// gradient for train_step_loss).
fn metrics(
    gpu: &Gpu,
    entry: &Entry,
    ws: &Workspace,
    params: MetricsParams,
    bindings: (&GpuBuffer, Option<&GpuBuffer>, Option<&GpuBuffer>),
    groups: [u32; 3],
) -> Dispatch {
    let (stats, state, step_losses) = bindings;
    let step_loss = step_losses.is_some();
    let bindings = MetricsBindings {
        row_loss: &ws.row_loss,
        row_correct: &ws.row_correct,
        stats,
        state,
        labels: &ws.labels,
        step_losses,
        logits: step_loss.then(|| ws.logits()),
        dlogits: step_loss.then(|| ws.dlogits()).flatten(),
    };
    gpu.kernels
        .dispatch(gpu.ctx, entry, &params, &bindings, groups)
}

/// Params over `rows` rows, one workgroup.
fn over(rows: usize) -> MetricsParams {
    MetricsParams {
        rows: rows as u32,
        ..Default::default()
    }
}

/// One pass's loss (with the L2 penalty) and correct count into `stats`, from the rows'
/// figures of the softmax loss.
pub fn train_metrics(gpu: &Gpu, ws: &Workspace, stats: &GpuBuffer, state: &GpuBuffer) -> Dispatch {
    let params = over(ws.rows);
    metrics(
        gpu,
        &TRAIN,
        ws,
        params,
        (stats, Some(state), None),
        [1, 1, 1],
    )
}

/// The loss end of a training step: softmax-CE of the logits of `ws` (a training workspace) and
/// their gradient, the step's loss and correct count into `stats` and its loss into
/// `step_losses` (step t at t % its length, so a submit of up to that many steps is read back
/// once for all of them), divergence into `state`, and then the step counted and the batch
/// cursor moved on: the update after it reads t + 1. One dispatch, or two where one workgroup's
/// lanes would loop past lavapipe's limit over the rows' classes ([`fused_loss_fits`]).
pub fn train_step_loss(
    gpu: &Gpu,
    ws: &Workspace,
    classes: usize,
    (stats, state): (&GpuBuffer, &GpuBuffer),
    step_losses: &GpuBuffer,
) -> Vec<Dispatch> {
    let dlogits = ws.dlogits().expect("a training workspace");
    let params = MetricsParams {
        window: step_losses.len as u32,
        classes: classes as u32,
        ..over(ws.rows)
    };
    let buffers = (stats, Some(state), Some(step_losses));
    if fused_loss_fits(ws.rows, classes) {
        return vec![metrics(gpu, &STEP_LOSS, ws, params, buffers, [1, 1, 1])];
    }
    let rows = SoftmaxBindings {
        logits: ws.logits(),
        labels: &ws.labels,
        row_loss: &ws.row_loss,
        row_correct: &ws.row_correct,
        dlogits: Some(dlogits),
    };
    vec![
        softmax_loss(gpu, ws.rows, 1, classes, &rows),
        metrics(gpu, &STEP_LOSS_FROM_ROWS, ws, params, buffers, [1, 1, 1]),
    ]
}

/// Whether train_step_loss's 64 lanes can take `rows` rows of `classes` logits each (three
/// passes over a row's classes) within lavapipe's 65,535 loop iterations an invocation, with
/// room for the loop over rows itself.
pub fn fused_loss_fits(rows: usize, classes: usize) -> bool {
    rows.div_ceil(64) * (3 * classes + 1) <= 60_000
}

/// An evaluation batch's sums into `stats`, and the evaluation cursor moved on in `state`.
pub fn eval_metrics(gpu: &Gpu, ws: &Workspace, stats: &GpuBuffer, state: &GpuBuffer) -> Dispatch {
    let params = over(ws.rows);
    metrics(
        gpu,
        &EVAL,
        ws,
        params,
        (stats, Some(state), None),
        [1, 1, 1],
    )
}

/// The mean data loss of each copy into `out[p]`.
pub fn copy_loss(gpu: &Gpu, ws: &Workspace, out: &GpuBuffer) -> Dispatch {
    let (groups, row_width) = grid(ws.copies);
    let params = MetricsParams {
        n: ws.rows as u32,
        row_width,
        ..over(ws.copies)
    };
    metrics(gpu, &COPY_LOSS, ws, params, (out, None, None), groups)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (name, value) of the `const PREFIX…: u32 = Nu;` lines of shaders/words.wgsl.
    fn wgsl_words(prefix: &str) -> Vec<(String, usize)> {
        include_str!("../../shaders/words.wgsl")
            .lines()
            .filter_map(|line| {
                let rest = line.strip_prefix("const ")?.strip_prefix(prefix)?;
                let (name, value) = rest.split_once(": u32 = ")?;
                let value = value.split(';').next()?.trim_end_matches('u');
                Some((name.to_string(), value.parse().ok()?))
            })
            .collect()
    }

    /// `LossSum` → `LOSS_SUM`
    fn screaming(name: &str) -> String {
        let mut out = String::new();
        for (i, ch) in name.chars().enumerate() {
            if ch.is_uppercase() && i > 0 {
                out.push('_');
            }
            out.push(ch.to_ascii_uppercase());
        }
        out
    }

    #[test]
    fn word_layout_agrees_with_the_shaders() {
        let mut state: Vec<(String, usize)> = StateWord::ALL
            .iter()
            .map(|w| (screaming(&format!("{w:?}")), *w as usize))
            .collect();
        state.push(("WORDS".into(), STATE_WORDS));
        assert_eq!(state, wgsl_words("STATE_"));
        let mut stats: Vec<(String, usize)> = StatsWord::ALL
            .iter()
            .map(|w| (screaming(&format!("{w:?}")), *w as usize))
            .collect();
        stats.push(("WORDS".into(), STATS_WORDS));
        assert_eq!(stats, wgsl_words("STATS_"));
    }
}
