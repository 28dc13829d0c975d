//! Numerical gradients by central differences, with every perturbed loss L(θ ± h·eᵢ) evaluated
//! in parallel on the GPU.
//!
//! Each evaluation sees its own copy of the parameters: the shared base is bound read-only and
//! each evaluation applies its own one-element change as it reads (`full`), or starts from the
//! unperturbed activations and recomputes only what its change touches (`incremental`). No
//! evaluation writes anything another reads, so the classic bug of perturbing shared parameters
//! in place and botching the restore cannot happen here.

use std::time::Instant;

use serde::Serialize;

use bytemuck::{Pod, Zeroable};

use crate::error::{Error, Result};
use crate::gpu::kernel::{self, grid, shaders, Binding, Entry, KernelBindings, Placeholders};
use crate::gpu::{Dispatch, Gpu, GpuBuffer, GpuContext, Precision};
use crate::nn::{Activation, Copies, Kernels, Layer, Mode, Model, Recorder, Workspace};
use crate::train::{copy_loss, train_metrics, StatsWord, STATE_WORDS, STATS_WORDS};

/// How perturbed losses are evaluated.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Strategy {
    /// Every perturbed loss is a complete forward pass over its own copy (the reference).
    Full,
    /// Reuse the unperturbed activations below the perturbed tensor and recompute only what the
    /// perturbation changes (samples whose input to the perturbed weight is 0 cost nothing).
    Incremental,
}

impl std::str::FromStr for Strategy {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "full" => Ok(Strategy::Full),
            "incremental" => Ok(Strategy::Incremental),
            other => Err(Error::InvalidArgument(format!(
                "unknown strategy '{other}': use 'incremental' or 'full'"
            ))),
        }
    }
}

impl std::fmt::Display for Strategy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Strategy::Full => "full",
            Strategy::Incremental => "incremental",
        })
    }
}

/// Default step per precision: the central difference's error is about ε/h (rounding) plus h²
/// (truncation), smallest near h = ∛ε (6.1e-6 in f64, 4.9e-3 in f32) times the loss scale
/// ∛L. On TwoLayerNet (L ≈ 2.3) f64 h = 1e-5 gave the smallest norm-wise error before kinks
/// start to appear (W1: 7.7e-9 at 6e-6, 4.8e-9 at 1e-5, 2.3e-9 at 2e-5 with kinks from 4e-5).
pub fn default_h(precision: Precision) -> f64 {
    match precision {
        Precision::F64 => 1e-5,
        Precision::F32 => 5e-3,
    }
}

/// One perturbed evaluation: parameter `index` moved by +h, or by −h when `minus`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Perturbation {
    pub index: usize,
    pub minus: bool,
}

/// A perturbed loss and the number of ReLU units whose on/off state differs from the
/// unperturbed pass (non-zero: this evaluation moved across a kink).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PerturbedLoss {
    pub loss: f64,
    pub kink_flips: u32,
}

/// Budget for one chunk's scratch and activations: large enough to keep the GPU busy, small
/// enough for any adapter's storage-binding limit.
const CHUNK_BYTES: usize = 96 << 20;

/// Evaluates batches of perturbed losses of one model on one batch of data.
pub struct PerturbedLossEngine<'a> {
    ctx: &'a GpuContext,
    model: &'a Model,
    pub strategy: Strategy,
    pub h: f64,
    /// The largest chunk of any route (perturbations per submit).
    pub chunk: usize,
    host_params: Vec<f64>,
    base_penalty: f64,
    bufs: EngineBuffers,
    /// (chunk, dispatches) per route: one per starting layer, then the MLP kernel's.
    routes: Vec<(usize, Vec<Dispatch>)>,
    /// First layer of the trailing MLP served by the incremental kernel.
    tail_start: Option<usize>,
    // Kept alive for the dispatches' bind groups.
    _base: Workspace,
    _work: Vec<GpuBuffer>,
    _full_ws: Option<Workspace>,
}

