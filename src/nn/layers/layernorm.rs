//! LayerNorm, `ln`, with PyTorch's `nn.LayerNorm` semantics (elementwise affine, eps 1e-5), on
//! shaders/layernorm.wgsl: each sample is normalised over its own features, all C·H·W of them
//! after a convolution (as `nn.LayerNorm([C, H, W])`), its units after an affine layer. Training
//! and evaluation compute the same thing; there are no running statistics.
//!
//! Shapes: x, y [P, N, F] with F = C·H·W; γ and β \[F] ([C, H, W] after a convolution), named
//! gammaK and betaK after the K-th affine or convolution layer, γ = 1 and β = 0 at start.

use bytemuck::{Pod, Zeroable};

use super::{Backward, Forward, Layer, LayerOps, LayerSpec, LayerState, Saved, TensorPlacer};
use crate::gpu::kernel::{grid, Binding, Entry, KernelBindings, Placeholders, Shader};
use crate::gpu::{Dispatch, GpuBuffer, GpuContext, Precision};
use crate::nn::ParamLayout;

/// PyTorch's default.
pub const LAYERNORM_EPS: f64 = 1e-5;

/// The spec words, as error messages list them.
pub(super) const SYNTAX: &[&str] = &["ln"];

/// `ln` or `layernorm`
pub(super) fn parse(word: &str) -> Option<Result<LayerSpec, String>> {
    matches!(word, "ln" | "layernorm").then_some(Ok(LayerSpec::LayerNorm))
}

#[derive(Clone, Debug, PartialEq)]
pub struct LayerNorm {
    /// Features per sample.
    pub f: usize,
    /// Features per channel: H·W after a convolution, 1 after an affine layer.
    pub plane: usize,
    /// Tensor indices of γ and β \[F].
    pub gamma: usize,
    pub beta: usize,
}

pub(super) fn resolve(
    [c, h, w]: [usize; 3],
    placer: &mut TensorPlacer,
) -> Result<(Layer, [usize; 3]), String> {
    let shape = if h * w == 1 { vec![c] } else { vec![c, h, w] };
    let (gamma, beta) = placer.add_scale_and_shift(shape)?;
    let layer = LayerNorm {
        f: c * h * w,
        plane: h * w,
        gamma,
        beta,
    };
    Ok((Layer::LayerNorm(layer), [c, h, w]))
}

/// layernorm.wgsl's Params.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct LayerNormParams {
    /// Rows per copy.
    pub n: u32,
    pub f: u32,
    pub copies: u32,
    pub g_off: u32,
    pub b_off: u32,
    /// Elements of the elementwise entry: copies·N·F.
    pub count: u32,
    pub row_width: u32,
    /// 1: the input is [N, F], shared by every copy.
    pub input_shared: u32,
    /// Features per channel (one-channel routes only).
    pub plane: u32,
    pub _pad: [u32; 3],
}

/// layernorm.wgsl's one binding table, shared by all its entry points.
pub struct LayerNormBindings<'a> {
    /// \[eps]
    pub consts: &'a GpuBuffer,
    /// x, or dy in backward.
    pub x: &'a GpuBuffer,
    /// Per (copy, row): mean, inv_std.
    pub stats: &'a GpuBuffer,
    pub theta: &'a GpuBuffer,
    /// x̂ [P, N, F]
    pub xhat: &'a GpuBuffer,
    /// y, or dx in backward (None for the first layer's backward).
    pub y: Option<&'a GpuBuffer>,
    /// Backward: the gradient arena.
    pub grads: Option<&'a GpuBuffer>,
    /// FORWARD_PERTURBED: (flat index, sign) per copy, and \[h].
    pub pert: Option<&'a GpuBuffer>,
    pub h: Option<&'a GpuBuffer>,
    /// On a one-channel route: each copy's moved channel.
    pub moved: Option<&'a GpuBuffer>,
}

impl KernelBindings for LayerNormBindings<'_> {
    type Params = LayerNormParams;
    const ACCESS: &'static [Binding] = &[
        Binding::Read,
        Binding::Read,
        Binding::ReadWrite,
        Binding::Read,
        Binding::ReadWrite,
        Binding::ReadWrite,
        Binding::ReadWrite,
        Binding::Read,
        Binding::Read,
        Binding::Read,
    ];
    fn buffers<'a>(&'a self, unused: &'a Placeholders) -> Vec<&'a wgpu::Buffer> {
        vec![
            &self.consts.buffer,
            &self.x.buffer,
            &self.stats.buffer,
            &self.theta.buffer,
            &self.xhat.buffer,
            unused.real_rw(self.y),
            unused.real_rw(self.grads),
            unused.word(self.pert),
            unused.real(self.h),
            unused.word(self.moved),
        ]
    }
}

/// shaders/layernorm.wgsl, which this layer alone uses.
pub const SHADER: Shader = crate::shader!("layernorm.wgsl");

const STATS: Entry = Entry::new(SHADER, "ln_stats");
const FORWARD: Entry = Entry::new(SHADER, "ln_forward");
const FORWARD_PERTURBED: Entry = FORWARD.with(&[("PERTURBED", 1.0)]);
const FORWARD_ONE_CHANNEL: Entry = FORWARD.with(&[("PERTURBED", 1.0), ("ONE_CHANNEL", 1.0)]);
const BACKWARD_PARAMS: Entry = Entry::new(SHADER, "ln_backward_params");
const BACKWARD_INPUT: Entry = Entry::new(SHADER, "ln_backward_input");

