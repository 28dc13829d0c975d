//! The GPU model: one flat parameter arena (and its gradient), the kernels of every layer, and
//! workspaces holding a batch's activations. Forward and backward passes are lists of
//! [`Dispatch`]es built once and replayed, so a step costs no host work beyond recording.
//!
//! Shapes: N batch rows, P parameter copies (1 for training; many in the full-forward numerical
//! gradient), widths[l] → widths[l+1] for affine layer l.

use bytemuck::{Pod, Zeroable};

use crate::error::{Error, Result};
use crate::gpu::buffers::uniform;
use crate::gpu::kernel::{self, grid, shaders, Binding};
use crate::gpu::{Dispatch, GpuBuffer, GpuContext, Kernel, Precision};
use crate::nn::{Activation, NetSpec, ParamLayout};

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
        };
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(Error::Gpu(format!(
                "building the {precision} kernels failed: {e}"
            )));
        }
        Ok(kernels)
    }
}

/// Parameters, gradients and the per-element L2 factors of one net on the GPU.
pub struct Model {
    pub spec: NetSpec,
    pub layout: ParamLayout,
    pub precision: Precision,
    pub params: GpuBuffer,
    pub grads: GpuBuffer,
    /// λ/2 for weight elements, 0 for biases.
    half_decay: GpuBuffer,
    /// Bound where a kernel's binding goes unused, since every binding needs a buffer.
    dummy_real: GpuBuffer,
    dummy_u32: GpuBuffer,
    /// Per-block sums of the L2 penalty (first pass of its reduction).
    l2_partials: GpuBuffer,
}

/// Elements per workgroup in the first pass of the L2 reduction (shaders/l2.wgsl BLOCK).
const L2_BLOCK: usize = 65536;

/// Widest layer the kernels accept: the matmul loops over a layer's inputs, and lavapipe stops
/// a shader invocation after 65,535 loop iterations (the grid limit, 65,535 workgroups of 32
/// columns, is far above this).
pub const MAX_WIDTH: usize = 65_535;

/// Most rows per batch: lavapipe stops a shader invocation after 65,535 loop iterations, and
/// the backward matmul and column sums loop over the rows.
pub const MAX_ROWS: usize = 32_768;