impl<'a> PerturbedLossEngine<'a> {
    /// Runs the unperturbed forward pass on (x, labels) and prepares chunks of `chunk`
    /// perturbations (sized from the device limits when `None`).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        ctx: &'a GpuContext,
        kernels: &'a Kernels,
        model: &'a Model,
        x: &[f64],
        labels: &[u32],
        strategy: Strategy,
        h: f64,
        chunk: Option<usize>,
    ) -> Result<Self> {
        if !(h.is_finite() && h > 0.0) {
            return Err(Error::InvalidArgument(format!(
                "step h must be a finite number > 0, got {h} (--h)"
            )));
        }
        let precision = model.precision;
        let n = labels.len();
        crate::nn::model::check_batch(&model.layers, n)?;
        let rec = Recorder {
            ctx,
            kernels,
            model,
        };
        // Dropout masks come from step word 0 of a zeroed state, here and in every perturbed
        // evaluation (and in the analytic gradient), so all of them see the same mask.
        let state = GpuBuffer::zeroed(ctx, "check_state", STATE_WORDS, 4);
        let base = Workspace::new(ctx, model, n, 1, false);
        base.upload(ctx, x, labels, precision);
        kernel::run(
            ctx,
            &rec.forward_with(&base, &Copies::Single, Mode::Check, &state, 0),
        )?;
        let host_params = model.read_params(ctx)?;
        let base_penalty = penalty(model, &host_params);

        // Incremental: the trailing affine/activation layers (all of a plain MLP, or the dense
        // head of a convnet) take the MLP kernel; a perturbation below them recomputes from its
        // own layer up. Full: every evaluation is a complete forward pass from layer 0.
        let tail = match strategy {
            Strategy::Incremental => MlpTail::of(model),
            Strategy::Full => None,
        };
        let tail_start = tail.as_ref().map_or(model.layers.len(), |t| t.start);
        let (recompute_chunk, tail_chunk) = chunk_sizes(ctx, model, n, tail.as_ref(), chunk);
        let chunk_max = recompute_chunk
            .unwrap_or(0)
            .max(tail_chunk.unwrap_or(0))
            .max(1);
        let bufs = EngineBuffers {
            pert: GpuBuffer::zeroed(ctx, "perturbations", 2 * chunk_max, 4),
            h: GpuBuffer::from_real(ctx, "h", &[h], precision),
            out_loss: GpuBuffer::real(ctx, "perturbed_loss", chunk_max, precision),
            out_flips: GpuBuffer::zeroed(ctx, "kink_flips", chunk_max, 4),
        };
        // Route i < layers.len(): start at layer i (or 0 for Full); the last: the MLP kernel.
        let mut full_ws = None;
        let mut routes: Vec<(usize, Vec<Dispatch>)> = match recompute_chunk {
            Some(chunk) => {
                let ws = Workspace::new(ctx, model, n, chunk, false);
                ws.upload(ctx, x, labels, precision);
                let routes =
                    recompute_routes(&rec, &ws, &base, &state, &bufs, strategy, tail_start)?;
                full_ws = Some(ws);
                routes
            }
            None => model.layers.iter().map(|_| (1, Vec::new())).collect(),
        };
        let mut work = Vec::new();
        if let (Some(tail), Some(chunk)) = (&tail, tail_chunk) {
            let (d, kept) = tail.dispatches(&rec.gpu(), model, &base, n, chunk, &bufs)?;
            work.extend(kept);
            routes.push((chunk, d));
        }
        work.push(state);
        ctx.wait()?;
        Ok(PerturbedLossEngine {
            ctx,
            model,
            strategy,
            h,
            chunk: chunk_max,
            host_params,
            base_penalty,
            bufs,
            routes,
            tail_start: tail.map(|t| t.start),
            _base: base,
            _work: work,
            _full_ws: full_ws,
        })
    }

    /// Evaluates every perturbation, `chunk` at a time (the L2 term of the loss is added on the
    /// host, exactly, from the perturbed element).
    pub fn losses(&self, perturbations: &[Perturbation]) -> Result<Vec<PerturbedLoss>> {
        let numel = self.model.layout.total;
        if let Some(bad) = perturbations.iter().find(|p| p.index >= numel) {
            return Err(Error::InvalidArgument(format!(
                "perturbation index {} is out of range: the net has {numel} parameters",
                bad.index
            )));
        }
        let precision = self.model.precision;
        let mut out = vec![
            PerturbedLoss {
                loss: f64::NAN,
                kink_flips: 0
            };
            perturbations.len()
        ];
        // Group by route (keeping each group's order), so a chunk runs one dispatch list.
        let mut by_route: Vec<Vec<usize>> = vec![Vec::new(); self.routes.len()];
        for (k, p) in perturbations.iter().enumerate() {
            by_route[self.route_of(p.index)].push(k);
        }
        for (route, members) in by_route.iter().enumerate() {
            let (chunk, dispatches) = &self.routes[route];
            for part in members.chunks(*chunk) {
                // Pad a short last chunk with copies of its first entry; their results are dropped.
                let words: Vec<u32> = (0..*chunk)
                    .flat_map(|q| {
                        let p = &perturbations[*part.get(q).unwrap_or(&part[0])];
                        [p.index as u32, u32::from(p.minus)]
                    })
                    .collect();
                self.bufs.pert.write_u32(self.ctx, 0, &words);
                let mut encoder = self.ctx.device.create_command_encoder(&Default::default());
                encoder.clear_buffer(&self.bufs.out_flips.buffer, 0, None);
                {
                    let mut pass = encoder.begin_compute_pass(&Default::default());
                    kernel::record_all(&mut pass, dispatches);
                }
                self.ctx.queue.submit([encoder.finish()]);
                let losses =
                    self.bufs
                        .out_loss
                        .read_real_range(self.ctx, precision, 0..part.len())?;
                let flips = bytemuck::pod_collect_to_vec::<u8, u32>(
                    &self.bufs.out_flips.read_bytes(self.ctx, 0..part.len())?,
                );
                for ((&k, loss), kink_flips) in part.iter().zip(losses).zip(flips) {
                    let p = &perturbations[k];
                    out[k] = PerturbedLoss {
                        loss: loss + self.penalty_change(p),
                        kink_flips,
                    };
                }
            }
        }
        Ok(out)
    }

    /// Which dispatch list evaluates a perturbation of parameter `index`.
    fn route_of(&self, index: usize) -> usize {
        let layer = self
            .model
            .layer_of_param(index)
            .expect("every parameter belongs to a layer");
        match self.tail_start {
            Some(start) if layer >= start => self.model.layers.len(),
            _ => layer,
        }
    }

    /// L2 term at θ ± h·eᵢ: the base penalty plus the change of the one element.
    fn penalty_change(&self, p: &Perturbation) -> f64 {
        let lambda = self.model.spec.weight_decay;
        match self.model.layout.locate(p.index) {
            Some((t, _)) if lambda != 0.0 && t.is_weight() => {
                let w = self.host_params[p.index];
                let d = if p.minus { -self.h } else { self.h };
                self.base_penalty + 0.5 * lambda * ((w + d) * (w + d) - w * w)
            }
            _ => self.base_penalty,
        }
    }

    /// Central differences gᵢ = (L(θ+h·eᵢ) − L(θ−h·eᵢ)) / 2h for `indices`, and whether each
    /// pair straddled a kink.
    pub fn gradient(&self, indices: &[usize]) -> Result<NumericalGradient> {
        let start = Instant::now();
        let perturbations: Vec<Perturbation> = indices
            .iter()
            .flat_map(|&index| {
                [
                    Perturbation {
                        index,
                        minus: false,
                    },
                    Perturbation { index, minus: true },
                ]
            })
            .collect();
        let losses = self.losses(&perturbations)?;
        let (grad, kinks) = losses
            .chunks(2)
            .map(|pair| {
                (
                    (pair[0].loss - pair[1].loss) / (2.0 * self.h),
                    pair[0].kink_flips + pair[1].kink_flips > 0,
                )
            })
            .unzip();
        Ok(NumericalGradient {
            grad,
            kinks,
            perturbed_losses: perturbations.len(),
            seconds: start.elapsed().as_secs_f64(),
        })
    }
}