impl LayerNorm {
    /// Params for `copies` copies of `n` rows, reading one shared input when `input_shared`, whose
    /// elementwise entry runs `count` invocations.
    fn params(
        &self,
        layout: &ParamLayout,
        (n, copies, count): (usize, usize, usize),
        input_shared: bool,
    ) -> LayerNormParams {
        LayerNormParams {
            n: n as u32,
            f: self.f as u32,
            copies: copies as u32,
            g_off: layout.tensors[self.gamma].offset as u32,
            b_off: layout.tensors[self.beta].offset as u32,
            count: count as u32,
            row_width: grid(count).1,
            input_shared: u32::from(input_shared),
            plane: self.plane as u32,
            _pad: [0; 3],
        }
    }

    fn saved(saved: &Saved) -> (&GpuBuffer, &GpuBuffer) {
        match saved {
            Saved::Norm { stats, xhat } => (stats, xhat),
            _ => unreachable!("LayerNorm keeps its statistics"),
        }
    }

    fn eps(state: &LayerState) -> &GpuBuffer {
        match state {
            LayerState::LayerNorm { consts } => consts,
            _ => unreachable!("LayerNorm keeps its eps"),
        }
    }
}

impl LayerOps for LayerNorm {
    fn output_size(&self) -> usize {
        self.f
    }

    fn tensors(&self) -> Vec<usize> {
        vec![self.gamma, self.beta]
    }

    fn saved(&self, ctx: &GpuContext, p: Precision, rows: usize, copies: usize) -> Saved {
        Saved::Norm {
            stats: GpuBuffer::real(ctx, "ln_stats", copies * rows * 2, p),
            xhat: GpuBuffer::real(ctx, "ln_xhat", copies * rows * self.f, p),
        }
    }

    fn state(&self, ctx: &GpuContext, precision: Precision) -> LayerState {
        LayerState::LayerNorm {
            consts: GpuBuffer::from_real(ctx, "ln_consts", &[LAYERNORM_EPS], precision),
        }
    }

    // stats [P, N, 2] of x; y [P, N, F] = γ·(x − mean)·inv_std + β
    fn forward(&self, io: &Forward) -> Vec<Dispatch> {
        let (stats, xhat) = LayerNorm::saved(io.saved);
        let count = io.elementwise_count(self.f);
        let params = self.params(io.layout, (io.rows, io.copies, count), io.input_shared);
        let bindings = LayerNormBindings {
            consts: LayerNorm::eps(io.state),
            x: io.input,
            stats,
            theta: io.theta,
            xhat,
            y: Some(io.output),
            grads: None,
            pert: io.pert(),
            h: io.h(),
            moved: io.moved_channel().map(|m| m.moved),
        };
        let normalise = match (io.perturbation, io.moved_channel()) {
            (Some(_), Some(_)) => &FORWARD_ONE_CHANNEL,
            (Some(_), None) => &FORWARD_PERTURBED,
            (None, _) => &FORWARD,
        };
        // A shared input has the same statistics in every copy: they are computed once.
        let stat_rows = if io.input_shared {
            io.rows
        } else {
            io.copies * io.rows
        };
        let dispatch = |entry: &Entry, groups| {
            io.gpu
                .kernels
                .dispatch(io.gpu.ctx, entry, &params, &bindings, groups)
        };
        vec![
            dispatch(&STATS, grid(stat_rows * 64).0),
            dispatch(normalise, grid(params.count as usize).0),
        ]
    }

    // A γ or β perturbation starts its route here, on the unperturbed input, instead of
    // recomputing the layers below it for every copy.
    fn reads_shared_input(&self) -> bool {
        true
    }

    /// A change of γ[c, …] or β[c, …] moves a feature of channel c alone.
    fn moved_channel(&self, layout: &ParamLayout, index: usize) -> Option<usize> {
        super::scale_shift_channel(layout, [self.gamma, self.beta], index, self.plane)
    }

    // dγ, dβ [F] summed over rows; dx [N, F] per row from its own sums
    fn backward(&self, io: &Backward) -> Vec<Dispatch> {
        let (stats, xhat) = LayerNorm::saved(io.saved);
        let params = self.params(io.layout, (io.rows, 1, io.rows * self.f), false);
        let bindings = LayerNormBindings {
            consts: LayerNorm::eps(io.state),
            x: io.dy,
            stats,
            theta: io.theta,
            xhat,
            y: io.dx,
            grads: Some(io.grads),
            pert: None,
            h: None,
            moved: None,
        };
        let dispatch = |entry: &Entry, groups| {
            io.gpu
                .kernels
                .dispatch(io.gpu.ctx, entry, &params, &bindings, groups)
        };
        let mut out = vec![dispatch(&BACKWARD_PARAMS, grid(self.f).0)];
        if io.dx.is_some() {
            out.push(dispatch(&BACKWARD_INPUT, grid(io.rows * 64).0));
        }
        out
    }
}
