//! The GPU model: one flat parameter arena (and its gradient), the kernels of every layer, and
//! workspaces holding a batch's activations. Forward and backward passes are lists of
//! [`Dispatch`]es built once and replayed, so a step costs no host work beyond recording.
//!
//! Shapes: N batch rows, P parameter copies (1 for training; many in the full-forward numerical
//! gradient), widths[l] → widths[l+1] for affine layer l.

use bytemuck::{Pod, Zeroable};

use crate::checkpoint::NamedTensor;
use crate::error::{Error, Result};
use crate::gpu::buffers::uniform;
use crate::gpu::kernel::{self, grid, shaders, Binding};
use crate::gpu::{Dispatch, GpuBuffer, GpuContext, Kernel, Precision};
use crate::nn::{Activation, Layer, NetSpec, ParamLayout};

use Binding::{Read, ReadWrite, Uniform};

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Default)]
struct MatmulParams {
    m: u32,
    n: u32,
    k: u32,
    flags: u32,
    a_off: u32,
    a_rs: u32,
    a_cs: u32,
    a_bs: u32,
    b_off: u32,
    b_rs: u32,
    b_cs: u32,
    bias_off: u32,
    c_off: u32,
    c_rs: u32,
    c_bs: u32,
    _pad: u32,
}

const ADD_BIAS: u32 = 1;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Quad([u32; 4]);

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Oct([u32; 8]);

/// Every pipeline a net needs, built once per device and precision.
pub struct Kernels {
    pub precision: Precision,
    matmul: Kernel,
    matmul_perturbed: Kernel,
    column_sum: Kernel,
    relu_forward: Kernel,
    relu_forward_kinks: Kernel,
    relu_backward: Kernel,
    sigmoid_forward: Kernel,
    sigmoid_backward: Kernel,
    softmax_loss: Kernel,
    softmax_grad: Kernel,
    pub(crate) gather: Kernel,
    train_metrics: Kernel,
    eval_metrics: Kernel,
    copy_loss: Kernel,
    advance: Kernel,
    l2_partial: Kernel,
    l2_penalty: Kernel,
    l2_grad: Kernel,
    conv_forward: Kernel,
    conv_forward_perturbed: Kernel,
    im2col: Kernel,
    nhwc_to_nchw: Kernel,
    conv_backward_input: Kernel,
    conv_backward_params: Kernel,
    max_forward: Kernel,
    max_forward_kinks: Kernel,
    max_backward: Kernel,
    avg_forward: Kernel,
    avg_backward: Kernel,
    bn_stats: Kernel,
    bn_forward_train: Kernel,
    bn_forward_perturbed: Kernel,
    bn_backward_params: Kernel,
    bn_backward_input: Kernel,
    bn_update_running: Kernel,
    bn_forward_eval: Kernel,
    dropout_forward: Kernel,
    dropout_backward: Kernel,
}

impl Kernels {
    pub fn new(ctx: &GpuContext, precision: Precision) -> Result<Kernels> {
        ctx.require(precision)?;
        let scope = ctx.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let k = |shader, entry, bindings: &[Binding], constants: &[(&str, f64)]| {
            Kernel::new(ctx, shader, entry, precision, bindings, constants)
        };
        let matmul_b = [Uniform, Read, Read, Read, ReadWrite, Read, Read];
        let act_b = [Uniform, Read, Read, ReadWrite, ReadWrite];
        let sm_b = [Uniform, Read, Read, ReadWrite, ReadWrite, ReadWrite];
        let metrics_b = [Uniform, Read, Read, ReadWrite, ReadWrite, Read];
        let l2_b = [Uniform, Read, Read, ReadWrite, ReadWrite];
        let conv_fwd_b = [Uniform, Read, Read, ReadWrite, Read, Read];
        let conv_bwd_b = [Uniform, Read, Read, ReadWrite];
        let pool_fwd_b = [Uniform, Read, ReadWrite, ReadWrite, Read, ReadWrite];
        let pool_bwd_b = [Uniform, Read, Read, ReadWrite];
        let bn_b = [
            Uniform, Read, Read, ReadWrite, Read, ReadWrite, ReadWrite, ReadWrite, ReadWrite, Read,
            Read,
        ];
        let drop_b = [Uniform, Read, Read, ReadWrite, ReadWrite, Read];
        let kernels = Kernels {
            precision,
            matmul: k(shaders::MATMUL, "matmul", &matmul_b, &[]),
            matmul_perturbed: k(shaders::MATMUL, "matmul", &matmul_b, &[("PERTURBED", 1.0)]),
            column_sum: k(shaders::MATMUL, "column_sum", &matmul_b, &[]),
            relu_forward: k(shaders::ACTIVATION, "relu_forward", &act_b, &[]),
            relu_forward_kinks: k(
                shaders::ACTIVATION,
                "relu_forward",
                &act_b,
                &[("COUNT_KINKS", 1.0)],
            ),
            relu_backward: k(shaders::ACTIVATION, "relu_backward", &act_b, &[]),
            sigmoid_forward: k(shaders::ACTIVATION, "sigmoid_forward", &act_b, &[]),
            sigmoid_backward: k(shaders::ACTIVATION, "sigmoid_backward", &act_b, &[]),
            softmax_loss: k(shaders::SOFTMAX_CE, "softmax_ce", &sm_b, &[]),
            softmax_grad: k(
                shaders::SOFTMAX_CE,
                "softmax_ce",
                &sm_b,
                &[("WRITE_GRAD", 1.0)],
            ),
            gather: k(
                shaders::GATHER,
                "gather",
                &[Uniform, Read, Read, Read, Read, ReadWrite, ReadWrite],
                &[],
            ),
            train_metrics: k(shaders::METRICS, "train_metrics", &metrics_b, &[]),
            eval_metrics: k(shaders::METRICS, "eval_metrics", &metrics_b, &[]),
            copy_loss: k(shaders::METRICS, "copy_loss", &metrics_b, &[]),
            advance: k(shaders::METRICS, "advance", &metrics_b, &[]),
            l2_partial: k(shaders::L2, "l2_partial", &l2_b, &[]),
            l2_penalty: k(shaders::L2, "l2_penalty", &l2_b, &[]),
            l2_grad: k(shaders::L2, "l2_grad", &l2_b, &[]),
            conv_forward: k(shaders::CONV, "conv_forward", &conv_fwd_b, &[]),
            conv_forward_perturbed: k(
                shaders::CONV,
                "conv_forward",
                &conv_fwd_b,
                &[("PERTURBED", 1.0)],
            ),
            im2col: k(shaders::CONV, "im2col", &conv_bwd_b, &[]),
            nhwc_to_nchw: k(shaders::CONV, "nhwc_to_nchw", &conv_bwd_b, &[]),
            conv_backward_input: k(shaders::CONV, "conv_backward_input", &conv_bwd_b, &[]),
            conv_backward_params: k(shaders::CONV, "conv_backward_params", &conv_bwd_b, &[]),
            max_forward: k(shaders::POOL, "max_forward", &pool_fwd_b, &[]),
            max_forward_kinks: k(
                shaders::POOL,
                "max_forward",
                &pool_fwd_b,
                &[("COUNT_KINKS", 1.0)],
            ),
            max_backward: k(shaders::POOL, "max_backward", &pool_bwd_b, &[]),
            avg_forward: k(shaders::POOL, "avg_forward", &pool_fwd_b, &[]),
            avg_backward: k(shaders::POOL, "avg_backward", &pool_bwd_b, &[]),
            bn_stats: k(shaders::BATCHNORM, "bn_stats", &bn_b, &[]),
            bn_forward_train: k(shaders::BATCHNORM, "bn_forward_train", &bn_b, &[]),
            bn_forward_perturbed: k(
                shaders::BATCHNORM,
                "bn_forward_train",
                &bn_b,
                &[("PERTURBED", 1.0)],
            ),
            bn_backward_params: k(shaders::BATCHNORM, "bn_backward_params", &bn_b, &[]),
            bn_backward_input: k(shaders::BATCHNORM, "bn_backward_input", &bn_b, &[]),
            bn_update_running: k(shaders::BATCHNORM, "bn_update_running", &bn_b, &[]),
            bn_forward_eval: k(shaders::BATCHNORM, "bn_forward_eval", &bn_b, &[]),
            dropout_forward: k(shaders::DROPOUT, "dropout_forward", &drop_b, &[]),
            dropout_backward: k(shaders::DROPOUT, "dropout_backward", &drop_b, &[]),
        };
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(Error::Gpu(format!(
                "building the {precision} kernels failed: {e}"
            )));
        }
        Ok(kernels)
    }
}

