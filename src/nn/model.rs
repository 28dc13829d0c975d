//! The GPU model: one flat parameter arena (and its gradient), each layer's state, and
//! workspaces holding a batch's activations. Forward and backward passes are lists of
//! [`Dispatch`]es built once and replayed, so a step costs no host work beyond recording; each
//! is one call per layer, the layer modules of [`crate::nn::layers`] doing the work.
//!
//! Shapes: N batch rows, P parameter copies (1 for training; many in the numerical gradient),
//! each layer's output [P, N, size].

use crate::error::{Error, Result};
use crate::gpu::limits::MAX_ROWS;
use crate::gpu::{Dispatch, GpuBuffer, GpuContext, Kernels, Precision};
use crate::nn::layers::softmax_loss::{softmax_loss, SoftmaxBindings};
use crate::nn::layers::{
    Activation, Backward, BatchNorm, Forward, Gpu, Layer, LayerState, Mode, MovedChannel,
    Perturbation, Saved,
};
use crate::nn::weight_decay::WeightDecay;
use crate::nn::{NamedTensor, NetSpec, ParamLayout};

/// Parameters, gradients and the state each layer keeps (BatchNorm's running statistics).
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
    /// Per layer: what it keeps across steps.
    pub states: Vec<LayerState>,
    weight_decay: Option<WeightDecay>,
}

/// Checks that a batch of `rows` fits every kernel's loops on lavapipe (65,535 iterations per
/// invocation): the backward matmul and column sums loop over the rows, and some layers more.
pub fn check_batch(layers: &[Layer], rows: usize) -> Result<()> {
    if rows > MAX_ROWS {
        return Err(Error::InvalidArgument(format!(
            "a batch of {rows} rows is above the {MAX_ROWS} wgrad supports: use a smaller batch"
        )));
    }
    layers.iter().try_for_each(|l| l.check_batch(rows))
}

/// Checks, before anything is allocated, that the largest buffer a net binds at a batch of
/// `rows` fits the adapter: the parameter arena (and its gradient and optimizer slots, the same
/// size) and each layer's output and saved tensors. A net too large for the adapter gets an
/// error that names the buffer and the limit, not an abort in the allocator or a panic in wgpu.
pub fn check_fits(
    ctx: &GpuContext,
    spec: &NetSpec,
    rows: usize,
    precision: Precision,
) -> Result<()> {
    let (layers, layout) = spec.resolve()?;
    let limit = ctx.max_binding_elems(precision.bytes());
    let mib = |elems: usize| (elems * precision.bytes()) as f64 / (1 << 20) as f64;
    let too_big = |what: String, elems: usize, fix: &str| {
        Error::InvalidArgument(format!(
            "{what}: {:.0} MiB in {precision}, more than the {:.0} MiB this adapter binds at once: {fix}",
            mib(elems),
            mib(limit)
        ))
    };
    if layout.total > limit {
        return Err(too_big(
            format!("the net's {} parameters", layout.total),
            layout.total,
            "use narrower or fewer layers",
        ));
    }
    for (i, layer) in layers.iter().enumerate() {
        let elems = rows * layer.largest_buffer();
        if elems > limit {
            return Err(too_big(
                format!("layer {} at a batch of {rows}", i + 1),
                elems,
                "use a smaller batch or narrower layers",
            ));
        }
    }
    check_memory(ctx, &layers, layout.total, rows, precision)
}

/// Refuses a run whose buffers together would not fit the memory there is. Only a CPU adapter
/// (lavapipe) says what it has, its memory being the host's; on a GPU only the host's own copies
/// are counted.
fn check_memory(
    ctx: &GpuContext,
    layers: &[Layer],
    params: usize,
    rows: usize,
    precision: Precision,
) -> Result<()> {
    let Some(available) = crate::gpu::limits::host_memory_available() else {
        return Ok(());
    };
    // The host holds the parameters in f64 twice at most (drawn, then read back).
    let host = params as u64 * 16;
    // On the device: parameters, gradients, three optimizer slots, and per layer its largest
    // buffer three times over (output, saved input, gradient).
    let activations: u64 = layers
        .iter()
        .map(|l| (rows * l.largest_buffer()) as u64)
        .sum();
    let device = (params as u64 * 5 + activations * 3) * precision.bytes() as u64;
    let on_host = ctx.info.device_type == wgpu::DeviceType::Cpu;
    let needed = host + if on_host { device } else { 0 };
    if needed > available {
        let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
        return Err(Error::InvalidArgument(format!(
            "the run needs about {:.1} GiB of memory (parameters, gradients, optimizer state and \
             activations at a batch of {rows}) but this machine has {:.1} GiB available: use \
             narrower or fewer layers, or a smaller --batch-size",
            gib(needed),
            gib(available)
        )));
    }
    Ok(())
}

