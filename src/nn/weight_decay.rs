//! The book's weight decay as an L2 term of the loss, on shaders/l2.wgsl: penalty =
//! Σ (λ_i/2)·θ_i² and dθ_i += λ_i·θ_i, with λ_i = λ on weights and 0 on biases, γ and β.
//!
//! Shapes: θ, half_decay (λ_i/2), grads \[numel]; the penalty lands in stats word
//! [`crate::train::StatsWord::L2Penalty`].

use bytemuck::{Pod, Zeroable};

use crate::gpu::kernel::{self, grid, shaders, Binding, Entry, KernelBindings, Placeholders};
use crate::gpu::{Dispatch, Gpu, GpuBuffer, GpuContext, Precision};
use crate::nn::{ParamLayout, ParamRole};

/// Elements per workgroup in the first pass of the penalty's reduction (shaders/l2.wgsl BLOCK).
const BLOCK: usize = 65536;

/// l2.wgsl's Params.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct L2Params {
    pub numel: u32,
    pub row_width: u32,
    pub _pad: [u32; 2],
}

/// l2.wgsl's buffers.
pub struct L2Bindings<'a> {
    pub theta: &'a GpuBuffer,
    pub half_decay: &'a GpuBuffer,
    /// The gradient arena (l2_grad), or the per-block partial sums (the penalty's two passes).
    pub grads: &'a GpuBuffer,
    /// The penalty's second pass: the stats words.
    pub stats: Option<&'a GpuBuffer>,
}

impl KernelBindings for L2Bindings<'_> {
    type Params = L2Params;
    const ACCESS: &'static [Binding] = &[
        Binding::Read,
        Binding::Read,
        Binding::ReadWrite,
        Binding::ReadWrite,
    ];
    fn buffers<'a>(&'a self, unused: &'a Placeholders) -> Vec<&'a wgpu::Buffer> {
        vec![
            &self.theta.buffer,
            &self.half_decay.buffer,
            &self.grads.buffer,
            unused.real_rw(self.stats),
        ]
    }
}

const PARTIAL: Entry = Entry::new(shaders::L2, "l2_partial");
const PENALTY: Entry = Entry::new(shaders::L2, "l2_penalty");
const GRAD: Entry = Entry::new(shaders::L2, "l2_grad");

/// A net's weight decay on the GPU: λ/2 per element, and the scratch of the penalty's sum.
pub struct WeightDecay {
    half_decay: GpuBuffer,
    partials: GpuBuffer,
    numel: usize,
}

impl WeightDecay {
    /// None when λ = 0, so that a net without decay records nothing for it.
    pub fn new(
        ctx: &GpuContext,
        layout: &ParamLayout,
        lambda: f64,
        precision: Precision,
    ) -> Option<WeightDecay> {
        if lambda == 0.0 {
            return None;
        }
        let mut half_decay = vec![0.0; layout.total];
        for t in layout
            .tensors
            .iter()
            .filter(|t| t.role == ParamRole::Weight)
        {
            half_decay[t.offset..t.offset + t.numel].fill(0.5 * lambda);
        }
        Some(WeightDecay {
            half_decay: GpuBuffer::from_real(ctx, "half_decay", &half_decay, precision),
            partials: GpuBuffer::real(ctx, "l2_partials", layout.total.div_ceil(BLOCK), precision),
            numel: layout.total,
        })
    }

    /// λ_i/2 per parameter.
    pub fn half_decay(&self) -> &GpuBuffer {
        &self.half_decay
    }

    /// stats\[L2Penalty] = Σ (λ_i/2)·θ_i², in two passes (per block, then the blocks).
    pub fn penalty(&self, gpu: &Gpu, theta: &GpuBuffer, stats: &GpuBuffer) -> Vec<Dispatch> {
        let params = L2Params {
            numel: self.numel as u32,
            row_width: 0,
            _pad: [0; 2],
        };
        let bindings = L2Bindings {
            theta,
            half_decay: &self.half_decay,
            grads: &self.partials,
            stats: Some(stats),
        };
        let blocks = kernel::groups(self.numel, BLOCK);
        vec![
            gpu.kernels
                .dispatch(gpu.ctx, &PARTIAL, &params, &bindings, [blocks, 1, 1]),
            gpu.kernels
                .dispatch(gpu.ctx, &PENALTY, &params, &bindings, [1, 1, 1]),
        ]
    }

    /// grads += λ_i·θ_i (after the layers have written theirs).
    pub fn gradient(&self, gpu: &Gpu, theta: &GpuBuffer, grads: &GpuBuffer) -> Dispatch {
        let (groups, row_width) = grid(self.numel);
        let params = L2Params {
            numel: self.numel as u32,
            row_width,
            _pad: [0; 2],
        };
        let bindings = L2Bindings {
            theta,
            half_decay: &self.half_decay,
            grads,
            stats: None,
        };
        gpu.kernels
            .dispatch(gpu.ctx, &GRAD, &params, &bindings, groups)
    }
}
