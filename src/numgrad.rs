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

use crate::error::{Error, Result};
use crate::gpu::buffers::uniform;
use crate::gpu::kernel::{self, grid, shaders, Binding};
use crate::gpu::{Dispatch, GpuBuffer, GpuContext, Kernel, Precision};
use crate::nn::{Activation, Copies, Kernels, Model, Recorder, Workspace};

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
    pub chunk: usize,
    host_params: Vec<f64>,
    base_penalty: f64,
    pert: GpuBuffer,
    out_loss: GpuBuffer,
    out_flips: GpuBuffer,
    dispatches: Vec<Dispatch>,
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
        let widths = model.spec.widths();
        let rec = Recorder {
            ctx,
            kernels,
            model,
        };
        let base = Workspace::new(ctx, model, n, 1, false);
        base.upload(ctx, x, labels, precision);
        kernel::run(ctx, &rec.forward(&base, &Copies::Single))?;
        let host_params = model.read_params(ctx)?;
        let base_penalty = penalty(model, &host_params);

        let bytes = precision.bytes();
        let max_width = *widths[1..].iter().max().expect("at least one layer");
        let per_eval_bytes = match strategy {
            Strategy::Incremental => 2 * max_width * bytes,
            Strategy::Full => n * widths[1..].iter().sum::<usize>() * 2 * bytes + n * 8,
        };
        let binding_cap = match strategy {
            Strategy::Incremental => ctx.max_binding_elems(2 * max_width * bytes),
            Strategy::Full => ctx.max_binding_elems(n * max_width * bytes),
        };
        let auto = (CHUNK_BYTES / per_eval_bytes.max(1))
            .min(binding_cap)
            .clamp(1, 65_535);
        let chunk = chunk.unwrap_or(auto).clamp(1, binding_cap.clamp(1, 65_535));

        let pert = GpuBuffer::zeroed(ctx, "perturbations", 2 * chunk, 4);
        let h_buf = GpuBuffer::from_real(ctx, "h", &[h], precision);
        let out_loss = GpuBuffer::real(ctx, "perturbed_loss", chunk, precision);
        let out_flips = GpuBuffer::zeroed(ctx, "kink_flips", chunk, 4);
        let mut work = Vec::new();
        let mut full_ws = None;
        let dispatches = match strategy {
            Strategy::Full => {
                let ws = Workspace::new(ctx, model, n, chunk, false);
                ws.upload(ctx, x, labels, precision);
                let copies = Copies::Perturbed {
                    pert: &pert,
                    h: &h_buf,
                    flips: &out_flips,
                    base: &base,
                };
                let mut d = rec.forward(&ws, &copies);
                d.push(rec.copy_loss(&ws, &out_loss));
                full_ws = Some(ws);
                d
            }
            Strategy::Incremental => {
                // The unperturbed pre-activations and activations of every layer, side by side
                // in one read-only buffer, and the layer table that locates them.
                let mut table = Vec::new();
                let mut offset = 0usize;
                let mut sources = Vec::new();
                for l in 0..model.spec.depth() {
                    let w = &model.layout.tensors[2 * l];
                    let b = &model.layout.tensors[2 * l + 1];
                    let pre_off = offset;
                    offset += n * widths[l + 1];
                    sources.push((base.pre()[l], pre_off));
                    let act_off = if l + 1 < model.spec.depth() {
                        sources.push((base.act()[l], offset));
                        offset += n * widths[l + 1];
                        offset - n * widths[l + 1]
                    } else {
                        0
                    };
                    table.extend(
                        [
                            widths[l],
                            widths[l + 1],
                            w.offset,
                            b.offset,
                            pre_off,
                            act_off,
                        ]
                        .map(|v| v as u32),
                    );
                }
                let concat = GpuBuffer::real(ctx, "base_activations", offset, precision);
                let mut encoder = ctx.device.create_command_encoder(&Default::default());
                for (src, at) in sources {
                    encoder.copy_buffer_to_buffer(
                        &src.buffer,
                        0,
                        &concat.buffer,
                        (at * bytes) as u64,
                        (src.len * bytes) as u64,
                    );
                }
                ctx.queue.submit([encoder.finish()]);
                let table = GpuBuffer::from_u32(ctx, "layer_table", &table);
                let scratch = GpuBuffer::real(ctx, "scratch", chunk * 2 * max_width, precision);
                let (g, width) = grid(chunk);
                use Binding::*;
                let k = Kernel::new(
                    ctx,
                    shaders::PERTURBED_MLP,
                    "perturbed_losses",
                    precision,
                    &[
                        Uniform, Read, Read, Read, Read, Read, Read, Read, Read, ReadWrite,
                        ReadWrite, ReadWrite,
                    ],
                    &[],
                );
                let slice = samples_per_dispatch(&widths).ok_or_else(|| {
                    Error::InvalidArgument(
                        "this net's layers are too wide for the incremental kernel (one sample's update exceeds the 65,535 loop iterations lavapipe allows an invocation): use --strategy full".into(),
                    )
                })?;
                let d: Vec<Dispatch> = (0..n)
                    .step_by(slice)
                    .map(|begin| {
                        let params = [
                            chunk as u32,
                            model.spec.depth() as u32,
                            n as u32,
                            model.spec.output as u32,
                            (2 * max_width) as u32,
                            u32::from(model.spec.activation == Activation::Relu),
                            width,
                            begin as u32,
                            (begin + slice).min(n) as u32,
                            0,
                            0,
                            0,
                        ];
                        let u = uniform(ctx, "perturbed_mlp", &params);
                        k.dispatch(
                            ctx,
                            &[
                                &u,
                                &table.buffer,
                                &model.params.buffer,
                                &base.x.buffer,
                                &base.labels.buffer,
                                &concat.buffer,
                                &base.row_loss.buffer,
                                &pert.buffer,
                                &h_buf.buffer,
                                &out_loss.buffer,
                                &out_flips.buffer,
                                &scratch.buffer,
                            ],
                            g,
                        )
                    })
                    .collect();
                work.extend([concat, table, scratch]);
                d
            }
        };
        work.push(h_buf);
        ctx.wait()?;
        Ok(PerturbedLossEngine {
            ctx,
            model,
            strategy,
            h,
            chunk,
            host_params,
            base_penalty,
            pert,
            out_loss,
            out_flips,
            dispatches,
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
        let mut out = Vec::with_capacity(perturbations.len());
        for part in perturbations.chunks(self.chunk) {
            // Pad a short last chunk with copies of its first entry; their results are dropped.
            let words: Vec<u32> = (0..self.chunk)
                .flat_map(|q| {
                    let p = part.get(q).unwrap_or(&part[0]);
                    [p.index as u32, u32::from(p.minus)]
                })
                .collect();
            self.pert.write_u32(self.ctx, 0, &words);
            let mut encoder = self.ctx.device.create_command_encoder(&Default::default());
            encoder.clear_buffer(&self.out_flips.buffer, 0, None);
            {
                let mut pass = encoder.begin_compute_pass(&Default::default());
                kernel::record_all(&mut pass, &self.dispatches);
            }
            self.ctx.queue.submit([encoder.finish()]);
            let losses = self
                .out_loss
                .read_real_range(self.ctx, precision, 0..part.len())?;
            let flips = bytemuck::pod_collect_to_vec::<u8, u32>(
                &self.out_flips.read_bytes(self.ctx, 0..part.len())?,
            );
            for ((p, loss), kink_flips) in part.iter().zip(losses).zip(flips) {
                out.push(PerturbedLoss {
                    loss: loss + self.penalty_change(p),
                    kink_flips,
                });
            }
        }
        Ok(out)
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
    let stats = GpuBuffer::real(ctx, "stats", 8, model.precision);
    let state = GpuBuffer::zeroed(ctx, "state", 4, 4);
    let mut d: Vec<Dispatch> = rec.l2_penalty(&stats);
    d.extend(rec.forward(&ws, &Copies::Single));
    d.extend(rec.backward(&ws));
    d.push(rec.train_metrics(&ws, &stats, &state));
    kernel::run(ctx, &d)?;
    let loss = stats.read_real(ctx, model.precision)?[1];
    Ok((loss, model.read_grads(ctx)?))
}