/// Parameters, gradients and the per-element L2 factors of one net on the GPU, with the
/// state some layers keep (BatchNorm's running statistics).
pub struct Model {
    pub spec: NetSpec,
    pub layout: ParamLayout,
    pub layers: Vec<Layer>,
    /// Output elements per sample of each layer.
    pub sizes: Vec<usize>,
    pub precision: Precision,
    pub params: GpuBuffer,
    pub grads: GpuBuffer,
    /// Seed of the dropout masks (set before recording a training step).
    pub dropout_seed: u32,
    /// λ/2 for weight elements, 0 for biases.
    half_decay: GpuBuffer,
    /// Bound where a kernel's binding goes unused, since every binding needs a buffer.
    dummy_real: GpuBuffer,
    dummy_real_rw: GpuBuffer,
    dummy_u32: GpuBuffer,
    dummy_u32_rw: GpuBuffer,
    /// Per-block sums of the L2 penalty (first pass of its reduction).
    l2_partials: GpuBuffer,
    /// Per BatchNorm layer: running (mean, var) per channel, [C, 2].
    pub running: Vec<GpuBuffer>,
    /// Per BatchNorm layer [eps, momentum]; per dropout layer [1/(1 − p)].
    bn_consts: GpuBuffer,
    dropout_consts: Vec<GpuBuffer>,
    /// [1]: dropout's scale in evaluation, where it is the identity.
    one: GpuBuffer,
}

/// Elements per workgroup in the first pass of the L2 reduction (shaders/l2.wgsl BLOCK).
const L2_BLOCK: usize = 65536;

/// Widest layer the kernels accept: the matmul loops over a layer's inputs, and lavapipe stops
/// a shader invocation after 65,535 loop iterations, counted over all its loops, and then leaves
/// the outputs it has not yet written unwritten, silently. The matmul's other loops take a few
/// more (65,520 inputs were computed right, 65,530 were not), so the limit keeps 31 spare.
pub const MAX_WIDTH: usize = 65_504;

/// Most classes a net's last layer may have: softmax cross-entropy makes three passes over a
/// row's classes in one invocation (max, sum of exponentials, gradient), under the same 65,535
/// iterations (21,000 classes were computed right, 22,000 were not).
pub const MAX_CLASSES: usize = 21_800;

/// Most rows per batch: lavapipe stops a shader invocation after 65,535 loop iterations, and
/// the backward matmul and column sums loop over the rows.
pub const MAX_ROWS: usize = 32_768;

/// Checks that a batch of `rows` fits every kernel's loops on lavapipe (65,535 iterations per
/// invocation): BatchNorm's statistics give each of 64 lanes N·S/64 values of a channel.
pub fn check_batch(layers: &[Layer], rows: usize) -> Result<()> {
    if rows > MAX_ROWS {
        return Err(Error::InvalidArgument(format!(
            "a batch of {rows} rows is above the {MAX_ROWS} wgrad supports: use a smaller batch"
        )));
    }
    for layer in layers {
        if let Layer::BatchNorm { s, .. } = *layer {
            let max = 64 * 60_000 / s;
            if rows > max {
                return Err(Error::InvalidArgument(format!(
                    "a batch of {rows} rows is too large for BatchNorm over {s} positions per channel (at most {max}): use a smaller batch"
                )));
            }
        }
    }
    Ok(())
}

/// PyTorch's BatchNorm defaults.
pub const BATCHNORM_EPS: f64 = 1e-5;
pub const BATCHNORM_MOMENTUM: f64 = 0.1;

