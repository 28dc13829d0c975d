//! Losses, accuracy counts and step bookkeeping on the GPU (shaders/metrics.wgsl), so a training
//! loop never reads back between steps, and the named words of the two buffers they keep.
//!
//! Shapes: row_loss and row_correct [P, N] (from the softmax loss), labels [N]; `state` holds
//! [`STATE_WORDS`] u32 words and `stats` [`STATS_WORDS`] reals.

use bytemuck::{Pod, Zeroable};

use crate::gpu::kernel::{grid, shaders, Binding, Entry, KernelBindings, Placeholders};
use crate::gpu::{Dispatch, Gpu, GpuBuffer};
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
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct MetricsParams {
    /// Rows to reduce (N), or copies for copy_loss.
    pub rows: u32,
    /// Rows per copy (copy_loss).
    pub n: u32,
    /// Slots of `step_losses` (train_metrics; 0: none).
    pub window: u32,
    pub row_width: u32,
}

/// metrics.wgsl's buffers.
pub struct MetricsBindings<'a> {
    pub row_loss: &'a GpuBuffer,
    pub row_correct: &'a GpuBuffer,
    /// The stats words, or each copy's loss (copy_loss).
    pub stats: &'a GpuBuffer,
    pub state: Option<&'a GpuBuffer>,
    pub labels: &'a GpuBuffer,
    /// train_metrics: the last steps' losses, step t at t % len.
    pub step_losses: Option<&'a GpuBuffer>,
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
    ];
    fn buffers<'a>(&'a self, unused: &'a Placeholders) -> Vec<&'a wgpu::Buffer> {
        vec![
            &self.row_loss.buffer,
            &self.row_correct.buffer,
            &self.stats.buffer,
            unused.word_rw(self.state),
            &self.labels.buffer,
            unused.real_rw(self.step_losses),
        ]
    }
}

const TRAIN: Entry = Entry::new(shaders::METRICS, "train_metrics");
const EVAL: Entry = Entry::new(shaders::METRICS, "eval_metrics");
const COPY_LOSS: Entry = Entry::new(shaders::METRICS, "copy_loss");
const ADVANCE: Entry = Entry::new(shaders::METRICS, "advance");

fn metrics(
    gpu: &Gpu,
    entry: &Entry,
    ws: &Workspace,
    rows: usize,
    (stats, state, step_losses): (&GpuBuffer, Option<&GpuBuffer>, Option<&GpuBuffer>),
    groups: ([u32; 3], u32),
) -> Dispatch {
    let params = MetricsParams {
        rows: rows as u32,
        n: ws.rows as u32,
        window: step_losses.map_or(0, |b| b.len as u32),
        row_width: groups.1,
    };
    let bindings = MetricsBindings {
        row_loss: &ws.row_loss,
        row_correct: &ws.row_correct,
        stats,
        state,
        labels: &ws.labels,
        step_losses,
    };
    gpu.kernels
        .dispatch(gpu.ctx, entry, &params, &bindings, groups.0)
}

/// A training step's loss and correct count into `stats`, divergence into `state`.
pub fn train_metrics(gpu: &Gpu, ws: &Workspace, stats: &GpuBuffer, state: &GpuBuffer) -> Dispatch {
    train_step_metrics(gpu, ws, (stats, state), None)
}

/// [`train_metrics`], keeping each step's loss in `step_losses` too (step t at t % its length),
/// so that a submit of up to that many steps is read back once for all of them.
pub fn train_step_metrics(
    gpu: &Gpu,
    ws: &Workspace,
    (stats, state): (&GpuBuffer, &GpuBuffer),
    step_losses: Option<&GpuBuffer>,
) -> Dispatch {
    let buffers = (stats, Some(state), step_losses);
    metrics(gpu, &TRAIN, ws, ws.rows, buffers, ([1, 1, 1], 0))
}

/// An evaluation batch's sums into `stats`, and the evaluation cursor moved on in `state`.
pub fn eval_metrics(gpu: &Gpu, ws: &Workspace, stats: &GpuBuffer, state: &GpuBuffer) -> Dispatch {
    metrics(
        gpu,
        &EVAL,
        ws,
        ws.rows,
        (stats, Some(state), None),
        ([1, 1, 1], 0),
    )
}

/// The mean data loss of each copy into `out[p]`.
pub fn copy_loss(gpu: &Gpu, ws: &Workspace, out: &GpuBuffer) -> Dispatch {
    metrics(
        gpu,
        &COPY_LOSS,
        ws,
        ws.copies,
        (out, None, None),
        grid(ws.copies),
    )
}

/// The end of a training step: t += 1, next batch.
pub fn advance(gpu: &Gpu, ws: &Workspace, stats: &GpuBuffer, state: &GpuBuffer) -> Dispatch {
    metrics(
        gpu,
        &ADVANCE,
        ws,
        0,
        (stats, Some(state), None),
        ([1, 1, 1], 0),
    )
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
