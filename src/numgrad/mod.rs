//! Numerical gradients by central differences, with every perturbed loss L(θ ± h·eᵢ) evaluated
//! in parallel on the GPU.
//!
//! Each evaluation sees its own copy of the parameters: the shared base is bound read-only and
//! each evaluation applies its own one-element change as it reads (`full`), or starts from the
//! unperturbed activations and recomputes only what its change touches (`incremental`). No
//! evaluation writes anything another reads, so the classic bug of perturbing shared parameters
//! in place and botching the restore cannot happen here.

use std::ops::Range;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::gpu::kernel;
use crate::gpu::{Dispatch, GpuBuffer, GpuContext, Precision};
use crate::nn::layers::MovedChannel;
use crate::nn::{Copies, Kernels, Layer, Mode, Model, Recorder, Workspace};
use crate::train::{copy_loss, train_metrics, StatsWord, STATE_WORDS, STATS_WORDS};

/// How perturbed losses are evaluated.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
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

/// Budget for one chunk's scratch and activations on a GPU: large enough to keep it busy, small
/// enough for any adapter's storage-binding limit.
const CHUNK_BYTES: usize = 96 << 20;

/// The same on a CPU adapter (lavapipe), where device memory is fresh host pages: wgpu zeroes a
/// buffer on its first use and each page faults in, about 1 GB/s here, so 96 MiB cost ~0.07 s
/// before any work, while a quarter of that still gives its few SIMD lanes thousands of copies.
/// Measured on `--hidden 100,100`: 0.21 s at 96 MiB, 0.15 s at 24 MiB (README).
const CHUNK_BYTES_ON_HOST: usize = 24 << 20;

/// How an engine cuts its perturbations into chunks, a submit each.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Chunking {
    /// Perturbations per chunk as asked (`--chunk`); from the device limits when None.
    pub size: Option<usize>,
    /// The engine evaluates an interleaved 1/`parts` of the elements (a gradcheck shard's, or an
    /// adapter's part of one), so of every route: chunks from the device limits are sized to
    /// that part, as each is padded to its full size (a shard's one chunk sized for the whole
    /// route would be mostly padding). Results do not depend on the chunk size.
    pub parts: usize,
}

impl From<Option<usize>> for Chunking {
    /// All of the elements, in chunks of `size`.
    fn from(size: Option<usize>) -> Chunking {
        Chunking { size, parts: 1 }
    }
}

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
    /// Incremental: the first layer's weights whose change moves nothing.
    idle: Option<IdleInputs>,
    bufs: EngineBuffers,
    /// One route per starting layer, then the MLP kernel's.
    routes: Vec<Route>,
    /// First layer of the trailing MLP served by the incremental kernel.
    tail_start: Option<usize>,
    /// Per layer, the route of its input check (custom layers only).
    input_routes: Vec<Option<usize>>,
    /// Samples in the batch.
    rows: usize,
    // Kept alive for the dispatches' bind groups.
    _base: Workspace,
    _work: Vec<GpuBuffer>,
    _full_ws: Option<Workspace>,
}