impl Model {
    pub fn new(
        ctx: &GpuContext,
        spec: &NetSpec,
        params: &[f64],
        precision: Precision,
    ) -> Result<Model> {
        spec.validate()?;
        let (layers, layout) = spec.resolve()?;
        if params.len() != layout.total {
            return Err(Error::InvalidArgument(format!(
                "{} parameter values given, the net has {}",
                params.len(),
                layout.total
            )));
        }
        let mut half_decay = vec![0.0; layout.total];
        for t in layout.tensors.iter().filter(|t| t.is_weight()) {
            half_decay[t.offset..t.offset + t.numel].fill(0.5 * spec.weight_decay);
        }
        let mut running = Vec::new();
        let mut dropout_consts = Vec::new();
        for layer in &layers {
            match *layer {
                Layer::BatchNorm { c, .. } => {
                    let init: Vec<f64> = (0..c).flat_map(|_| [0.0, 1.0]).collect();
                    running.push(GpuBuffer::from_real(ctx, "running_stats", &init, precision));
                }
                Layer::Dropout { p, .. } => {
                    dropout_consts.push(GpuBuffer::from_real(
                        ctx,
                        "dropout_scale",
                        &[1.0 / (1.0 - p)],
                        precision,
                    ));
                }
                _ => {}
            }
        }
        Ok(Model {
            spec: spec.clone(),
            sizes: super::layers::output_sizes(&layers),
            layers,
            precision,
            params: GpuBuffer::from_real(ctx, "params", params, precision),
            grads: GpuBuffer::real(ctx, "grads", layout.total, precision),
            dropout_seed: 0,
            half_decay: GpuBuffer::from_real(ctx, "half_decay", &half_decay, precision),
            dummy_real: GpuBuffer::real(ctx, "dummy", 1, precision),
            dummy_real_rw: GpuBuffer::real(ctx, "dummy_rw", 1, precision),
            dummy_u32: GpuBuffer::zeroed(ctx, "dummy_u32", 4, 4),
            dummy_u32_rw: GpuBuffer::zeroed(ctx, "dummy_u32_rw", 4, 4),
            l2_partials: GpuBuffer::real(
                ctx,
                "l2_partials",
                layout.total.div_ceil(L2_BLOCK),
                precision,
            ),
            running,
            bn_consts: GpuBuffer::from_real(
                ctx,
                "bn_consts",
                &[BATCHNORM_EPS, BATCHNORM_MOMENTUM],
                precision,
            ),
            dropout_consts,
            one: GpuBuffer::from_real(ctx, "one", &[1.0], precision),
            layout,
        })
    }

    pub fn read_params(&self, ctx: &GpuContext) -> Result<Vec<f64>> {
        self.params.read_real(ctx, self.precision)
    }

    pub fn write_params(&self, ctx: &GpuContext, params: &[f64]) {
        self.params.write_real(ctx, 0, params, self.precision);
    }

    pub fn read_grads(&self, ctx: &GpuContext) -> Result<Vec<f64>> {
        self.grads.read_real(ctx, self.precision)
    }

    fn has_decay(&self) -> bool {
        self.spec.weight_decay != 0.0
    }

    /// Names and channel counts of BatchNorm's running statistics; see [`state_names`].
    pub fn state_names(&self) -> Vec<(String, String, usize)> {
        state_names(&self.layers, &self.layout)
    }

    /// BatchNorm's running statistics as (name, shape, values) tensors, for checkpoints.
    pub fn read_state(&self, ctx: &GpuContext) -> Result<Vec<NamedTensor>> {
        let mut out = Vec::new();
        for ((mean, var, c), buf) in self.state_names().into_iter().zip(&self.running) {
            let v = buf.read_real(ctx, self.precision)?;
            out.push((mean, vec![c], v.iter().step_by(2).copied().collect()));
            out.push((var, vec![c], v.iter().skip(1).step_by(2).copied().collect()));
        }
        Ok(out)
    }

    /// Sets BatchNorm's running statistics from (name, values) tensors; names not given keep
    /// their current values.
    pub fn write_state(&self, ctx: &GpuContext, state: &[NamedTensor]) {
        let find = |name: &str| state.iter().find(|t| t.0 == name).map(|t| &t.2);
        for ((mean, var, c), buf) in self.state_names().into_iter().zip(&self.running) {
            if let (Some(m), Some(v)) = (find(&mean), find(&var)) {
                let interleaved: Vec<f64> = (0..c).flat_map(|i| [m[i], v[i]]).collect();
                buf.write_real(ctx, 0, &interleaved, self.precision);
            }
        }
    }

    /// Index of the first layer whose parameters include flat index `i` (None: no layer).
    pub fn layer_of_param(&self, i: usize) -> Option<usize> {
        let (t, _) = self.layout.locate(i)?;
        let tensor = self.layout.tensors.iter().position(|x| x.name == t.name)?;
        self.layers.iter().position(|l| match *l {
            Layer::Affine { w, b, .. } => tensor == w || tensor == b,
            Layer::Conv { wt, b, .. } => tensor == wt || tensor == b,
            Layer::BatchNorm { gamma, beta, .. } => tensor == gamma || tensor == beta,
            _ => false,
        })
    }
}

/// Names of BatchNorm's running statistics, in layer order: (running_meanK, running_varK,
/// channels) beside gammaK and betaK, as checkpoints store them.
pub fn state_names(layers: &[Layer], layout: &ParamLayout) -> Vec<(String, String, usize)> {
    layers
        .iter()
        .filter_map(|l| match *l {
            Layer::BatchNorm { c, gamma, .. } => {
                let k = layout.tensors[gamma].name.trim_start_matches("gamma");
                Some((format!("running_mean{k}"), format!("running_var{k}"), c))
            }
            _ => None,
        })
        .collect()
}

/// conv.wgsl's Params for a convolution layer: `copies` outputs from an input `x_copy_stride`
/// apart (0: shared), an elementwise grid of `count` invocations, and the samples the weight
/// gradient sums.
fn conv_params(
    layer: &Layer,
    layout: &ParamLayout,
    n: usize,
    copies: usize,
    x_copy_stride: usize,
    count: usize,
    samples: std::ops::Range<usize>,
) -> [u32; 20] {
    let Layer::Conv {
        c,
        h,
        w,
        f,
        k,
        stride,
        pad,
        oh,
        ow,
        wt,
        b,
    } = *layer
    else {
        unreachable!("a convolution layer")
    };
    let width = grid(count).1 as usize;
    [
        n,
        c,
        h,
        w,
        f,
        k,
        k,
        stride,
        pad,
        oh,
        ow,
        copies,
        x_copy_stride,
        layout.tensors[wt].offset,
        layout.tensors[b].offset,
        width,
        samples.start,
        samples.end,
        0,
        0,
    ]
    .map(|v| v as u32)
}