fn has_params(layer: &Layer) -> bool {
    !layer.tensors().is_empty()
}

/// What every route reads (the perturbations and h) and writes (each copy's loss and kink
/// crossings).
struct EngineBuffers {
    /// (flat index, sign) per copy.
    pert: GpuBuffer,
    /// [h]
    h: GpuBuffer,
    out_loss: GpuBuffer,
    out_flips: GpuBuffer,
}

/// Perturbations per chunk of the routes that recompute layers (when a parameter lies below
/// the MLP tail) and of the MLP kernel (when there is a tail): as many as `CHUNK_BYTES` of
/// activations hold, within the device's binding limit, or `chunk` when given.
fn chunk_sizes(
    ctx: &GpuContext,
    model: &Model,
    n: usize,
    tail: Option<&MlpTail>,
    chunk: Option<usize>,
) -> (Option<usize>, Option<usize>) {
    let bytes = model.precision.bytes();
    let tail_start = tail.map_or(model.layers.len(), |t| t.start);
    let needs_recompute = model.layers[..tail_start].iter().any(has_params);
    let limit = |elem_bytes: usize| ctx.max_binding_elems(elem_bytes.max(1)).clamp(1, 65_535);
    let recompute = needs_recompute.then(|| {
        let per_eval = n * model.sizes.iter().sum::<usize>() * 2 * bytes + n * 8;
        let max_size = *model.sizes.iter().max().expect("at least one layer");
        let auto = (CHUNK_BYTES / per_eval).clamp(1, limit(n * max_size * bytes));
        chunk.unwrap_or(auto).clamp(1, limit(n * max_size * bytes))
    });
    let tail_chunk = tail.map(|t| {
        let per_eval = 2 * t.max_width() * bytes;
        let auto = (CHUNK_BYTES / per_eval).clamp(1, limit(per_eval));
        chunk.unwrap_or(auto).clamp(1, limit(per_eval))
    });
    (recompute, tail_chunk)
}