impl<'a> PerturbedLossEngine<'a> {
    /// Runs the unperturbed forward pass on (x, labels) and prepares chunks as `chunk` says
    /// ([`Chunking`]; an `Option<usize>` is a chunk size, from the device limits when `None`).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        ctx: &'a GpuContext,
        kernels: &'a Kernels,
        model: &'a Model,
        x: &[f64],
        labels: &[u32],
        strategy: Strategy,
        h: f64,
        chunk: impl Into<Chunking>,
    ) -> Result<Self> {
        let chunk = chunk.into();
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
        let idle = match strategy {
            Strategy::Incremental => IdleInputs::of(ctx, model, &base, x)?,
            Strategy::Full => None,
        };

        // Incremental: the trailing affine/activation layers (all of a plain MLP, or the dense
        // head of a convnet) take the MLP kernel; a perturbation below them recomputes from its
        // own layer up. Full: every evaluation is a complete forward pass from layer 0.
        let tail = match strategy {
            Strategy::Incremental => MlpTail::of(model, n),
            Strategy::Full => None,
        };
        let tail_start = tail.as_ref().map_or(model.layers.len(), |t| t.start);
        let (recompute_chunk, tail_chunk) =
            chunk_sizes(ctx, model, n, tail.as_ref(), idle.as_ref(), chunk);
        let chunk_max = recompute_chunk
            .unwrap_or(0)
            .max(tail_chunk.unwrap_or(0))
            .max(1);
        let bufs = EngineBuffers::new(ctx, chunk_max, h, precision);
        // Route i < layers.len(): start at layer i (or 0 for Full); then the MLP kernel's; then
        // Full's input-check routes.
        let ws = recompute_chunk.map(|chunk| {
            let ws = Workspace::new(ctx, model, n, chunk, false);
            ws.upload(ctx, x, labels, precision);
            ws
        });
        let mut routes: Vec<Route> = match &ws {
            Some(ws) => recompute_routes(&rec, ws, &base, &state, &bufs, strategy, tail_start)?,
            None => model
                .layers
                .iter()
                .map(|_| Route::new(1, Vec::new()))
                .collect(),
        };
        let mut work = Vec::new();
        if let (Some(tail), Some(chunk)) = (&tail, tail_chunk) {
            let gpu = rec.gpu();
            let (d, kept) = tail.dispatches(&gpu, model, &host_params, &base, chunk, &bufs)?;
            work.extend(kept);
            routes.push(Route::new(chunk, d));
        }
        let input_routes = match &ws {
            Some(ws) => input_routes(&rec, ws, &base, &state, &bufs, strategy, &mut routes),
            None => vec![None; model.layers.len()],
        };
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
            idle,
            bufs,
            routes,
            tail_start: tail.map(|t| t.start),
            input_routes,
            rows: n,
            _base: base,
            _work: work,
            _full_ws: ws,
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
        let idle = |p: &Perturbation| self.idle.as_ref().filter(|i| i.moves_nothing(p.index));
        let evaluated: Vec<Perturbation> = (perturbations.iter())
            .filter(|p| idle(p).is_none())
            .copied()
            .collect();
        let mut losses = self
            .losses_on_routes(&evaluated, |p| self.route_of(p.index))?
            .into_iter();
        Ok((perturbations.iter())
            .map(|p| match idle(p) {
                Some(inputs) => PerturbedLoss {
                    loss: inputs.base_loss + self.penalty_change(p),
                    kink_flips: 0,
                },
                None => losses.next().expect("one loss per evaluated perturbation"),
            })
            .collect())
    }

    /// How many of `indices`' perturbed losses [`PerturbedLossEngine::losses`] knows without a
    /// pass (two for each first-layer weight whose input is 0 in every sample).
    pub fn idle_losses(&self, indices: &[usize]) -> usize {
        let idle = |i: &&usize| self.idle.as_ref().is_some_and(|w| w.moves_nothing(**i));
        2 * indices.iter().filter(idle).count()
    }

    /// Losses with one element of layer `layer`'s input moved instead of a parameter: index
    /// n·IN + i of its [N, IN] input in the unperturbed pass. Only a layer with a
    /// [`checked_input`](crate::nn::layers::LayerOps::checked_input) can take them.
    pub fn input_losses(
        &self,
        layer: usize,
        perturbations: &[Perturbation],
    ) -> Result<Vec<PerturbedLoss>> {
        let model = self.model;
        let Some(in_size) = model.layers.get(layer).and_then(|l| l.checked_input()) else {
            return Err(Error::InvalidArgument(format!(
                "layer {} has no input-gradient check: only custom WGSL layers take one",
                layer + 1
            )));
        };
        let elements = self.rows * in_size;
        if let Some(bad) = perturbations.iter().find(|p| p.index >= elements) {
            return Err(Error::InvalidArgument(format!(
                "input element {} is out of range: layer {}'s input has {elements}",
                bad.index,
                layer + 1
            )));
        }
        // The custom layer at the route's start reads indices from the arena's size on as
        // elements of its shared input; every other layer compares them with its own
        // parameters' indices, which they never match.
        let moved: Vec<Perturbation> = (perturbations.iter())
            .map(|p| Perturbation {
                index: model.layout.total + p.index,
                minus: p.minus,
            })
            .collect();
        let route = self.input_routes[layer].expect("a custom layer has an input route");
        self.losses_on_routes(&moved, |_| route)
    }

    /// Evaluates each perturbation on the route `route` picks for it.
    fn losses_on_routes(
        &self,
        perturbations: &[Perturbation],
        route: impl Fn(&Perturbation) -> usize,
    ) -> Result<Vec<PerturbedLoss>> {
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
            by_route[route(p)].push(k);
        }
        for (route, members) in by_route.iter().enumerate() {
            let Route {
                chunk,
                dispatches,
                one_channel,
            } = &self.routes[route];
            for part in members.chunks(*chunk) {
                // Pad a short last chunk with copies of its first entry; their results are dropped.
                let padded = (0..*chunk).map(|q| &perturbations[*part.get(q).unwrap_or(&part[0])]);
                let words: Vec<u32> = (padded.clone())
                    .flat_map(|p| [p.index as u32, u32::from(p.minus)])
                    .collect();
                self.bufs.pert.write_u32(self.ctx, 0, &words);
                if *one_channel {
                    let channels: Vec<u32> = padded.map(|p| self.moved_channel(p.index)).collect();
                    self.bufs.moved.write_u32(self.ctx, 0, &channels);
                }
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

    /// The channel that a change of parameter `index` moves, on a one-channel route.
    fn moved_channel(&self, index: usize) -> u32 {
        let model = self.model;
        let layer = model.layer_of_param(index);
        let channel = layer.and_then(|l| model.layers[l].moved_channel(&model.layout, index));
        channel.expect("a one-channel route's parameters move one channel") as u32
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
        let idle = self.idle_losses(indices);
        self.central_differences(indices, idle, |p| self.losses(p))
    }

    /// Central differences of the loss in the elements `indices` of layer `layer`'s input
    /// ([`PerturbedLossEngine::input_losses`]).
    pub fn input_gradient(&self, layer: usize, indices: &[usize]) -> Result<NumericalGradient> {
        self.central_differences(indices, 0, |p| self.input_losses(layer, p))
    }

    fn central_differences(
        &self,
        indices: &[usize],
        idle_losses: usize,
        losses: impl Fn(&[Perturbation]) -> Result<Vec<PerturbedLoss>>,
    ) -> Result<NumericalGradient> {
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
        let losses = losses(&perturbations)?;
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
            idle_losses,
            seconds: start.elapsed().as_secs_f64(),
        })
    }
}