/// pool.wgsl's Params: `count` invocations over `copies` copies of N·C planes.
fn pool_params(layer: &Layer, n: usize, copies: usize, count: usize) -> [u32; 12] {
    let Layer::Pool {
        c,
        h,
        w,
        size,
        stride,
        oh,
        ow,
        ..
    } = *layer
    else {
        unreachable!("a pooling layer")
    };
    [
        n * c,
        h,
        w,
        size,
        stride,
        oh,
        ow,
        copies,
        count,
        n * c * oh * ow,
        grid(count).1 as usize,
        0,
    ]
    .map(|v| v as u32)
}

/// batchnorm.wgsl's Params for `copies` copies of an [N, C, S] batch.
fn batchnorm_params(layer: &Layer, layout: &ParamLayout, n: usize, copies: usize) -> [u32; 8] {
    let Layer::BatchNorm {
        c, s, gamma, beta, ..
    } = *layer
    else {
        unreachable!("a BatchNorm layer")
    };
    let count = copies * n * c * s;
    [
        n,
        c,
        s,
        copies,
        layout.tensors[gamma].offset,
        layout.tensors[beta].offset,
        count,
        grid(count).1 as usize,
    ]
    .map(|v| v as u32)
}

/// Saved tensors a layer's backward pass (or kink counting) needs.
enum Aux {
    None,
    /// Max pooling: the arg-max of each output, [P, N, C, OH, OW] (u32).
    Argmax(GpuBuffer),
    /// BatchNorm: per (copy, channel) mean, 1/std, var; and x̂ [P, N, C, S].
    Norm {
        stats: GpuBuffer,
        xhat: GpuBuffer,
    },
    /// Dropout: the mask of one copy, 0 or 1/(1 − p).
    Mask(GpuBuffer),
    /// Convolution of a single copy: the unfolded input [N·OH·OW, C·K·K] and the matmul's
    /// NHWC output [N·OH·OW, F].
    Unfolded {
        col: GpuBuffer,
        nhwc: GpuBuffer,
    },
}

/// A batch's activations and their gradients, for N rows × P parameter copies.
pub struct Workspace {
    pub rows: usize,
    pub copies: usize,
    /// Input [N, D]: shared by every copy.
    pub x: GpuBuffer,
    /// Labels [N] (u32; 0xffffffff marks padding).
    pub labels: GpuBuffer,
    /// Each layer's output, [P, N, size]; the last is the logits.
    pub out: Vec<GpuBuffer>,
    /// Gradients of each layer's output (training workspaces only).
    d_out: Vec<GpuBuffer>,
    aux: Vec<Aux>,
    /// Per-row loss and correctness, [P, N].
    pub row_loss: GpuBuffer,
    pub row_correct: GpuBuffer,
    affine: Vec<usize>,
    activations: Vec<usize>,
}

impl Workspace {
    pub fn new(
        ctx: &GpuContext,
        model: &Model,
        rows: usize,
        copies: usize,
        with_grads: bool,
    ) -> Workspace {
        let p = model.precision;
        let per = |size: usize| rows * copies * size;
        let out = model
            .sizes
            .iter()
            .enumerate()
            .map(|(i, &size)| GpuBuffer::real(ctx, &format!("out{i}"), per(size), p))
            .collect();
        let d_out = if with_grads {
            model
                .sizes
                .iter()
                .enumerate()
                .map(|(i, &size)| GpuBuffer::real(ctx, &format!("d_out{i}"), rows * size, p))
                .collect()
        } else {
            Vec::new()
        };
        let aux = model
            .layers
            .iter()
            .zip(&model.sizes)
            .map(|(layer, &size)| match *layer {
                Layer::Pool { max: true, .. } => {
                    Aux::Argmax(GpuBuffer::zeroed(ctx, "argmax", per(size), 4))
                }
                Layer::BatchNorm { c, .. } => Aux::Norm {
                    stats: GpuBuffer::real(ctx, "bn_stats", copies * c * 3, p),
                    xhat: GpuBuffer::real(ctx, "bn_xhat", per(size), p),
                },
                Layer::Dropout { .. } => {
                    Aux::Mask(GpuBuffer::real(ctx, "dropout_mask", rows * size, p))
                }
                Layer::Conv {
                    c, f, k, oh, ow, ..
                } if copies == 1 => Aux::Unfolded {
                    col: GpuBuffer::real(ctx, "im2col", rows * oh * ow * c * k * k, p),
                    nhwc: GpuBuffer::real(ctx, "conv_nhwc", rows * oh * ow * f, p),
                },
                _ => Aux::None,
            })
            .collect();
        let index_of = |pred: fn(&Layer) -> bool| -> Vec<usize> {
            model
                .layers
                .iter()
                .enumerate()
                .filter(|(_, l)| pred(l))
                .map(|(i, _)| i)
                .collect()
        };
        Workspace {
            rows,
            copies,
            x: GpuBuffer::real(ctx, "x", rows * model.spec.input, p),
            labels: GpuBuffer::zeroed(ctx, "labels", rows, 4),
            out,
            d_out,
            aux,
            row_loss: GpuBuffer::real(ctx, "row_loss", rows * copies, p),
            row_correct: GpuBuffer::zeroed(ctx, "row_correct", rows * copies, 4),
            affine: index_of(|l| matches!(l, Layer::Affine { .. })),
            activations: index_of(|l| matches!(l, Layer::Act(_))),
        }
    }

    pub fn upload(&self, ctx: &GpuContext, x: &[f64], labels: &[u32], precision: Precision) {
        self.x.write_real(ctx, 0, x, precision);
        self.labels.write_u32(ctx, 0, labels);
    }

    /// Outputs of the affine layers (an MLP's pre-activations, the last being the logits).
    pub fn pre(&self) -> Vec<&GpuBuffer> {
        self.affine.iter().map(|&i| &self.out[i]).collect()
    }

    /// Outputs of the activation layers (an MLP's hidden activations).
    pub fn act(&self) -> Vec<&GpuBuffer> {
        self.activations.iter().map(|&i| &self.out[i]).collect()
    }

    fn has_grads(&self) -> bool {
        !self.d_out.is_empty()
    }
}