/// One dispatch list per layer below `tail_start` that owns parameters: a forward pass of the
/// perturbed copies in `ws` from the layer a route may start at, then each copy's loss.
fn recompute_routes(
    rec: &Recorder,
    ws: &Workspace,
    base: &Workspace,
    state: &GpuBuffer,
    bufs: &EngineBuffers,
    strategy: Strategy,
    tail_start: usize,
) -> Result<Vec<(usize, Vec<Dispatch>)>> {
    let layers = &rec.model.layers;
    let copies = Copies::Perturbed {
        pert: &bufs.pert,
        h: &bufs.h,
        flips: &bufs.out_flips,
        base,
    };
    // Only layers that read an input shared by all copies (affine and convolution) can start a
    // route: the perturbed layer itself, or the nearest one below it (recomputed unperturbed);
    // Full starts at the first, since parameter-free layers before it give every copy the same
    // output.
    let first_reader = layers.iter().position(|l| l.reads_shared_input());
    let mut routes = Vec::new();
    for (start, layer) in layers.iter().enumerate() {
        if !has_params(layer) || start >= tail_start {
            routes.push((ws.copies, Vec::new()));
            continue;
        }
        let from = match strategy {
            Strategy::Full => first_reader.filter(|&j| j <= start),
            Strategy::Incremental => (0..=start).rev().find(|&j| layers[j].reads_shared_input()),
        }
        .ok_or_else(|| {
            Error::InvalidArgument(format!(
                "layer {} ({}) has no affine or convolution layer before it, which the perturbed-loss engine starts from: put one first",
                start + 1,
                rec.model.spec.layers[start]
            ))
        })?;
        let mut d = rec.forward_with(ws, &copies, Mode::Check, state, from);
        d.push(copy_loss(&rec.gpu(), ws, &bufs.out_loss));
        routes.push((ws.copies, d));
    }
    Ok(routes)
}

/// The trailing affine/activation layers of a net (all of a plain MLP): where perturbed losses
/// can be evaluated incrementally by shaders/perturbed_mlp.wgsl.
struct MlpTail {
    /// Index of its first (affine) layer.
    start: usize,
    /// Its affine layers' indices, and their widths [input, out₁, …, classes].
    affine: Vec<usize>,
    widths: Vec<usize>,
    activation: Activation,
}

impl MlpTail {
    fn of(model: &Model) -> Option<MlpTail> {
        let layers = &model.layers;
        let mut start = layers.len();
        let mut activation = None;
        // Walk back over Affine (Act Affine)*: an activation must sit between two affines.
        while start > 0 {
            match &layers[start - 1] {
                Layer::Affine(_) => start -= 1,
                Layer::Activation(act)
                    if start < layers.len() && matches!(layers[start], Layer::Affine(_)) =>
                {
                    let a = act.kind;
                    if start >= 2
                        && matches!(layers[start - 2], Layer::Affine(_))
                        && activation.is_none_or(|x| x == a)
                    {
                        activation = Some(a);
                        start -= 1;
                    } else {
                        break;
                    }
                }
                _ => break,
            }
        }
        // Two affines in a row cannot be split by the kernel's layer table; require alternation.
        let tail = &layers[start..];
        let alternates = tail
            .iter()
            .enumerate()
            .all(|(k, l)| matches!(l, Layer::Affine(_)) == (k % 2 == 0));
        if tail.is_empty() || !alternates {
            return None;
        }
        let affine: Vec<usize> = (start..layers.len()).step_by(2).collect();
        let mut widths = vec![if start == 0 {
            model.spec.input
        } else {
            model.sizes[start - 1]
        }];
        widths.extend(affine.iter().map(|&i| model.sizes[i]));
        Some(MlpTail {
            start,
            affine,
            widths,
            activation: activation.unwrap_or(Activation::Relu),
        })
    }