fn has_params(layer: &Layer) -> bool {
    !layer.tensors().is_empty()
}

/// Whether a layer gets a route of its own: one for its parameters, its input, or both.
fn has_route(layer: &Layer) -> bool {
    has_params(layer) || layer.checked_input().is_some()
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
    /// One-channel routes: the channel each copy's change moves.
    moved: GpuBuffer,
}

impl EngineBuffers {
    /// For chunks of up to `chunk` perturbations.
    fn new(ctx: &GpuContext, chunk: usize, h: f64, precision: Precision) -> EngineBuffers {
        EngineBuffers {
            pert: GpuBuffer::zeroed(ctx, "perturbations", 2 * chunk, 4),
            h: GpuBuffer::from_real(ctx, "h", &[h], precision),
            out_loss: GpuBuffer::real(ctx, "perturbed_loss", chunk, precision),
            out_flips: GpuBuffer::zeroed(ctx, "kink_flips", chunk, 4),
            moved: GpuBuffer::zeroed(ctx, "moved_channels", chunk, 4),
        }
    }
}

/// A dispatch list that evaluates `chunk` perturbations a submit.
struct Route {
    chunk: usize,
    dispatches: Vec<Dispatch>,
    /// Each submit first names the channel each copy moves ([`MovedChannel`]).
    one_channel: bool,
}

impl Route {
    fn new(chunk: usize, dispatches: Vec<Dispatch>) -> Route {
        Route {
            chunk,
            dispatches,
            one_channel: false,
        }
    }
}

mod linear_regime;
mod tail;
use tail::MlpTail;

