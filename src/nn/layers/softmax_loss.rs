//! Softmax with cross-entropy loss (the book's SoftmaxWithLoss), on shaders/softmax_ce.wgsl: per
//! row, loss = log Σ exp(z) − z_label, correct = [argmax z = label], and in training
//! dlogits = (softmax(z) − onehot(label)) / N.
//!
//! Shapes: logits [P, N, classes], labels \[N] (0xffffffff marks padding) -> row_loss,
//! row_correct [P, N], dlogits [N, classes].

use bytemuck::{Pod, Zeroable};

use super::Gpu;
use crate::gpu::kernel::{grid, shaders, Binding, Entry, KernelBindings, Placeholders};
use crate::gpu::{Dispatch, GpuBuffer};

/// softmax_ce.wgsl's Params.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct SoftmaxParams {
    /// copies · N
    pub rows: u32,
    pub classes: u32,
    /// Rows per copy; the loss is a mean over these.
    pub n: u32,
    pub row_width: u32,
}

/// softmax_ce.wgsl's buffers.
pub struct SoftmaxBindings<'a> {
    pub logits: &'a GpuBuffer,
    pub labels: &'a GpuBuffer,
    pub row_loss: &'a GpuBuffer,
    pub row_correct: &'a GpuBuffer,
    /// Training: the gradient of the mean loss with respect to the logits.
    pub dlogits: Option<&'a GpuBuffer>,
}

impl KernelBindings for SoftmaxBindings<'_> {
    type Params = SoftmaxParams;
    const ACCESS: &'static [Binding] = &[
        Binding::Read,
        Binding::Read,
        Binding::ReadWrite,
        Binding::ReadWrite,
        Binding::ReadWrite,
    ];
    fn buffers<'a>(&'a self, unused: &'a Placeholders) -> Vec<&'a wgpu::Buffer> {
        vec![
            &self.logits.buffer,
            &self.labels.buffer,
            &self.row_loss.buffer,
            &self.row_correct.buffer,
            unused.real_rw(self.dlogits),
        ]
    }
}

const LOSS: Entry = Entry::new(shaders::SOFTMAX_CE, "softmax_ce");
const LOSS_AND_GRAD: Entry = LOSS.with(&[("WRITE_GRAD", 1.0)]);

/// Per-row loss and correctness of `copies` copies of `n` rows, and dlogits when given.
pub fn softmax_loss(
    gpu: &Gpu,
    n: usize,
    copies: usize,
    classes: usize,
    bindings: &SoftmaxBindings,
) -> Dispatch {
    let rows = n * copies;
    let (groups, row_width) = grid(rows);
    let params = SoftmaxParams {
        rows: rows as u32,
        classes: classes as u32,
        n: n as u32,
        row_width,
    };
    let entry = match bindings.dlogits {
        Some(_) => &LOSS_AND_GRAD,
        None => &LOSS,
    };
    gpu.kernels
        .dispatch(gpu.ctx, entry, &params, bindings, groups)
}
