//! BatchNorm, `bn`, with PyTorch's BatchNorm{1d,2d} semantics, on shaders/batchnorm.wgsl: per
//! channel over (N, H·W) after a convolution, per feature over N after an affine layer.
//!
//! Shapes: x, y [P, N, C, S] (S = H·W, or 1 after an affine layer), γ and β \[C] (named gammaK and
//! betaK after the K-th affine or convolution layer), running (mean, var) [C, 2].

use bytemuck::{Pod, Zeroable};

use super::{
    Backward, Forward, KindCounts, Layer, LayerOps, LayerSpec, LayerState, Mode, Saved,
    TensorPlacer,
};
use crate::error::{Error, Result};
use crate::gpu::kernel::{grid, Binding, Entry, KernelBindings, Placeholders, Shader};
use crate::gpu::{Dispatch, GpuBuffer, GpuContext, Precision};
use crate::nn::{Conventions, ParamLayout, ParamRole};

/// PyTorch's BatchNorm defaults.
pub const BATCHNORM_EPS: f64 = 1e-5;
pub const BATCHNORM_MOMENTUM: f64 = 0.1;

/// The spec words, as error messages list them.
pub(super) const SYNTAX: &[&str] = &["bn"];

/// `bn` or `batchnorm`
pub(super) fn parse(word: &str) -> Option<Result<LayerSpec, String>> {
    matches!(word, "bn" | "batchnorm").then_some(Ok(LayerSpec::BatchNorm))
}

#[derive(Clone, Debug, PartialEq)]
pub struct BatchNorm {
    /// Channels, and positions per channel and sample.
    pub c: usize,
    pub s: usize,
    /// Tensor indices of γ and β \[C].
    pub gamma: usize,
    pub beta: usize,
    /// Which BatchNorm layer of the net this is (0, 1, …).
    pub index: usize,
    pub eps: f64,
    /// The running variance takes the unbiased batch variance (PyTorch), or the biased one
    /// (the book).
    pub unbiased_running_var: bool,
}

pub(super) fn resolve(
    [c, h, w]: [usize; 3],
    conventions: Conventions,
    placer: &mut TensorPlacer,
    counts: &mut KindCounts,
) -> Result<(Layer, [usize; 3]), String> {
    // After an affine layer the channels are its units (S = 1).
    let (gamma, beta) = placer.add_scale_and_shift(vec![c])?;
    counts.norms += 1;
    let layer = BatchNorm {
        c,
        s: h * w,
        gamma,
        beta,
        index: counts.norms - 1,
        eps: conventions.batchnorm_eps(),
        unbiased_running_var: conventions.unbiased_running_var(),
    };
    Ok((Layer::BatchNorm(layer), [c, h, w]))
}

/// batchnorm.wgsl's Params.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct BatchNormParams {
    pub n: u32,
    pub c: u32,
    pub s: u32,
    pub copies: u32,
    pub g_off: u32,
    pub b_off: u32,
    /// Elements of the elementwise entries: copies·N·C·S.
    pub count: u32,
    pub row_width: u32,
}

/// batchnorm.wgsl's one binding table, shared by all its entry points.
pub struct BatchNormBindings<'a> {
    /// [eps, momentum, unbiased (1 or 0)]
    pub consts: &'a GpuBuffer,
    /// x, or dy in backward.
    pub x: &'a GpuBuffer,
    /// Per (copy, channel): mean, inv_std, biased var.
    pub stats: &'a GpuBuffer,
    pub theta: &'a GpuBuffer,
    /// x̂ [P, N, C, S]
    pub xhat: &'a GpuBuffer,
    /// y, or dx in backward (None for the first layer's backward).
    pub y: Option<&'a GpuBuffer>,
    /// Backward: the gradient arena.
    pub grads: Option<&'a GpuBuffer>,
    /// Running (mean, var) [C, 2].
    pub running: &'a GpuBuffer,
    /// BN_FORWARD_PERTURBED: (flat index, sign) per copy, and \[h].
    pub pert: Option<&'a GpuBuffer>,
    pub h: Option<&'a GpuBuffer>,
    /// On a one-channel route: each copy's moved channel.
    pub moved: Option<&'a GpuBuffer>,
}