/// Perturbations per chunk of the routes that recompute layers (when a parameter lies below
/// the MLP tail) and of the MLP kernel (when there is a tail): as many as the adapter's chunk
/// budget of activations holds, within its binding limit, evened out over the perturbations the
/// engine's part of the route evaluates ([`balanced`], [`Chunking::parts`]; `idle` weights' take
/// no pass), or the chunk size when given.
fn chunk_sizes(
    ctx: &GpuContext,
    model: &Model,
    n: usize,
    tail: Option<&MlpTail>,
    idle: Option<&IdleInputs>,
    chunk: Chunking,
) -> (Option<usize>, Option<usize>) {
    // The most perturbations a route over `layers` evaluates: two per element, less the idle
    // weights'. An interleaved 1/parts of a contiguous run of positions holds ⌈run/parts⌉ of
    // them; the idle weights cut the first layer's into runs, each of which may round up.
    let evaluated = |layers: Range<usize>| {
        let fill: usize = (layers.clone())
            .map(|l| route_fill(model, n, &model.layers[l]))
            .sum();
        let idle = idle.filter(|_| layers.contains(&0));
        let elements = (fill - idle.map_or(0, IdleInputs::perturbations)) / 2;
        let runs = match chunk.parts {
            0 | 1 => 0,
            _ => 1 + idle.map_or(0, IdleInputs::busy_runs),
        };
        2 * (elements.div_ceil(chunk.parts.max(1)) + runs)
    };
    let bytes = model.precision.bytes();
    let tail_start = tail.map_or(model.layers.len(), |t| t.start);
    let needs_recompute = model.layers[..tail_start].iter().any(has_route);
    let limit = |elem_bytes: usize| ctx.max_binding_elems(elem_bytes.max(1)).clamp(1, 65_535);
    let budget = match ctx.info.device_type {
        wgpu::DeviceType::Cpu => CHUNK_BYTES_ON_HOST,
        _ => CHUNK_BYTES,
    };
    // A chunk is padded to its full size, so none is larger than the longest route can ever
    // fill ([`route_fill`]); shorter routes take views of fewer copies.
    let recompute = needs_recompute.then(|| {
        let per_eval = n * model.sizes.iter().sum::<usize>() * 2 * bytes + n * 8;
        let max_size = *model.sizes.iter().max().expect("at least one layer");
        let fill = (0..tail_start)
            .map(|l| evaluated(l..l + 1))
            .max()
            .unwrap_or(1);
        let cap = limit(n * max_size * bytes);
        let most = (budget / per_eval).clamp(1, cap);
        (chunk.size).map_or(balanced(fill, most), |c| c.clamp(1, cap))
    });
    let tail_chunk = tail.map(|t| {
        let per_eval = t.scratch_per_eval(n) * bytes;
        // The MLP kernel serves every perturbation of the tail's layers.
        let fill = evaluated(t.start..model.layers.len());
        let cap = limit(per_eval);
        let most = (budget / per_eval).clamp(1, cap);
        (chunk.size).map_or(balanced(fill, most), |c| c.clamp(1, cap))
    });
    (recompute, tail_chunk)
}

/// The chunk that splits `fill` perturbations into as few chunks of at most `most` as it can,
/// all of one size: a chunk is padded to its full size, so 4,290 perturbations at most 3,206 a
/// chunk run as 2 × 2,145 rather than 2 × 3,206, a third of them padding.
fn balanced(fill: usize, most: usize) -> usize {
    let fill = fill.max(1);
    fill.div_ceil(fill.div_ceil(most))
}