    fn max_width(&self) -> usize {
        *self.widths[1..].iter().max().expect("at least one layer")
    }

    /// The unperturbed pre-activations and activations of every tail layer, side by side in
    /// one read-only buffer, and the layer table (6 words a layer) that locates them.
    fn base_activations(
        &self,
        ctx: &GpuContext,
        model: &Model,
        base: &Workspace,
    ) -> (GpuBuffer, GpuBuffer) {
        let (n, bytes) = (base.rows, model.precision.bytes());
        let widths = &self.widths;
        let mut table = Vec::new();
        let mut offset = 0usize;
        let mut sources = Vec::new();
        for (l, &i) in self.affine.iter().enumerate() {
            let Layer::Affine(affine) = &model.layers[i] else {
                unreachable!("tail layers alternate")
            };
            let pre_off = offset;
            offset += n * widths[l + 1];
            sources.push((&base.out[i], pre_off));
            let act_off = if l + 1 < self.affine.len() {
                sources.push((&base.out[i + 1], offset));
                offset += n * widths[l + 1];
                offset - n * widths[l + 1]
            } else {
                0
            };
            let tensor = |t: usize| model.layout.tensors[t].offset;
            let (w, b) = (tensor(affine.weight), tensor(affine.bias));
            table.extend([widths[l], widths[l + 1], w, b, pre_off, act_off].map(|v| v as u32));
        }
        let concat = GpuBuffer::real(ctx, "base_activations", offset, model.precision);
        let mut encoder = ctx.device.create_command_encoder(&Default::default());
        for (src, at) in sources {
            let (to, size) = ((at * bytes) as u64, (src.len * bytes) as u64);
            encoder.copy_buffer_to_buffer(&src.buffer, 0, &concat.buffer, to, size);
        }
        ctx.queue.submit([encoder.finish()]);
        (concat, GpuBuffer::from_u32(ctx, "layer_table", &table))
    }

    /// The kernel's dispatches (one per slice of the batch) and the buffers they keep alive.
    fn dispatches(
        &self,
        gpu: &Gpu,
        model: &Model,
        base: &Workspace,
        n: usize,
        chunk: usize,
        bufs: &EngineBuffers,
    ) -> Result<(Vec<Dispatch>, Vec<GpuBuffer>)> {
        let (concat, table) = self.base_activations(gpu.ctx, model, base);
        let input = if self.start == 0 {
            &base.x
        } else {
            &base.out[self.start - 1]
        };
        let max_width = self.max_width();
        let scratch = GpuBuffer::real(gpu.ctx, "scratch", chunk * 2 * max_width, model.precision);
        let (groups, row_width) = grid(chunk);
        let slice = samples_per_dispatch(&self.widths).ok_or_else(|| {
            Error::InvalidArgument(
                "this net's layers are too wide for the incremental kernel (one sample's update exceeds the 65,535 loop iterations lavapipe allows an invocation): use --strategy full".into(),
            )
        })?;
        let bindings = PerturbedMlpBindings {
            layers: &table,
            theta: &model.params,
            x: input,
            labels: &base.labels,
            base: &concat,
            base_loss: &base.row_loss,
            pert: &bufs.pert,
            h: &bufs.h,
            out_loss: &bufs.out_loss,
            out_flips: &bufs.out_flips,
            scratch: &scratch,
        };
        let dispatches = (0..n)
            .step_by(slice)
            .map(|begin| {
                let params = PerturbedMlpParams {
                    perturbations: chunk as u32,
                    depth: self.affine.len() as u32,
                    n: n as u32,
                    classes: model.spec.output as u32,
                    scratch_stride: (2 * max_width) as u32,
                    activation: self.activation.code(),
                    row_width,
                    n_begin: begin as u32,
                    n_end: (begin + slice).min(n) as u32,
                    _pad: [0; 3],
                };
                gpu.kernels
                    .dispatch(gpu.ctx, &PERTURBED_MLP, &params, &bindings, groups)
            })
            .collect();
        Ok((dispatches, vec![concat, table, scratch]))
    }
}

/// perturbed_mlp.wgsl's Params.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct PerturbedMlpParams {
    /// Invocations in this dispatch.
    perturbations: u32,
    /// Affine layers.
    depth: u32,
    n: u32,
    classes: u32,
    /// Reals of scratch per invocation.
    scratch_stride: u32,
    /// The hidden layers' [`Activation::code`].
    activation: u32,
    row_width: u32,
    /// This dispatch's slice of the batch.
    n_begin: u32,
    n_end: u32,
    _pad: [u32; 3],
}