impl KernelBindings for BatchNormBindings<'_> {
    type Params = BatchNormParams;
    const ACCESS: &'static [Binding] = &[
        Binding::Read,
        Binding::Read,
        Binding::ReadWrite,
        Binding::Read,
        Binding::ReadWrite,
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
            &self.running.buffer,
            unused.word(self.pert),
            unused.real(self.h),
            unused.word(self.moved),
        ]
    }
}

/// shaders/batchnorm.wgsl, which this layer alone uses.
pub const SHADER: Shader = crate::shader!("batchnorm.wgsl");

const STATS: Entry = Entry::new(SHADER, "bn_stats");
const FORWARD_TRAIN: Entry = Entry::new(SHADER, "bn_forward_train");
const FORWARD_PERTURBED: Entry = FORWARD_TRAIN.with(&[("PERTURBED", 1.0)]);
const STATS_ONE_CHANNEL: Entry = STATS.with(&[("ONE_CHANNEL", 1.0)]);
const FORWARD_ONE_CHANNEL: Entry = FORWARD_TRAIN.with(&[("PERTURBED", 1.0), ("ONE_CHANNEL", 1.0)]);
const UPDATE_RUNNING: Entry = Entry::new(SHADER, "bn_update_running");
const FORWARD_EVAL: Entry = Entry::new(SHADER, "bn_forward_eval");
const BACKWARD_PARAMS: Entry = Entry::new(SHADER, "bn_backward_params");
const BACKWARD_INPUT: Entry = Entry::new(SHADER, "bn_backward_input");

impl BatchNorm {
    /// Params for `copies` copies of `n` rows, whose elementwise entries run `count` invocations.
    fn params(
        &self,
        layout: &ParamLayout,
        n: usize,
        copies: usize,
        count: usize,
    ) -> BatchNormParams {
        BatchNormParams {
            n: n as u32,
            c: self.c as u32,
            s: self.s as u32,
            copies: copies as u32,
            g_off: layout.tensors[self.gamma].offset as u32,
            b_off: layout.tensors[self.beta].offset as u32,
            count: count as u32,
            row_width: grid(count).1,
        }
    }

    /// (running statistics [C, 2], [eps, momentum, unbiased]) of this layer's state.
    pub fn buffers(state: &LayerState) -> (&GpuBuffer, &GpuBuffer) {
        match state {
            LayerState::BatchNorm { running, consts } => (running, consts),
            _ => unreachable!("BatchNorm keeps its running statistics"),
        }
    }

    fn saved(saved: &Saved) -> (&GpuBuffer, &GpuBuffer) {
        match saved {
            Saved::Norm { stats, xhat } => (stats, xhat),
            _ => unreachable!("BatchNorm keeps its statistics"),
        }
    }

    /// Names of the running statistics beside gammaK and betaK, as checkpoints store them.
    pub fn state_names(&self, layout: &ParamLayout) -> (String, String) {
        let k = layout.tensors[self.gamma]
            .name
            .trim_start_matches(ParamRole::Gamma.prefix());
        (format!("running_mean{k}"), format!("running_var{k}"))
    }
}

impl LayerOps for BatchNorm {
    fn output_size(&self) -> usize {
        self.c * self.s
    }

    fn tensors(&self) -> Vec<usize> {
        vec![self.gamma, self.beta]
    }

    /// A change of γ\[c] or β\[c] moves channel c alone.
    fn moved_channel(&self, layout: &ParamLayout, index: usize) -> Option<usize> {
        super::scale_shift_channel(layout, [self.gamma, self.beta], index, 1)
    }

    fn channel_local(&self) -> bool {
        true
    }