/// How a forward pass treats its P copies.
pub enum Copies<'a> {
    /// One copy: the parameters as they are.
    Single,
    /// P perturbed copies: `pert` holds (flat index, sign) pairs, `h` the step; each copy
    /// reads the shared base plus its own one-element change. `flips` receives, per copy, the
    /// ReLU units and max-pool windows whose state differs from `base` (the unperturbed
    /// workspace).
    Perturbed {
        pert: &'a GpuBuffer,
        h: &'a GpuBuffer,
        flips: &'a GpuBuffer,
        base: &'a Workspace,
    },
}

/// What BatchNorm and Dropout do in a forward pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Batch statistics (and a running-statistics update); a fresh dropout mask each step.
    Train,
    /// Running statistics; no dropout.
    Eval,
    /// Batch statistics without touching the running ones; the dropout mask of the step word
    /// given (the same for every evaluation of a gradient check).
    Check,
}

/// Builds dispatch lists for one model.
pub struct Recorder<'a> {
    pub ctx: &'a GpuContext,
    pub kernels: &'a Kernels,
    pub model: &'a Model,
}

impl Recorder<'_> {
    fn matmul(
        &self,
        kernel: &Kernel,
        params: MatmulParams,
        batch: usize,
        bufs: [&wgpu::Buffer; 6],
    ) -> Dispatch {
        let u = uniform(self.ctx, "matmul", &params);
        let [a, b, bias, c, pert, h] = bufs;
        kernel.dispatch(
            self.ctx,
            &[&u, a, b, bias, c, pert, h],
            [
                kernel::groups(params.n as usize, 32),
                kernel::groups(params.m as usize, 32),
                batch as u32,
            ],
        )
    }

    fn elementwise(
        &self,
        kernel: &Kernel,
        count: usize,
        per_copy: usize,
        bufs: [&wgpu::Buffer; 4],
    ) -> Dispatch {
        let (g, width) = grid(count);
        let u = uniform(
            self.ctx,
            "elementwise",
            &Quad([count as u32, per_copy.max(1) as u32, width, 0]),
        );
        let [x, aux, y, flips] = bufs;
        kernel.dispatch(self.ctx, &[&u, x, aux, y, flips], g)
    }

    /// Forward pass of a training workspace (Train mode) or an evaluation one (Eval mode), with
    /// dropout masks drawn from step 0; see [`Recorder::forward_with`].
    pub fn forward(&self, ws: &Workspace, copies: &Copies) -> Vec<Dispatch> {
        let mode = match copies {
            Copies::Perturbed { .. } => Mode::Check,
            Copies::Single if ws.has_grads() => Mode::Train,
            Copies::Single => Mode::Eval,
        };
        self.forward_with(ws, copies, mode, &self.model.dummy_u32, 0)
    }

    /// Forward pass from layer `start` on (its input: `ws.x` for 0, else the output of layer
    /// `start − 1` of the unperturbed base workspace, shared by every copy), then per-row
    /// softmax-CE loss (and dlogits when `ws` has gradient buffers). `state`'s word 0 is the
    /// step that seeds dropout masks.
    pub fn forward_with(
        &self,
        ws: &Workspace,
        copies: &Copies,
        mode: Mode,
        state: &GpuBuffer,
        start: usize,
    ) -> Vec<Dispatch> {
        let m = self.model;
        let k = self.kernels;
        let n = ws.rows;
        let p = &m.params.buffer;
        let dummy = &m.dummy_real.buffer;
        let dummy_u = &m.dummy_u32.buffer;
        let dummy_rw = &m.dummy_real_rw.buffer;
        let dummy_u_rw = &m.dummy_u32_rw.buffer;
        let (pert, h) = match copies {
            Copies::Single => (dummy_u, dummy),
            Copies::Perturbed { pert, h, .. } => (&pert.buffer, &h.buffer),
        };
        let perturbed = matches!(copies, Copies::Perturbed { .. });
        let mut out = Vec::new();
        for (i, layer) in m.layers.iter().enumerate() {
            if i < start {
                continue;
            }
            // The input is shared across copies where it lies below every perturbation.
            let (input, shared) = match (i, copies) {
                (0, _) => (&ws.x, true),
                (_, Copies::Perturbed { base, .. }) if i == start => (&base.out[i - 1], true),
                _ => (&ws.out[i - 1], false),
            };
            let in_size = if i == 0 { m.spec.input } else { m.sizes[i - 1] };
            let size = m.sizes[i];
            let y = &ws.out[i].buffer;
            let count = ws.copies * n * size;
            match *layer {
                Layer::Affine { d_in, d_out, w, b } => {
                    let params = MatmulParams {
                        m: n as u32,
                        n: d_out as u32,
                        k: d_in as u32,
                        flags: ADD_BIAS,
                        a_rs: d_in as u32,
                        a_cs: 1,
                        a_bs: if shared { 0 } else { (n * d_in) as u32 },
                        b_off: m.layout.tensors[w].offset as u32,
                        b_rs: d_out as u32,
                        b_cs: 1,
                        bias_off: m.layout.tensors[b].offset as u32,
                        c_rs: d_out as u32,
                        c_bs: (n * d_out) as u32,
                        ..Default::default()
                    };
                    let kernel = if perturbed {
                        &k.matmul_perturbed
                    } else {
                        &k.matmul
                    };
                    out.push(self.matmul(
                        kernel,
                        params,
                        ws.copies,
                        [&input.buffer, p, p, y, pert, h],
                    ));
                }
                Layer::Conv {
                    c,
                    f,
                    k: ks,
                    oh,
                    ow,
                    wt,
                    b,
                    ..
                } => {
                    let g = grid(count).0;
                    let x_stride = if shared { 0 } else { n * in_size };
                    let params = conv_params(layer, &m.layout, n, ws.copies, x_stride, count, 0..n);
                    if let Aux::Unfolded { col, nhwc } = &ws.aux[i] {
                        // One copy: im2col, then [N·OH·OW, CKK] · Wᵀ [CKK, F] + b with the
                        // matmul kernel, then back to NCHW (2.1× faster than the direct kernel
                        // on lavapipe, benches/conv_layout.rs).
                        let rows = n * oh * ow;
                        let ckk = c * ks * ks;
                        let with_width = |count: usize| {
                            let q = conv_params(layer, &m.layout, n, 1, 0, count, 0..n);
                            uniform(self.ctx, "conv_unfold", &q)
                        };
                        let u = with_width(rows * ckk);
                        out.push(k.im2col.dispatch(
                            self.ctx,
                            &[&u, &input.buffer, p, &col.buffer],
                            grid(rows * ckk).0,
                        ));
                        let mm = MatmulParams {
                            m: rows as u32,
                            n: f as u32,
                            k: ckk as u32,
                            flags: ADD_BIAS,
                            a_rs: ckk as u32,
                            a_cs: 1,
                            b_off: m.layout.tensors[wt].offset as u32,
                            b_rs: 1,
                            b_cs: ckk as u32,
                            bias_off: m.layout.tensors[b].offset as u32,
                            c_rs: f as u32,
                            ..Default::default()
                        };
                        out.push(self.matmul(
                            &k.matmul,
                            mm,
                            1,
                            [&col.buffer, p, p, &nhwc.buffer, pert, h],
                        ));
                        let u = with_width(count);
                        out.push(
                            k.nhwc_to_nchw
                                .dispatch(self.ctx, &[&u, &nhwc.buffer, p, y], g),
                        );
                    } else {
                        let u = uniform(self.ctx, "conv", &params);
                        let kernel = if perturbed {
                            &k.conv_forward_perturbed
                        } else {
                            &k.conv_forward
                        };
                        out.push(kernel.dispatch(self.ctx, &[&u, &input.buffer, p, y, pert, h], g));
                    }
                }
                Layer::Act(act) => {
                    let (kernel, aux, flips) = match (act, copies) {
                        (Activation::Relu, Copies::Perturbed { flips, base, .. }) => (
                            &k.relu_forward_kinks,
                            &base.out[i - 1].buffer,
                            &flips.buffer,
                        ),
                        (Activation::Relu, Copies::Single) => (&k.relu_forward, dummy, dummy_u_rw),
                        (Activation::Sigmoid, _) => (&k.sigmoid_forward, dummy, dummy_u_rw),
                    };
                    debug_assert!(
                        !shared || ws.copies == 1,
                        "routes start at affine or convolution layers"
                    );
                    out.push(self.elementwise(
                        kernel,
                        count,
                        n * size,
                        [&input.buffer, aux, y, flips],
                    ));
                }
                Layer::Pool { max, .. } => {
                    let g = grid(count).0;
                    let params = pool_params(layer, n, ws.copies, count);
                    let u = uniform(self.ctx, "pool", &params);
                    let argmax = match &ws.aux[i] {
                        Aux::Argmax(a) => &a.buffer,
                        _ => dummy_u_rw,
                    };
                    let (kernel, base_argmax, flips) = match (max, copies) {
                        (true, Copies::Perturbed { flips, base, .. }) => match &base.aux[i] {
                            Aux::Argmax(a) => (&k.max_forward_kinks, &a.buffer, &flips.buffer),
                            _ => unreachable!("max pooling keeps its arg-max"),
                        },
                        (true, Copies::Single) => (&k.max_forward, dummy_u, dummy_u_rw),
                        (false, _) => (&k.avg_forward, dummy_u, dummy_u_rw),
                    };
                    out.push(kernel.dispatch(
                        self.ctx,
                        &[&u, &input.buffer, y, argmax, base_argmax, flips],
                        g,
                    ));
                }
                Layer::BatchNorm { c, index, .. } => {
                    let Aux::Norm { stats, xhat } = &ws.aux[i] else {
                        unreachable!("BatchNorm keeps its statistics")
                    };
                    let g = grid(count).0;
                    let params = batchnorm_params(layer, &m.layout, n, ws.copies);
                    let u = uniform(self.ctx, "batchnorm", &params);
                    let running = &m.running[index].buffer;
                    let bufs = [
                        &u,
                        &m.bn_consts.buffer,
                        &input.buffer,
                        &stats.buffer,
                        p,
                        &xhat.buffer,
                        y,
                        dummy_rw,
                        running,
                        pert,
                        h,
                    ];
                    if mode == Mode::Eval {
                        out.push(k.bn_forward_eval.dispatch(self.ctx, &bufs, g));
                    } else {
                        out.push(
                            k.bn_stats
                                .dispatch(self.ctx, &bufs, grid(ws.copies * c * 64).0),
                        );
                        let kernel = if perturbed {
                            &k.bn_forward_perturbed
                        } else {
                            &k.bn_forward_train
                        };
                        out.push(kernel.dispatch(self.ctx, &bufs, g));
                        if mode == Mode::Train {
                            out.push(k.bn_update_running.dispatch(self.ctx, &bufs, grid(c).0));
                        }
                    }
                }
                Layer::Dropout { p: prob, index } => {
                    let Aux::Mask(mask) = &ws.aux[i] else {
                        unreachable!("dropout keeps its mask")
                    };
                    let (g, width) = grid(count);
                    // In evaluation dropout is the identity: a threshold of 0 keeps every
                    // element, and the scale buffer is bound to 1.
                    let eval = mode == Mode::Eval;
                    let threshold = if eval {
                        0
                    } else {
                        (prob * 4_294_967_296.0).round().min(u32::MAX as f64) as u32
                    };
                    let params = [
                        count as u32,
                        (n * size) as u32,
                        m.dropout_seed,
                        threshold,
                        0,
                        width,
                        0,
                        0,
                    ];
                    let u = uniform(self.ctx, "dropout", &params);
                    let scale = if eval {
                        &m.one.buffer
                    } else {
                        &m.dropout_consts[index].buffer
                    };
                    out.push(k.dropout_forward.dispatch(
                        self.ctx,
                        &[&u, &input.buffer, &state.buffer, y, &mask.buffer, scale],
                        g,
                    ));
                }
            }
        }
        out.push(self.softmax(ws));
        out
    }

    fn softmax(&self, ws: &Workspace) -> Dispatch {
        let classes = self.model.spec.output;
        let rows = ws.rows * ws.copies;
        let (g, width) = grid(rows);
        let u = uniform(
            self.ctx,
            "softmax",
            &Quad([rows as u32, classes as u32, ws.rows as u32, width]),
        );
        let (kernel, dlogits) = match ws.d_out.last() {
            Some(d) => (&self.kernels.softmax_grad, &d.buffer),
            None => (&self.kernels.softmax_loss, &self.model.dummy_real_rw.buffer),
        };
        kernel.dispatch(
            self.ctx,
            &[
                &u,
                &ws.out.last().unwrap().buffer,
                &ws.labels.buffer,
                &ws.row_loss.buffer,
                &ws.row_correct.buffer,
                dlogits,
            ],
            g,
        )
    }

    /// Backward pass from dlogits to every parameter's gradient (written, not accumulated),
    /// including the L2 term.
    pub fn backward(&self, ws: &Workspace) -> Vec<Dispatch> {
        assert!(
            ws.has_grads() && ws.copies == 1,
            "backward needs a training workspace"
        );
        let m = self.model;
        let k = self.kernels;
        let n = ws.rows;
        let p = &m.params.buffer;
        let dummy = &m.dummy_real.buffer;
        let dummy_u = &m.dummy_u32.buffer;
        let dummy_rw = &m.dummy_real_rw.buffer;
        let grads = &m.grads.buffer;
        let mut out = Vec::new();
        for (i, layer) in m.layers.iter().enumerate().rev() {
            let input = if i == 0 { &ws.x } else { &ws.out[i - 1] };
            let in_size = if i == 0 { m.spec.input } else { m.sizes[i - 1] };
            let dy = &ws.d_out[i].buffer;
            // The first layer's input gradient is never needed.
            let dx = (i > 0).then(|| &ws.d_out[i - 1].buffer);
            match *layer {
                Layer::Affine { d_in, d_out, w, b } => {
                    let (w, b) = (&m.layout.tensors[w], &m.layout.tensors[b]);
                    // dW [D, H] = Xᵀ [D, N] · dY [N, H]
                    let dw = MatmulParams {
                        m: d_in as u32,
                        n: d_out as u32,
                        k: n as u32,
                        a_rs: 1,
                        a_cs: d_in as u32,
                        b_rs: d_out as u32,
                        b_cs: 1,
                        c_off: w.offset as u32,
                        c_rs: d_out as u32,
                        ..Default::default()
                    };
                    out.push(self.matmul(
                        &k.matmul,
                        dw,
                        1,
                        [&input.buffer, dy, dummy, grads, dummy_u, dummy],
                    ));
                    // db [H] = Σ_n dY[n, :]
                    let db = MatmulParams {
                        m: n as u32,
                        n: d_out as u32,
                        a_rs: d_out as u32,
                        a_cs: 1,
                        c_off: b.offset as u32,
                        ..Default::default()
                    };
                    let u = uniform(self.ctx, "column_sum", &db);
                    out.push(k.column_sum.dispatch(
                        self.ctx,
                        &[&u, dy, dummy, dummy, grads, dummy_u, dummy],
                        [kernel::groups(d_out, 64), 1, 1],
                    ));
                    if let Some(dx) = dx {
                        // dX [N, D] = dY [N, H] · Wᵀ [H, D]
                        let params = MatmulParams {
                            m: n as u32,
                            n: d_in as u32,
                            k: d_out as u32,
                            a_rs: d_out as u32,
                            a_cs: 1,
                            b_off: w.offset as u32,
                            b_rs: 1,
                            b_cs: d_out as u32,
                            c_rs: d_in as u32,
                            ..Default::default()
                        };
                        out.push(self.matmul(
                            &k.matmul,
                            params,
                            1,
                            [dy, p, dummy, dx, dummy_u, dummy],
                        ));
                    }
                }
                Layer::Conv {
                    c,
                    f,
                    k: ks,
                    oh,
                    ow,
                    ..
                } => {
                    let params = |count: usize, samples| {
                        conv_params(layer, &m.layout, n, 1, 0, count, samples)
                    };
                    // Each weight's invocation loops over N·OH·OW products: split the batch so
                    // no invocation passes lavapipe's 65,535-iteration limit.
                    let count = f * c * ks * ks + f;
                    let per_sample = oh * ow + oh + 1;
                    let slice = (30_000 / per_sample).max(1);
                    for begin in (0..n).step_by(slice) {
                        let u = uniform(
                            self.ctx,
                            "conv_grad",
                            &params(count, begin..(begin + slice).min(n)),
                        );
                        out.push(k.conv_backward_params.dispatch(
                            self.ctx,
                            &[&u, dy, &input.buffer, grads],
                            grid(count).0,
                        ));
                    }
                    if let Some(dx) = dx {
                        let count = n * in_size;
                        let u = uniform(self.ctx, "conv_dx", &params(count, 0..n));
                        out.push(k.conv_backward_input.dispatch(
                            self.ctx,
                            &[&u, dy, p, dx],
                            grid(count).0,
                        ));
                    }
                }
                Layer::Act(act) => {
                    let (kernel, aux) = match act {
                        Activation::Relu => (&k.relu_backward, &input.buffer),
                        Activation::Sigmoid => (&k.sigmoid_backward, &ws.out[i].buffer),
                    };
                    if let Some(dx) = dx {
                        let count = n * in_size;
                        out.push(self.elementwise(
                            kernel,
                            count,
                            count,
                            [dy, aux, dx, &m.dummy_u32_rw.buffer],
                        ));
                    }
                }
                Layer::Pool { max, .. } => {
                    if let Some(dx) = dx {
                        let count = n * in_size;
                        let g = grid(count).0;
                        let params = pool_params(layer, n, 1, count);
                        let u = uniform(self.ctx, "pool_grad", &params);
                        let (kernel, argmax) = match &ws.aux[i] {
                            Aux::Argmax(a) if max => (&k.max_backward, &a.buffer),
                            _ => (&k.avg_backward, dummy_u),
                        };
                        out.push(kernel.dispatch(self.ctx, &[&u, dy, argmax, dx], g));
                    }
                }
                Layer::BatchNorm { c, s, index, .. } => {
                    let Aux::Norm { stats, xhat } = &ws.aux[i] else {
                        unreachable!("BatchNorm keeps its statistics")
                    };
                    let g = grid(n * c * s).0;
                    let params = batchnorm_params(layer, &m.layout, n, 1);
                    let u = uniform(self.ctx, "batchnorm_grad", &params);
                    let running = &m.running[index].buffer;
                    let dx_buf = dx.unwrap_or(dummy_rw);
                    let bufs = [
                        &u,
                        &m.bn_consts.buffer,
                        dy,
                        &stats.buffer,
                        p,
                        &xhat.buffer,
                        dx_buf,
                        grads,
                        running,
                        dummy_u,
                        dummy,
                    ];
                    out.push(
                        k.bn_backward_params
                            .dispatch(self.ctx, &bufs, grid(c * 64).0),
                    );
                    if dx.is_some() {
                        out.push(k.bn_backward_input.dispatch(self.ctx, &bufs, g));
                    }
                }
                Layer::Dropout { .. } => {
                    let Aux::Mask(mask) = &ws.aux[i] else {
                        unreachable!("dropout keeps its mask")
                    };
                    if let Some(dx) = dx {
                        let count = n * in_size;
                        let (g, width) = grid(count);
                        let params = [count as u32, count as u32, 0, 0, 0, width, 0, 0];
                        let u = uniform(self.ctx, "dropout_grad", &params);
                        out.push(k.dropout_backward.dispatch(
                            self.ctx,
                            &[&u, dy, dummy_u, dx, &mask.buffer, dummy],
                            g,
                        ));
                    }
                }
            }
        }
        if m.has_decay() {
            let (g, width) = grid(m.layout.total);
            let u = uniform(self.ctx, "l2", &Quad([m.layout.total as u32, width, 0, 0]));
            out.push(k.l2_grad.dispatch(
                self.ctx,
                &[&u, &m.params.buffer, &m.half_decay.buffer, grads, dummy_rw],
                g,
            ));
        }
        out
    }

    /// stats[3] = the L2 penalty at the current parameters (0 without weight decay).
    pub fn l2_penalty(&self, stats: &GpuBuffer) -> Vec<Dispatch> {
        let m = self.model;
        if !m.has_decay() {
            return Vec::new();
        }
        let u = uniform(self.ctx, "l2", &Quad([m.layout.total as u32, 0, 0, 0]));
        let buffers = [
            &u,
            &m.params.buffer,
            &m.half_decay.buffer,
            &m.l2_partials.buffer,
            &stats.buffer,
        ];
        let blocks = kernel::groups(m.layout.total, L2_BLOCK);
        vec![
            self.kernels
                .l2_partial
                .dispatch(self.ctx, &buffers, [blocks, 1, 1]),
            self.kernels
                .l2_penalty
                .dispatch(self.ctx, &buffers, [1, 1, 1]),
        ]
    }

    #[allow(clippy::too_many_arguments)]
    fn metrics(
        &self,
        kernel: &Kernel,
        ws: &Workspace,
        rows: usize,
        stats: &GpuBuffer,
        state: &GpuBuffer,
        groups: [u32; 3],
        width: u32,
    ) -> Dispatch {
        let u = uniform(
            self.ctx,
            "metrics",
            &Quad([rows as u32, ws.rows as u32, 0, width]),
        );
        kernel.dispatch(
            self.ctx,
            &[
                &u,
                &ws.row_loss.buffer,
                &ws.row_correct.buffer,
                &stats.buffer,
                &state.buffer,
                &ws.labels.buffer,
            ],
            groups,
        )
    }

    /// Training-step loss and correct count into `stats`, divergence into `state`.
    pub fn train_metrics(&self, ws: &Workspace, stats: &GpuBuffer, state: &GpuBuffer) -> Dispatch {
        self.metrics(
            &self.kernels.train_metrics,
            ws,
            ws.rows,
            stats,
            state,
            [1, 1, 1],
            0,
        )
    }

    /// Evaluation-batch sums into `stats`, cursor advance in `state`.
    pub fn eval_metrics(&self, ws: &Workspace, stats: &GpuBuffer, state: &GpuBuffer) -> Dispatch {
        self.metrics(
            &self.kernels.eval_metrics,
            ws,
            ws.rows,
            stats,
            state,
            [1, 1, 1],
            0,
        )
    }

    /// Mean data loss of each copy into `out[p]`.
    pub fn copy_loss(&self, ws: &Workspace, out: &GpuBuffer) -> Dispatch {
        let (g, width) = grid(ws.copies);
        self.metrics(
            &self.kernels.copy_loss,
            ws,
            ws.copies,
            out,
            &self.model.dummy_u32,
            g,
            width,
        )
    }

    /// End of a training step: t += 1, next batch.
    pub fn advance(&self, ws: &Workspace, stats: &GpuBuffer, state: &GpuBuffer) -> Dispatch {
        self.metrics(&self.kernels.advance, ws, 0, stats, state, [1, 1, 1], 0)
    }
}