/// The most perturbations a layer's route can take: two for each of its parameters, and for
/// each element of a custom layer's input.
fn route_fill(model: &Model, rows: usize, layer: &Layer) -> usize {
    let params: usize = (layer.tensors().iter())
        .map(|&t| model.layout.tensors[t].numel)
        .sum();
    2 * (params + rows * layer.checked_input().unwrap_or(0))
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
) -> Result<Vec<Route>> {
    let layers = &rec.model.layers;
    let copies = perturbed_copies(bufs, base, strategy);
    // Only layers that read an input shared by all copies (affine, convolution, LayerNorm,
    // custom) can start a route: the perturbed layer itself, or the nearest one below it
    // (recomputed unperturbed); Full starts at the first, since parameter-free layers before it
    // give every copy the same output. Where the perturbed channel stays alone up to an affine
    // layer, the incremental route computes that channel alone.
    let first_reader = layers.iter().position(|l| l.reads_shared_input());
    let mut routes = Vec::new();
    for (start, layer) in layers.iter().enumerate() {
        if !has_route(layer) || start >= tail_start {
            routes.push(Route::new(ws.copies, Vec::new()));
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
        // A route of few perturbations (a bias, a normalisation's γ) runs on as many copies
        // as it can fill, not on the longest route's chunk.
        let view = ws.first_copies(ws.copies.min(route_fill(rec.model, ws.rows, layer)));
        let one_channel = (strategy == Strategy::Incremental)
            .then(|| one_channel_route(rec.model, from, start))
            .flatten();
        routes.push(match one_channel {
            Some((channels, end)) => {
                let moved = MovedChannel {
                    moved: &bufs.moved,
                    channels,
                };
                let mut d = rec.forward_moved_channel(&view, &copies, state, from, (moved, end));
                d.push(copy_loss(&rec.gpu(), &view, &bufs.out_loss));
                Route {
                    chunk: view.copies,
                    dispatches: d,
                    one_channel: true,
                }
            }
            None => Route::new(
                view.copies,
                route_from(rec, &view, &copies, state, bufs, from),
            ),
        });
    }
    Ok(routes)
}

/// Per layer, the route of its input check (custom layers only). An input check moves the
/// custom layer's own input, so its route starts at that layer: Incremental's route for the
/// layer does; Full's starts lower, so it gets one more in `routes`.
fn input_routes(
    rec: &Recorder,
    ws: &Workspace,
    base: &Workspace,
    state: &GpuBuffer,
    bufs: &EngineBuffers,
    strategy: Strategy,
    routes: &mut Vec<Route>,
) -> Vec<Option<usize>> {
    let layers = rec.model.layers.iter().enumerate();
    layers
        .map(|(l, layer)| {
            layer.checked_input().map(|_| match strategy {
                Strategy::Incremental => l,
                Strategy::Full => {
                    let copies = perturbed_copies(bufs, base, strategy);
                    let fill = route_fill(rec.model, ws.rows, layer);
                    let view = ws.first_copies(ws.copies.min(fill));
                    let dispatches = route_from(rec, &view, &copies, state, bufs, l);
                    routes.push(Route::new(view.copies, dispatches));
                    routes.len() - 1
                }
            })
        })
        .collect()
}

fn perturbed_copies<'b>(
    bufs: &'b EngineBuffers,
    base: &'b Workspace,
    strategy: Strategy,
) -> Copies<'b> {
    Copies::Perturbed {
        pert: &bufs.pert,
        h: &bufs.h,
        flips: &bufs.out_flips,
        base,
        incremental: strategy == Strategy::Incremental,
    }
}

/// Whether the perturbations of layer `start`, on a route from layer `from`, can take a
/// one-channel route: `from` is a convolution or a LayerNorm after one, each of `start`'s
/// parameters moves one channel (a filter, a BatchNorm's γ and β, a LayerNorm's γ and β), and
/// channel-local layers carry it to an affine layer. Returns the channel count and that affine
/// layer.
fn one_channel_route(model: &Model, from: usize, start: usize) -> Option<(usize, usize)> {
    let channels = match &model.layers[from] {
        Layer::Conv(conv) => conv.f,
        Layer::LayerNorm(norm) => norm.f / norm.plane,
        _ => return None,
    };
    let first = model.layout.tensors[*model.layers[start].tensors().first()?].offset;
    model.layers[start].moved_channel(&model.layout, first)?;
    let end = (from + 1..model.layers.len()).find(|&l| !model.layers[l].channel_local())?;
    matches!(model.layers[end], Layer::Affine(_)).then_some((channels, end))
}

/// A forward pass of the perturbed copies in `ws` from layer `from` (its input the base
/// workspace's, shared), then each copy's loss.
fn route_from(
    rec: &Recorder,
    ws: &Workspace,
    copies: &Copies,
    state: &GpuBuffer,
    bufs: &EngineBuffers,
    from: usize,
) -> Vec<Dispatch> {
    let mut d = rec.forward_with(ws, copies, Mode::Check, state, from);
    d.push(copy_loss(&rec.gpu(), ws, &bufs.out_loss));
    d
}

/// The weights of a first affine layer whose input unit is 0 in every sample of the batch: a
/// change to one multiplies 0, so every activation keeps its unperturbed value bit for bit, and
/// both its perturbed losses are the unperturbed loss (plus the L2 term's change). The
/// incremental strategy knows them without a pass; on MNIST about 60% of W1's inputs are 0 in
/// all of a batch of 3. The full strategy, the reference, still evaluates them.
struct IdleInputs {
    /// W's offset in θ and its width (W is [IN, OUT]).
    offset: usize,
    outs: usize,
    /// Per input unit: 0 in every sample.
    idle: Vec<bool>,
    /// The unperturbed loss without its L2 term, as the kernels average it.
    base_loss: f64,
}