impl Model {
    pub fn new(
        ctx: &GpuContext,
        spec: &NetSpec,
        params: &[f64],
        precision: Precision,
    ) -> Result<Model> {
        spec.validate()?;
        let layout = spec.layout();
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
        Ok(Model {
            spec: spec.clone(),
            precision,
            params: GpuBuffer::from_real(ctx, "params", params, precision),
            grads: GpuBuffer::real(ctx, "grads", layout.total, precision),
            half_decay: GpuBuffer::from_real(ctx, "half_decay", &half_decay, precision),
            dummy_real: GpuBuffer::real(ctx, "dummy", 1, precision),
            dummy_u32: GpuBuffer::zeroed(ctx, "dummy_u32", 4, 4),
            l2_partials: GpuBuffer::real(
                ctx,
                "l2_partials",
                layout.total.div_ceil(L2_BLOCK),
                precision,
            ),
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
}

/// A batch's activations and their gradients, for N rows × P parameter copies.
pub struct Workspace {
    pub rows: usize,
    pub copies: usize,
    /// Input [N, D]: shared by every copy.
    pub x: GpuBuffer,
    /// Labels [N] (u32; 0xffffffff marks padding).
    pub labels: GpuBuffer,
    /// Affine outputs (pre-activations) per layer, [P, N, widths[l+1]]; the last is the logits.
    pub pre: Vec<GpuBuffer>,
    /// Hidden activations per hidden layer, [P, N, widths[l+1]].
    pub act: Vec<GpuBuffer>,
    /// Gradients of `pre` and `act` (training workspaces only).
    d_pre: Vec<GpuBuffer>,
    d_act: Vec<GpuBuffer>,
    /// Per-row loss and correctness, [P, N].
    pub row_loss: GpuBuffer,
    pub row_correct: GpuBuffer,
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
        let widths = model.spec.widths();
        let per = |w: usize| rows * copies * w;
        let layer_bufs = |name: &str, count: usize| -> Vec<GpuBuffer> {
            (0..count)
                .map(|l| GpuBuffer::real(ctx, &format!("{name}{}", l + 1), per(widths[l + 1]), p))
                .collect()
        };
        let depth = model.spec.depth();
        Workspace {
            rows,
            copies,
            x: GpuBuffer::real(ctx, "x", rows * widths[0], p),
            labels: GpuBuffer::zeroed(ctx, "labels", rows, 4),
            pre: layer_bufs("pre", depth),
            act: layer_bufs("act", depth - 1),
            d_pre: if with_grads {
                layer_bufs("d_pre", depth)
            } else {
                Vec::new()
            },
            d_act: if with_grads {
                layer_bufs("d_act", depth - 1)
            } else {
                Vec::new()
            },
            row_loss: GpuBuffer::real(ctx, "row_loss", rows * copies, p),
            row_correct: GpuBuffer::zeroed(ctx, "row_correct", rows * copies, 4),
        }
    }

    pub fn upload(&self, ctx: &GpuContext, x: &[f64], labels: &[u32], precision: Precision) {
        self.x.write_real(ctx, 0, x, precision);
        self.labels.write_u32(ctx, 0, labels);
    }
}

/// How a forward pass treats its P copies.
pub enum Copies<'a> {
    /// One copy: the parameters as they are.
    Single,
    /// P perturbed copies: `pert` holds (flat index, sign) pairs, `h` the step; each copy
    /// reads the shared base plus its own one-element change. `flips` receives, per copy, the
    /// ReLU units whose state differs from `base` (the unperturbed workspace).
    Perturbed {
        pert: &'a GpuBuffer,
        h: &'a GpuBuffer,
        flips: &'a GpuBuffer,
        base: &'a Workspace,
    },
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

    /// Forward pass: affine and activation layers, then per-row softmax-CE loss (and dlogits
    /// when `ws` has gradient buffers). Input `ws.x`, labels `ws.labels`.
    pub fn forward(&self, ws: &Workspace, copies: &Copies) -> Vec<Dispatch> {
        let m = self.model;
        let k = self.kernels;
        let widths = m.spec.widths();
        let depth = m.spec.depth();
        let dummy = &m.dummy_real.buffer;
        let (matmul, pert, h) = match copies {
            Copies::Single => (&k.matmul, &m.dummy_u32.buffer, dummy),
            Copies::Perturbed { pert, h, .. } => (&k.matmul_perturbed, &pert.buffer, &h.buffer),
        };
        let n = ws.rows;
        let mut out = Vec::new();
        for l in 0..depth {
            let (d, hdim) = (widths[l], widths[l + 1]);
            let w = &m.layout.tensors[2 * l];
            let b = &m.layout.tensors[2 * l + 1];
            // The input is shared across copies for the first layer, per copy above it.
            let (input, a_bs) = if l == 0 {
                (&ws.x, 0)
            } else {
                (&ws.act[l - 1], n * d)
            };
            let params = MatmulParams {
                m: n as u32,
                n: hdim as u32,
                k: d as u32,
                flags: ADD_BIAS,
                a_rs: d as u32,
                a_cs: 1,
                a_bs: a_bs as u32,
                b_off: w.offset as u32,
                b_rs: hdim as u32,
                b_cs: 1,
                bias_off: b.offset as u32,
                c_rs: hdim as u32,
                c_bs: (n * hdim) as u32,
                ..Default::default()
            };
            let p = &m.params.buffer;
            out.push(self.matmul(
                matmul,
                params,
                ws.copies,
                [&input.buffer, p, p, &ws.pre[l].buffer, pert, h],
            ));
            if l + 1 < depth {
                let count = ws.copies * n * hdim;
                let (kernel, aux, flips) = match (m.spec.activation, copies) {
                    (Activation::Relu, Copies::Perturbed { flips, base, .. }) => {
                        (&k.relu_forward_kinks, &base.pre[l].buffer, &flips.buffer)
                    }
                    (Activation::Relu, Copies::Single) => {
                        (&k.relu_forward, dummy, &m.dummy_u32.buffer)
                    }
                    (Activation::Sigmoid, _) => (&k.sigmoid_forward, dummy, &m.dummy_u32.buffer),
                };
                out.push(self.elementwise(
                    kernel,
                    count,
                    n * hdim,
                    [&ws.pre[l].buffer, aux, &ws.act[l].buffer, flips],
                ));
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
        let (kernel, dlogits) = match ws.d_pre.last() {
            Some(d) => (&self.kernels.softmax_grad, &d.buffer),
            None => (&self.kernels.softmax_loss, &self.model.dummy_real.buffer),
        };
        kernel.dispatch(
            self.ctx,
            &[
                &u,
                &ws.pre.last().unwrap().buffer,
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
            !ws.d_pre.is_empty() && ws.copies == 1,
            "backward needs a training workspace"
        );
        let m = self.model;
        let k = self.kernels;
        let widths = m.spec.widths();
        let n = ws.rows;
        let dummy = &m.dummy_real.buffer;
        let dummy_u = &m.dummy_u32.buffer;
        let grads = &m.grads.buffer;
        let mut out = Vec::new();
        for l in (0..m.spec.depth()).rev() {
            let (d, hdim) = (widths[l], widths[l + 1]);
            let w = &m.layout.tensors[2 * l];
            let b = &m.layout.tensors[2 * l + 1];
            let input = if l == 0 { &ws.x } else { &ws.act[l - 1] };
            let dy = &ws.d_pre[l].buffer;
            // dW [D, H] = Xᵀ [D, N] · dY [N, H]
            let dw = MatmulParams {
                m: d as u32,
                n: hdim as u32,
                k: n as u32,
                a_rs: 1,
                a_cs: d as u32,
                b_rs: hdim as u32,
                b_cs: 1,
                c_off: w.offset as u32,
                c_rs: hdim as u32,
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
                n: hdim as u32,
                a_rs: hdim as u32,
                a_cs: 1,
                c_off: b.offset as u32,
                ..Default::default()
            };
            let u = uniform(self.ctx, "column_sum", &db);
            out.push(k.column_sum.dispatch(
                self.ctx,
                &[&u, dy, dummy, dummy, grads, dummy_u, dummy],
                [kernel::groups(hdim, 64), 1, 1],
            ));
            if l > 0 {
                // dX [N, D] = dY [N, H] · Wᵀ [H, D]
                let dx = MatmulParams {
                    m: n as u32,
                    n: d as u32,
                    k: hdim as u32,
                    a_rs: hdim as u32,
                    a_cs: 1,
                    b_off: w.offset as u32,
                    b_rs: 1,
                    b_cs: hdim as u32,
                    c_rs: d as u32,
                    ..Default::default()
                };
                let d_act = &ws.d_act[l - 1].buffer;
                out.push(self.matmul(
                    &k.matmul,
                    dx,
                    1,
                    [dy, &m.params.buffer, dummy, d_act, dummy_u, dummy],
                ));
                let (kernel, aux) = match m.spec.activation {
                    Activation::Relu => (&k.relu_backward, &ws.pre[l - 1].buffer),
                    Activation::Sigmoid => (&k.sigmoid_backward, &ws.act[l - 1].buffer),
                };
                out.push(self.elementwise(
                    kernel,
                    n * d,
                    n * d,
                    [d_act, aux, &ws.d_pre[l - 1].buffer, dummy_u],
                ));
            }
        }
        if m.has_decay() {
            let (g, width) = grid(m.layout.total);
            let u = uniform(self.ctx, "l2", &Quad([m.layout.total as u32, width, 0, 0]));
            out.push(k.l2_grad.dispatch(
                self.ctx,
                &[&u, &m.params.buffer, &m.half_decay.buffer, grads, dummy],
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