/// A data set resident on the GPU: pixels as packed bytes, labels, and an index (permutation).
pub struct GpuDataset {
    pub len: usize,
    pub features: usize,
    pixels: GpuBuffer,
    labels: GpuBuffer,
    pub index: GpuBuffer,
}

impl GpuDataset {
    pub fn new(ctx: &GpuContext, data: &crate::data::Dataset) -> GpuDataset {
        let labels: Vec<u32> = data.labels.iter().map(|&l| u32::from(l)).collect();
        let identity: Vec<u32> = (0..data.len() as u32).collect();
        GpuDataset {
            len: data.len(),
            features: data.image_size(),
            pixels: GpuBuffer::from_bytes(ctx, "pixels", &data.images, 4),
            labels: GpuBuffer::from_u32(ctx, "labels", &labels),
            index: GpuBuffer::from_u32(ctx, "index", &identity),
        }
    }

    /// Gathers batch number `state[cursor_slot]` of `index` into `ws.x` / `ws.labels`.
    pub fn gather(
        &self,
        ctx: &GpuContext,
        kernels: &Kernels,
        ws: &Workspace,
        state: &GpuBuffer,
        cursor_slot: u32,
    ) -> Dispatch {
        let (g, width) = grid(ws.rows * self.features);
        let u = uniform(
            ctx,
            "gather",
            &Oct([
                ws.rows as u32,
                self.features as u32,
                self.len as u32,
                cursor_slot,
                width,
                0,
                0,
                0,
            ]),
        );
        kernels.gather.dispatch(
            ctx,
            &[
                &u,
                &self.pixels.buffer,
                &self.labels.buffer,
                &self.index.buffer,
                &state.buffer,
                &ws.x.buffer,
                &ws.labels.buffer,
            ],
            g,
        )
    }
}