/// perturbed_mlp.wgsl's buffers.
struct PerturbedMlpBindings<'a> {
    /// The layer table.
    layers: &'a GpuBuffer,
    theta: &'a GpuBuffer,
    /// The tail's input [N, D].
    x: &'a GpuBuffer,
    labels: &'a GpuBuffer,
    /// Pre-activations and activations of every tail layer.
    base: &'a GpuBuffer,
    /// [N] per-sample unperturbed loss.
    base_loss: &'a GpuBuffer,
    pert: &'a GpuBuffer,
    h: &'a GpuBuffer,
    out_loss: &'a GpuBuffer,
    out_flips: &'a GpuBuffer,
    scratch: &'a GpuBuffer,
}

impl KernelBindings for PerturbedMlpBindings<'_> {
    type Params = PerturbedMlpParams;
    const ACCESS: &'static [Binding] = &[
        Binding::Read,
        Binding::Read,
        Binding::Read,
        Binding::Read,
        Binding::Read,
        Binding::Read,
        Binding::Read,
        Binding::Read,
        Binding::ReadWrite,
        Binding::ReadWrite,
        Binding::ReadWrite,
    ];
    fn buffers<'a>(&'a self, _: &'a Placeholders) -> Vec<&'a wgpu::Buffer> {
        [
            self.layers,
            self.theta,
            self.x,
            self.labels,
            self.base,
            self.base_loss,
            self.pert,
            self.h,
            self.out_loss,
            self.out_flips,
            self.scratch,
        ]
        .map(|b| &b.buffer)
        .to_vec()
    }
}

const PERTURBED_MLP: Entry = Entry::new(shaders::PERTURBED_MLP, "perturbed_losses");

/// Samples one incremental dispatch may take: lavapipe stops a shader invocation after 65,535
/// loop iterations in all, and each sample costs up to the rank-one update of the layer above
/// the perturbed one, the dense layers above that, and three passes over the classes.
fn samples_per_dispatch(widths: &[usize]) -> Option<usize> {
    let dense: usize = widths.windows(2).skip(2).map(|w| w[0] * w[1] + w[1]).sum();
    let per_sample =
        widths[1..].iter().max().copied().unwrap_or(1) + dense + 3 * widths[widths.len() - 1] + 8;
    (per_sample <= 60_000).then(|| (30_000 / per_sample).max(1))
}

fn penalty(model: &Model, params: &[f64]) -> f64 {
    let lambda = model.spec.weight_decay;
    model
        .layout
        .tensors
        .iter()
        .filter(|t| t.is_weight())
        .map(|t| {
            params[t.offset..t.offset + t.numel]
                .iter()
                .map(|w| 0.5 * lambda * w * w)
                .sum::<f64>()
        })
        .sum()
}

/// A numerical gradient over chosen parameters.
#[derive(Clone, Debug)]
pub struct NumericalGradient {
    pub grad: Vec<f64>,
    /// Per parameter: the ±h pair saw different ReLU states (a kink between them).
    pub kinks: Vec<bool>,
    pub perturbed_losses: usize,
    pub seconds: f64,
}

/// Loss and analytic (backprop) gradient of `model` on one batch, in the model's precision.
pub fn analytic_gradient(
    ctx: &GpuContext,
    kernels: &Kernels,
    model: &Model,
    x: &[f64],
    labels: &[u32],
) -> Result<(f64, Vec<f64>)> {
    let rec = Recorder {
        ctx,
        kernels,
        model,
    };
    let ws = Workspace::new(ctx, model, labels.len(), 1, true);
    ws.upload(ctx, x, labels, model.precision);
    let stats = GpuBuffer::real(ctx, "stats", STATS_WORDS, model.precision);
    let state = GpuBuffer::zeroed(ctx, "state", STATE_WORDS, 4);
    let mut d: Vec<Dispatch> = rec.l2_penalty(&stats);
    d.extend(rec.forward_with(&ws, &Copies::Single, Mode::Check, &state, 0));
    d.extend(rec.backward(&ws));
    d.push(train_metrics(&rec.gpu(), &ws, &stats, &state));
    kernel::run(ctx, &d)?;
    let loss = stats.read_real(ctx, model.precision)?[StatsWord::LastLoss as usize];
    Ok((loss, model.read_grads(ctx)?))
}