impl Model {
    pub fn new(
        ctx: &GpuContext,
        spec: &NetSpec,
        params: &[f64],
        precision: Precision,
    ) -> Result<Model> {
        spec.validate()?;
        check_fits(ctx, spec, 1, precision)?;
        let (layers, layout) = spec.resolve()?;
        if params.len() != layout.total {
            return Err(Error::InvalidArgument(format!(
                "{} parameter values given, the net has {}",
                params.len(),
                layout.total
            )));
        }
        Ok(Model {
            spec: spec.clone(),
            sizes: super::layers::output_sizes(&layers),
            states: layers.iter().map(|l| l.state(ctx, precision)).collect(),
            weight_decay: WeightDecay::new(ctx, &layout, spec.weight_decay, precision),
            layers,
            precision,
            params: GpuBuffer::from_real(ctx, "params", params, precision),
            grads: GpuBuffer::real(ctx, "grads", layout.total, precision),
            dropout_seed: 0,
            layout,
        })
    }

    /// The book's weight decay as λ_i / 2 per parameter (λ on weights, 0 elsewhere), or None
    /// when the net has none.
    pub fn l2_half_decay(&self) -> Option<&GpuBuffer> {
        self.weight_decay.as_ref().map(WeightDecay::half_decay)
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

    /// BatchNorm layers with their running statistics [C, 2] and checkpoint names.
    fn running_stats(&self) -> impl Iterator<Item = (String, String, usize, &GpuBuffer)> {
        self.layers
            .iter()
            .zip(&self.states)
            .filter_map(|(layer, state)| match layer {
                Layer::BatchNorm(bn) => {
                    let (mean, var) = bn.state_names(&self.layout);
                    Some((mean, var, bn.c, BatchNorm::buffers(state).0))
                }
                _ => None,
            })
    }

    /// BatchNorm's running statistics as (name, shape, values) tensors, for checkpoints.
    pub fn read_state(&self, ctx: &GpuContext) -> Result<Vec<NamedTensor>> {
        let mut out = Vec::new();
        for (mean, var, c, buf) in self.running_stats() {
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
        for (mean, var, c, buf) in self.running_stats() {
            if let (Some(m), Some(v)) = (find(&mean), find(&var)) {
                let interleaved: Vec<f64> = (0..c).flat_map(|i| [m[i], v[i]]).collect();
                buf.write_real(ctx, 0, &interleaved, self.precision);
            }
        }
    }

    /// Index of the layer whose parameters include flat index `i` (None: no layer).
    pub fn layer_of_param(&self, i: usize) -> Option<usize> {
        let (t, _) = self.layout.locate(i)?;
        let tensor = self.layout.tensors.iter().position(|x| x.name == t.name)?;
        self.layers
            .iter()
            .position(|l| l.tensors().contains(&tensor))
    }
}

/// Names of BatchNorm's running statistics, in layer order: (running_meanK, running_varK,
/// channels) beside gammaK and betaK, as checkpoints store them.
pub fn state_names(layers: &[Layer], layout: &ParamLayout) -> Vec<(String, String, usize)> {
    layers
        .iter()
        .filter_map(|l| match l {
            Layer::BatchNorm(bn) => {
                let (mean, var) = bn.state_names(layout);
                Some((mean, var, bn.c))
            }
            _ => None,
        })
        .collect()
}

/// A batch's activations and their gradients, for N rows × P parameter copies.
#[derive(Clone)]
pub struct Workspace {
    pub rows: usize,
    pub copies: usize,
    /// Input [N, D]: shared by every copy.
    pub x: GpuBuffer,
    /// Labels \[N] (u32; 0xffffffff marks padding).
    pub labels: GpuBuffer,
    /// Each layer's output, [P, N, size]; the last is the logits.
    pub out: Vec<GpuBuffer>,
    /// Gradients of each layer's output (training workspaces only).
    d_out: Vec<GpuBuffer>,
    /// The gradient of the input x [N, D], when the first layer's input gradient is checked
    /// (`LayerOps::checked_input`: a custom layer's); no other use needs it.
    d_x: Option<GpuBuffer>,
    /// What each layer's forward keeps.
    saved: Vec<Saved>,
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
        let per = |size: usize| rows * copies * size;
        let label = |what: &str, i: usize| format!("{what}{i}");
        let out = (model.sizes.iter().enumerate())
            .map(|(i, &size)| GpuBuffer::real(ctx, &label("out", i), per(size), p))
            .collect();
        let d_out = (model.sizes.iter().enumerate())
            .filter(|_| with_grads)
            .map(|(i, &size)| GpuBuffer::real(ctx, &label("d_out", i), rows * size, p))
            .collect();
        let first_checked = (model.layers.first()).is_some_and(|l| l.checked_input().is_some());
        Workspace {
            d_x: (with_grads && first_checked)
                .then(|| GpuBuffer::real(ctx, "d_x", rows * model.spec.input, p)),
            rows,
            copies,
            x: GpuBuffer::real(ctx, "x", rows * model.spec.input, p),
            labels: GpuBuffer::zeroed(ctx, "labels", rows, 4),
            out,
            d_out,
            saved: (model.layers.iter())
                .map(|l| l.saved(ctx, p, rows, copies))
                .collect(),
            row_loss: GpuBuffer::real(ctx, "row_loss", rows * copies, p),
            row_correct: GpuBuffer::zeroed(ctx, "row_correct", rows * copies, 4),
        }
    }

    pub fn upload(&self, ctx: &GpuContext, x: &[f64], labels: &[u32], precision: Precision) {
        self.x.write_real(ctx, 0, x, precision);
        self.labels.write_u32(ctx, 0, labels);
    }

    /// The same buffers seen as holding only the first `copies` parameter copies: passes
    /// recorded over it work on that many, so a short route of the perturbed-loss engine need
    /// not compute a chunk sized for the longest.
    pub fn first_copies(&self, copies: usize) -> Workspace {
        assert!(
            copies <= self.copies,
            "a view of {copies} of {} copies",
            self.copies
        );
        Workspace {
            copies,
            ..self.clone()
        }
    }

    /// What layer `i`'s forward kept (the numerical gradient reads the unperturbed pass's).
    pub fn saved(&self, i: usize) -> &Saved {
        &self.saved[i]
    }

    fn has_grads(&self) -> bool {
        !self.d_out.is_empty()
    }

    /// The gradient of layer `i`'s input after a backward pass (None for the first layer's,
    /// unless it is a custom layer).
    pub fn input_grad(&self, i: usize) -> Option<&GpuBuffer> {
        match i.checked_sub(1) {
            Some(below) => self.d_out.get(below),
            None => self.d_x.as_ref(),
        }
    }

    /// The last layer's output [P, N, classes].
    pub fn logits(&self) -> &GpuBuffer {
        self.out.last().expect("a net has layers")
    }

    /// The gradient of the loss with respect to the logits, [N, classes] (training workspaces).
    pub fn dlogits(&self) -> Option<&GpuBuffer> {
        self.d_out.last()
    }

    /// The input of layer `i`: x for the first, else the previous layer's output.
    fn input(&self, i: usize) -> &GpuBuffer {
        if i == 0 {
            &self.x
        } else {
            &self.out[i - 1]
        }
    }
}

/// How a forward pass treats its P copies.
pub enum Copies<'a> {
    /// One copy: the parameters as they are.
    Single,
    /// P perturbed copies: `pert` holds (flat index, sign) pairs, `h` the step; each copy
    /// reads the shared base plus its own one-element change. `flips` receives, per copy, the
    /// ReLU units and max-pool windows whose state differs from `base` (the unperturbed
    /// workspace). `incremental`: the layer a route starts at may form its output as the
    /// unperturbed one plus its own change (the full strategy, the reference, computes every
    /// output).
    Perturbed {
        pert: &'a GpuBuffer,
        h: &'a GpuBuffer,
        flips: &'a GpuBuffer,
        base: &'a Workspace,
        incremental: bool,
    },
}