impl IdleInputs {
    /// Those of `x` [N, IN] under the unperturbed pass in `base`, whose per-sample losses are
    /// read back only when some input is idle.
    fn of(ctx: &GpuContext, model: &Model, base: &Workspace, x: &[f64]) -> Result<Option<Self>> {
        let Some(Layer::Affine(affine)) = model.layers.first() else {
            return Ok(None);
        };
        let (ins, rows) = (affine.d_in, base.rows);
        let idle: Vec<bool> = (0..ins)
            .map(|i| (0..rows).all(|n| x[n * ins + i] == 0.0))
            .collect();
        if !idle.contains(&true) {
            return Ok(None);
        }
        let precision = model.precision;
        Ok(Some(IdleInputs {
            offset: model.layout.tensors[affine.weight].offset,
            outs: affine.d_out,
            idle,
            base_loss: mean_in(precision, &base.row_loss.read_real(ctx, precision)?),
        }))
    }

    /// The perturbations known without a pass: two per idle weight.
    fn perturbations(&self) -> usize {
        2 * self.outs * self.idle.iter().filter(|&&idle| idle).count()
    }

    /// The runs of consecutive input units that are not idle (whose weights take a pass).
    fn busy_runs(&self) -> usize {
        let starts = |(i, &idle): (usize, &bool)| !idle && (i == 0 || self.idle[i - 1]);
        self.idle.iter().enumerate().filter(|&u| starts(u)).count()
    }

    fn moves_nothing(&self, index: usize) -> bool {
        let Some(at) = index.checked_sub(self.offset) else {
            return false;
        };
        self.idle.get(at / self.outs).copied().unwrap_or(false)
    }
}

/// The mean of `values` summed in order in `precision`, as the kernels average per-sample losses.
fn mean_in(precision: Precision, values: &[f64]) -> f64 {
    match precision {
        Precision::F64 => values.iter().sum::<f64>() / values.len() as f64,
        Precision::F32 => {
            let sum = values.iter().fold(0f32, |s, &v| s + v as f32);
            f64::from(sum / values.len() as f32)
        }
    }
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
    /// Of them, those known without a pass ([`PerturbedLossEngine::idle_losses`]).
    pub idle_losses: usize,
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
    let (loss, grads, _) = analytic_gradients(ctx, kernels, model, x, labels, &[])?;
    Ok((loss, grads))
}

/// [`analytic_gradient`], and the gradient of the input [N, IN] of each layer in `inputs`
/// (custom layers, or any layer but the first).
pub fn analytic_gradients(
    ctx: &GpuContext,
    kernels: &Kernels,
    model: &Model,
    x: &[f64],
    labels: &[u32],
    inputs: &[usize],
) -> Result<(f64, Vec<f64>, Vec<Vec<f64>>)> {
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
    let input_grads = (inputs.iter())
        .map(|&l| {
            let grad = ws.input_grad(l).ok_or_else(|| {
                Error::InvalidArgument(format!("layer {} keeps no input gradient", l + 1))
            })?;
            grad.read_real(ctx, model.precision)
        })
        .collect::<Result<_>>()?;
    Ok((loss, model.read_grads(ctx)?, input_grads))
}

#[cfg(test)]
mod tests {
    use super::balanced;

    #[test]
    fn balanced_chunks_cover_the_fill_in_fewest_chunks_with_least_padding() {
        assert_eq!(balanced(4290, 3206), 2145);
        assert_eq!(balanced(7, 3), 3);
        assert_eq!(balanced(10, 100), 10);
        assert_eq!(balanced(0, 5), 1);
        for fill in 1..200 {
            for most in 1..40 {
                let chunk = balanced(fill, most);
                let chunks = fill.div_ceil(chunk);
                assert!(chunk <= most, "{fill} by at most {most}: chunk {chunk}");
                assert_eq!(
                    chunks,
                    fill.div_ceil(most),
                    "{fill} by {most}: {chunks} chunks"
                );
                assert!(chunks * chunk - fill < chunks, "{fill} by {most}: padding");
            }
        }
    }
}