    fn saved(&self, ctx: &GpuContext, p: Precision, rows: usize, copies: usize) -> Saved {
        Saved::Norm {
            stats: GpuBuffer::real(ctx, "bn_stats", copies * self.c * 3, p),
            xhat: GpuBuffer::real(ctx, "bn_xhat", copies * rows * self.output_size(), p),
        }
    }

    fn state(&self, ctx: &GpuContext, precision: Precision) -> LayerState {
        let init: Vec<f64> = (0..self.c).flat_map(|_| [0.0, 1.0]).collect();
        LayerState::BatchNorm {
            running: GpuBuffer::from_real(ctx, "running_stats", &init, precision),
            consts: GpuBuffer::from_real(
                ctx,
                "bn_consts",
                &[
                    self.eps,
                    BATCHNORM_MOMENTUM,
                    f64::from(u8::from(self.unbiased_running_var)),
                ],
                precision,
            ),
        }
    }

    /// BatchNorm's statistics give each of 64 lanes N·S/64 values of a channel, under
    /// lavapipe's 65,535 loop iterations an invocation.
    fn check_batch(&self, rows: usize) -> Result<()> {
        let max = 64 * 60_000 / self.s;
        if rows > max {
            return Err(Error::InvalidArgument(format!(
                "a batch of {rows} rows is too large for BatchNorm over {} positions per channel (at most {max}): use a smaller batch",
                self.s
            )));
        }
        Ok(())
    }

    fn forward(&self, io: &Forward) -> Vec<Dispatch> {
        let (stats, xhat) = BatchNorm::saved(io.saved);
        let (running, consts) = BatchNorm::buffers(io.state);
        let count = io.elementwise_count(self.output_size());
        let params = self.params(io.layout, io.rows, io.copies, count);
        let bindings = BatchNormBindings {
            consts,
            x: io.input,
            stats,
            theta: io.theta,
            xhat,
            y: Some(io.output),
            grads: None,
            running,
            pert: io.pert(),
            h: io.h(),
            moved: io.moved_channel().map(|m| m.moved),
        };
        let groups = grid(params.count as usize).0;
        let dispatch = |entry: &Entry, groups| {
            io.gpu
                .kernels
                .dispatch(io.gpu.ctx, entry, &params, &bindings, groups)
        };
        if io.mode == Mode::Eval {
            return vec![dispatch(&FORWARD_EVAL, groups)];
        }
        let (statistics, normalise, stat_groups) = match (io.perturbation, io.moved_channel()) {
            (Some(_), Some(_)) => (&STATS_ONE_CHANNEL, &FORWARD_ONE_CHANNEL, io.copies),
            (Some(_), None) => (&STATS, &FORWARD_PERTURBED, io.copies * self.c),
            (None, _) => (&STATS, &FORWARD_TRAIN, io.copies * self.c),
        };
        let mut out = vec![
            dispatch(statistics, grid(stat_groups * 64).0),
            dispatch(normalise, groups),
        ];
        if io.mode == Mode::Train {
            out.push(dispatch(&UPDATE_RUNNING, grid(self.c).0));
        }
        out
    }

    fn backward(&self, io: &Backward) -> Vec<Dispatch> {
        let (stats, xhat) = BatchNorm::saved(io.saved);
        let (running, consts) = BatchNorm::buffers(io.state);
        let params = self.params(io.layout, io.rows, 1, io.rows * self.output_size());
        let bindings = BatchNormBindings {
            consts,
            x: io.dy,
            stats,
            theta: io.theta,
            xhat,
            y: io.dx,
            grads: Some(io.grads),
            running,
            pert: None,
            h: None,
            moved: None,
        };
        let dispatch = |entry: &Entry, groups| {
            io.gpu
                .kernels
                .dispatch(io.gpu.ctx, entry, &params, &bindings, groups)
        };
        // bn_backward_input reads the sums bn_backward_params leaves in the gradient arena.
        let mut out = vec![dispatch(&BACKWARD_PARAMS, grid(self.c * 64).0)];
        if io.dx.is_some() {
            out.push(dispatch(&BACKWARD_INPUT, grid(params.count as usize).0));
        }
        out
    }
}