/// The activation that follows affine layer `i`, or convolution `i` where it runs unfolded, and
/// runs inside its matmul's epilogue in the forward pass (None where layer `i` is neither or no
/// activation follows it).
fn fused_activation(layers: &[Layer], saved: &[Saved], i: usize) -> Option<Activation> {
    match (layers.get(i), layers.get(i + 1)) {
        (Some(Layer::Affine(_)), Some(Layer::Activation(f))) => Some(f.kind),
        (Some(Layer::Conv(_)), Some(Layer::Activation(f)))
            if matches!(saved.get(i), Some(Saved::Unfolded { .. })) =>
        {
            Some(f.kind)
        }
        _ => None,
    }
}

/// Builds dispatch lists for one model.
pub struct Recorder<'a> {
    pub ctx: &'a GpuContext,
    pub kernels: &'a Kernels,
    pub model: &'a Model,
}

impl Recorder<'_> {
    pub fn gpu(&self) -> Gpu<'_> {
        Gpu {
            ctx: self.ctx,
            kernels: self.kernels,
        }
    }

    /// Forward pass of a training workspace (Train mode) or an evaluation one (Eval mode), with
    /// dropout masks drawn from step 0; see [`Recorder::forward_with`].
    pub fn forward(&self, ws: &Workspace, copies: &Copies) -> Vec<Dispatch> {
        let mode = match copies {
            Copies::Perturbed { .. } => Mode::Check,
            Copies::Single if ws.has_grads() => Mode::Train,
            Copies::Single => Mode::Eval,
        };
        // A zeroed word: step 0.
        self.forward_with(ws, copies, mode, &self.kernels.unused.word, 0)
    }

    /// Forward pass from layer `start` on (its input: `ws.x` for 0, else the output of layer
    /// `start − 1` of the unperturbed base workspace, shared by every copy), then per-row
    /// softmax-CE loss (and dlogits when `ws` has gradient buffers). `step`'s word 0 is the
    /// step that seeds dropout masks.
    pub fn forward_with(
        &self,
        ws: &Workspace,
        copies: &Copies,
        mode: Mode,
        step: &GpuBuffer,
        start: usize,
    ) -> Vec<Dispatch> {
        let mut out = self.forward_layers(ws, copies, mode, step, start, None);
        out.push(self.softmax(ws));
        out
    }

    /// The forward pass of one copy up to its logits, without the loss (the training step's
    /// loss kernel takes it from there); `step`'s word 0 seeds dropout masks.
    pub fn forward_logits(&self, ws: &Workspace, mode: Mode, step: &GpuBuffer) -> Vec<Dispatch> {
        self.forward_layers(ws, &Copies::Single, mode, step, 0, None)
    }

    /// [`Recorder::forward_with`] of perturbed copies along a one-channel route: layers
    /// `start..=end` compute each copy's moved channel alone ([`MovedChannel`]), the affine
    /// layer `end` adds that channel's change to its unperturbed output, and the layers above
    /// run in full.
    pub fn forward_moved_channel(
        &self,
        ws: &Workspace,
        copies: &Copies,
        step: &GpuBuffer,
        start: usize,
        (moved, end): (MovedChannel, usize),
    ) -> Vec<Dispatch> {
        let mut out = self.forward_layers(ws, copies, Mode::Check, step, start, Some((moved, end)));
        out.push(self.softmax(ws));
        out
    }

    fn forward_layers(
        &self,
        ws: &Workspace,
        copies: &Copies,
        mode: Mode,
        step: &GpuBuffer,
        start: usize,
        moved_channel: Option<(MovedChannel, usize)>,
    ) -> Vec<Dispatch> {
        let m = self.model;
        let mut out = Vec::new();
        let mut fused_above = false;
        for (i, layer) in m.layers.iter().enumerate().skip(start) {
            if std::mem::take(&mut fused_above) {
                continue;
            }
            // The input is shared across copies where it lies below every perturbation.
            let (input, input_shared) = match copies {
                _ if i == 0 => (&ws.x, true),
                Copies::Perturbed { base, .. } if i == start => (base.input(i), true),
                _ => (ws.input(i), false),
            };
            let perturbation = match copies {
                Copies::Single => None,
                Copies::Perturbed {
                    pert,
                    h,
                    flips,
                    base,
                    incremental,
                } => Some(Perturbation {
                    pert,
                    h,
                    flips,
                    base_input: base.input(i),
                    base_saved: &base.saved[i],
                    base_output: &base.out[i],
                    from_base: *incremental && i == start,
                    moved_channel: moved_channel
                        .filter(|&(_, end)| i <= end)
                        .map(|(moved, _)| moved),
                }),
            };
            // Perturbed copies keep their activations apart: those count kink crossings.
            let activated = match copies {
                Copies::Single => {
                    fused_activation(&m.layers, &ws.saved, i).map(|f| (f, &ws.out[i + 1]))
                }
                Copies::Perturbed { .. } => None,
            };
            fused_above = activated.is_some();
            out.extend(layer.forward(&Forward {
                gpu: self.gpu(),
                theta: &m.params,
                layout: &m.layout,
                rows: ws.rows,
                copies: ws.copies,
                input,
                input_shared,
                output: &ws.out[i],
                saved: &ws.saved[i],
                state: &m.states[i],
                mode,
                step,
                dropout_seed: m.dropout_seed,
                perturbation,
                activated,
            }));
        }
        out
    }

    fn softmax(&self, ws: &Workspace) -> Dispatch {
        let bindings = SoftmaxBindings {
            logits: ws.out.last().expect("a net has layers"),
            labels: &ws.labels,
            row_loss: &ws.row_loss,
            row_correct: &ws.row_correct,
            dlogits: ws.d_out.last(),
        };
        softmax_loss(
            &self.gpu(),
            ws.rows,
            ws.copies,
            self.model.spec.output,
            &bindings,
        )
    }

    /// Backward pass from dlogits to every parameter's gradient (written, not accumulated),
    /// including the L2 term.
    pub fn backward(&self, ws: &Workspace) -> Vec<Dispatch> {
        let m = self.model;
        let mut out = self.layer_gradients(ws);
        if let Some(decay) = &m.weight_decay {
            out.push(decay.gradient(&self.gpu(), &m.params, &m.grads));
        }
        out
    }

    /// [`Recorder::backward`] without the L2 term, for a training step: the update adds it
    /// ([`crate::optim::GpuOptimizer`] folds it in), which saves a pass over the arena.
    pub fn layer_gradients(&self, ws: &Workspace) -> Vec<Dispatch> {
        assert!(
            ws.has_grads() && ws.copies == 1,
            "backward needs a training workspace"
        );
        let m = self.model;
        let mut out = Vec::new();
        let mut fused_below = false;
        for (i, layer) in m.layers.iter().enumerate().rev() {
            if std::mem::take(&mut fused_below) {
                continue;
            }
            // An affine layer's input gradient, or a max-pool's over windows that do not
            // overlap, goes on through the activation below it in the same dispatch (unless
            // that activation is the first layer, whose input gradient nothing needs).
            let below = i.checked_sub(1).filter(|&b| b > 0);
            let goes_through = match layer {
                Layer::Affine(_) => true,
                Layer::Pool(p) => p.backward_through_activation(),
                _ => false,
            };
            let dx_through = match below.map(|b| (b, &m.layers[b])) {
                Some((b, Layer::Activation(f))) if goes_through => {
                    let saved = match f.kind.backward_reads_output() {
                        true => &ws.out[b],
                        false => ws.input(b),
                    };
                    Some((f.kind, saved))
                }
                _ => None,
            };
            fused_below = dx_through.is_some();
            out.extend(layer.backward(&Backward {
                gpu: self.gpu(),
                theta: &m.params,
                grads: &m.grads,
                layout: &m.layout,
                rows: ws.rows,
                input: ws.input(i),
                output: &ws.out[i],
                dy: &ws.d_out[i],
                // The first layer's input gradient is only wanted of a custom layer.
                dx: match (dx_through, below) {
                    (Some(_), Some(b)) => ws.input_grad(b),
                    _ => ws.input_grad(i),
                },
                dx_through,
                saved: &ws.saved[i],
                state: &m.states[i],
            }));
        }
        out
    }

    /// The stats word of the L2 penalty at the current parameters (left at 0 without weight
    /// decay).
    pub fn l2_penalty(&self, stats: &GpuBuffer) -> Vec<Dispatch> {
        match &self.model.weight_decay {
            Some(decay) => decay.penalty(&self.gpu(), &self.model.params, stats),
            None => Vec::new(),
        }
    }
}
