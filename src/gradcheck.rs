//! Gradient check: backprop against batched numerical gradients, per tensor, with kink crossings
//! counted and kept out of the verdict.
//!
//! Tolerances (documented in README): an element passes when |a − n| ≤ atol + rtol·max(|a|, |n|);
//! a tensor passes when every element off a kink passes and
//! ‖a − n‖ ≤ norm_tol·‖a‖ + norm_atol·√numel (the second term is the noise floor of the central
//! difference itself, ≈ ε·|L|/h per element, which no check can see below).
//! - f64 (h = 1e-5): atol 1e-7, rtol 1e-5, norm_tol 1e-6, norm_atol 1e-9. The rounding noise is
//!   ε·|L|/h ≈ 5e-11 per element, so these leave a wide margin, while a backward pass that is off
//!   by even 0.1 % fails by orders of magnitude.
//! - f32 (h = 5e-3): per-element f32 central differences are unreliable (rounding ε·|L|/h ≈ 6e-5,
//!   against gradients of 1e-4 and below), so only the norm-wise error counts, and elements are
//!   reported without a verdict. The noise floor is measured, not assumed: the check evaluates
//!   the same differences again at 2h, where the rounding noise is about half as large, and
//!   takes σ = ‖n(h) − n(2h)‖ / √(1.25·numel) as each tensor's noise per element. The bound is
//!   ‖a − n‖ ≤ norm_tol·‖a‖ + (norm_atol + 3·σ)·√numel, with norm_tol = 2e-3 and norm_atol =
//!   1e-6 for the analytic gradient's own rounding. Why (README, "Tolerances"):
//!   over 14 nets the per-element noise ranged from 1.3e-6 to 4.6e-5 (a convolution's weights
//!   touch many outputs and are the noisiest), so no fixed floor both passes every healthy tensor
//!   and fails a 1% error; relative errors of tensors well above their noise stayed under 3e-4.
//!
//! - f64 tensors that fail at h are checked again against the Richardson extrapolation from h
//!   and h/2, which cancels the differences' h² truncation error ([`TensorCheck::failed_at_h`]).
//!
//! Directional checks use JAX check_grads' tolerances: |a − n| ≤ t + t·|a|, t = 1e-5 (f64) or
//! 2e-3 (f32).
//!
//! A check is two halves: the central differences of its elements ([`NumericShare`]), which
//! can be split into interleaved shares ([`Shard`]) computed by other processes
//! ([`numeric_share`], [`shard`]) or adapters ([`check_on_adapters`]), and the report, which
//! needs them all ([`merge`]). Each perturbed loss is an evaluation of its own, so a split
//! check's numerical gradients are an unsplit one's, bit for bit.

use std::ops::Range;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::gpu::{GpuContext, Precision};
use crate::nn::{unravel, CrossEntropy, Kernels, Layer, Model, NetSpec, ParamLayout, TensorInfo};
use crate::numgrad::{
    analytic_gradient, analytic_gradients, Chunking, NumericalGradient, PerturbedLossEngine,
    Strategy,
};

pub mod shard;
pub use shard::Shard;

/// Pass/fail thresholds of one precision.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Tolerance {
    pub atol: f64,
    pub rtol: f64,
    pub norm_tol: f64,
    pub norm_atol: f64,
    /// Whether single elements can fail the check.
    pub per_element: bool,
    /// When > 0, the norm-wise floor also allows this many times the tensor's own noise,
    /// measured by a second central difference at 2h.
    pub noise_factor: f64,
}

impl Tolerance {
    pub fn for_precision(precision: Precision) -> Tolerance {
        match precision {
            Precision::F64 => Tolerance {
                atol: 1e-7,
                rtol: 1e-5,
                norm_tol: 1e-6,
                norm_atol: 1e-9,
                per_element: true,
                noise_factor: 0.0,
            },
            Precision::F32 => Tolerance {
                atol: 1e-3,
                rtol: 1e-1,
                norm_tol: 2e-3,
                // The analytic gradient's own f32 rounding: a tensor whose true gradient is 0
                // (a bias under BatchNorm) can measure no noise, n(h) = n(2h) = 0 exactly.
                norm_atol: 1e-6,
                per_element: false,
                noise_factor: 3.0,
            },
        }
    }
}

/// What to check.
#[derive(Clone, Debug)]
pub struct GradcheckConfig {
    pub precision: Precision,
    pub h: f64,
    pub strategy: Strategy,
    /// Tensor names to check (all when empty).
    pub tensors: Vec<String>,
    /// Random directions for the directional check (0: none).
    pub directions: usize,
    pub seed: u64,
    /// Perturbations per GPU chunk (from the device limits when `None`).
    pub chunk: Option<usize>,
    /// Test hook: scale the analytic gradient of one tensor by a factor, as a backward pass
    /// with that bug would, to show that the check fails.
    #[doc(hidden)]
    pub analytic_fault: Option<(String, f64)>,
}

/// Per-tensor figures.
#[derive(Clone, Debug, Serialize)]
pub struct TensorCheck {
    pub name: String,
    pub numel: usize,
    pub mean_abs_diff: f64,
    pub max_rel_err: f64,
    /// Flat position inside the tensor of the max relative error, and its shape index.
    pub max_rel_err_at: Vec<usize>,
    pub norm_rel_err: f64,
    /// RMS rounding noise per element of the numerical gradient, measured at 2h (f32 only).
    pub noise_rms: Option<f64>,
    pub kink_crossings: usize,
    /// Elements off kinks that break atol + rtol·max(|a|,|n|).
    pub elements_failed: usize,
    pub passed: bool,
    /// f64: this tensor failed against the central differences at h, and the figures above
    /// compare it with the Richardson extrapolation from h and h/2 instead; these are
    /// its figures at h.
    pub failed_at_h: Option<AtStepH>,
}

/// A tensor's figures against the central differences at h alone.
#[derive(Clone, Debug, Serialize)]
pub struct AtStepH {
    pub norm_rel_err: f64,
    pub max_rel_err: f64,
    pub elements_failed: usize,
}

/// A directional-derivative check along one random unit direction v.
#[derive(Clone, Debug, Serialize)]
pub struct DirectionCheck {
    pub analytic: f64,
    pub numeric: f64,
    pub rel_err: f64,
    pub passed: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct GradcheckReport {
    pub passed: bool,
    pub precision: Precision,
    pub strategy: Strategy,
    pub h: f64,
    pub batch: usize,
    pub loss: f64,
    pub seconds_numeric: f64,
    /// Of which: the unperturbed forward pass, pipeline builds and buffers.
    pub seconds_numeric_setup: f64,
    pub seconds_analytic: f64,
    pub perturbed_losses: usize,
    /// Of them, those known without a pass: two for each first-layer weight whose input is 0 in
    /// every sample (incremental only).
    pub idle_losses: usize,
    /// Perturbations per GPU submit: the largest of the shares' when the check was split, as
    /// each sizes its chunks to its part.
    pub chunk: usize,
    pub tolerance: Tolerance,
    pub tensors: Vec<TensorCheck>,
    pub directions: Vec<DirectionCheck>,
    /// Why this check proves less than its verdict says, if it does: BatchNorm at batch 1, or
    /// tensors whose analytic and numerical gradients are both exactly zero.
    pub degenerate: Option<String>,
    #[serde(skip)]
    pub analytic: Vec<f64>,
    /// Numerical gradient in the arena layout (NaN for unchecked tensors).
    #[serde(skip)]
    pub numeric: Vec<f64>,
    /// Whether each element's central difference crossed a kink (arena layout; false for
    /// unchecked tensors): the elements every figure but `kink_crossings` leaves out.
    #[serde(skip)]
    pub kinks: Vec<bool>,
    /// The input gradients checked (custom layers'), element by element.
    #[serde(skip)]
    pub inputs: Vec<InputGradient>,
}

/// Both gradients of a custom layer's input, `xL` for layer L, [N, IN].
#[derive(Clone, Debug)]
pub struct InputGradient {
    /// The layer whose input it is (0-based).
    pub layer: usize,
    pub name: String,
    pub shape: Vec<usize>,
    pub analytic: Vec<f64>,
    pub numeric: Vec<f64>,
    pub kinks: Vec<bool>,
}

/// The tensors and inputs `names` picks (all when empty), or which name this net lacks.
fn selected<'l>(
    layers: &[Layer],
    layout: &'l ParamLayout,
    names: &[String],
) -> Result<(Vec<&'l TensorInfo>, Vec<CheckedInput>)> {
    let inputs: Vec<CheckedInput> = (layers.iter().enumerate())
        .filter_map(|(layer, l)| {
            l.checked_input().map(|in_size| CheckedInput {
                layer,
                name: format!("x{}", layer + 1),
                in_size,
            })
        })
        .collect();
    let known = |n: &String| layout.get(n).is_some() || inputs.iter().any(|i| &i.name == n);
    if let Some(name) = names.iter().find(|n| !known(n)) {
        let all: Vec<&str> = (layout.tensors.iter().map(|t| t.name.as_str()))
            .chain(inputs.iter().map(|i| i.name.as_str()))
            .collect();
        return Err(Error::InvalidArgument(format!(
            "unknown tensor '{name}' in --params: this net has {}",
            all.join(", ")
        )));
    }
    let picked = |name: &String| names.is_empty() || names.contains(name);
    Ok((
        layout.tensors.iter().filter(|t| picked(&t.name)).collect(),
        inputs.into_iter().filter(|i| picked(&i.name)).collect(),
    ))
}

/// What a check runs on: the net at its parameters, one batch, and what to check of it.
#[derive(Clone, Copy)]
pub struct Subject<'a> {
    pub spec: &'a NetSpec,
    pub params: &'a [f64],
    pub x: &'a [f64],
    pub labels: &'a [u32],
    pub config: &'a GradcheckConfig,
}

/// A tensor whose numerical gradient a check takes, and where its elements lie in the check's
/// element order: the checked parameter tensors in arena order, then the checked inputs (custom
/// layers'), each element by element. Shards split that order ([`Shard`]).
#[derive(Clone, Debug, PartialEq)]
pub struct CheckedTensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub positions: Range<usize>,
    /// Where its elements start in the parameter arena; None for a layer's input.
    pub arena_offset: Option<usize>,
}

/// The tensors a check of `spec` takes (`names`, all when empty) on a batch of `batch`, in
/// element order.
pub fn checked_tensors(
    spec: &NetSpec,
    names: &[String],
    batch: usize,
) -> Result<Vec<CheckedTensor>> {
    let (layers, layout) = spec.resolve()?;
    let (selected, inputs) = selected(&layers, &layout, names)?;
    Ok(element_order(&selected, &inputs, batch))
}

fn element_order(
    selected: &[&TensorInfo],
    inputs: &[CheckedInput],
    batch: usize,
) -> Vec<CheckedTensor> {
    let params = selected
        .iter()
        .map(|t| (t.name.clone(), t.shape.clone(), Some(t.offset)));
    let inputs = (inputs.iter()).map(|i| (i.name.clone(), vec![batch, i.in_size], None));
    let mut next = 0;
    (params.chain(inputs))
        .map(|(name, shape, arena_offset)| {
            let start = next;
            next += shape.iter().product::<usize>();
            CheckedTensor {
                name,
                shape,
                positions: start..next,
                arena_offset,
            }
        })
        .collect()
}

/// The arena indices of the checked parameters, in element order (they come first).
fn param_indices(tensors: &[CheckedTensor]) -> Vec<usize> {
    (tensors.iter())
        .filter_map(|t| {
            t.arena_offset
                .map(|offset| offset..offset + t.positions.len())
        })
        .flatten()
        .collect()
}

/// A check's central differences over some of its elements, the part of a check that shards
/// split: per position in the element order ([`CheckedTensor`]), ascending, the central
/// difference at h, whether its pair crossed a kink (at h or 2h), and in f32 the central
/// difference at 2h that measures the noise floor. (f64's second look at h/2 is the report's:
/// only a whole tensor's verdict asks for it.)
#[derive(Clone, Debug, PartialEq)]
pub struct NumericShare {
    pub positions: Vec<usize>,
    pub at_h: Vec<f64>,
    pub at_twice_h: Option<Vec<f64>>,
    pub kinks: Vec<bool>,
    pub stats: ShareStats,
}

/// What a share cost; a report sums its shares'.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ShareStats {
    pub perturbed_losses: usize,
    pub idle_losses: usize,
    pub seconds: f64,
    /// Of which: the unperturbed forward pass, pipeline builds and buffers.
    pub seconds_setup: f64,
    pub chunk: usize,
}

impl NumericShare {
    /// `shares` as one, in position order: they may not overlap.
    pub fn combine(mut shares: Vec<NumericShare>) -> Result<NumericShare> {
        if shares.len() == 1 {
            return Ok(shares.remove(0));
        }
        let wide = shares.first().is_some_and(|s| s.at_twice_h.is_some());
        if shares.iter().any(|s| s.at_twice_h.is_some() != wide) {
            return Err(Error::InvalidArgument(
                "shares of one check disagree on whether they measured the noise at 2h: they \
                 belong to checks of different precisions; merge the shards of one check"
                    .into(),
            ));
        }
        let mut entries: Vec<(usize, usize)> = (shares.iter().enumerate())
            .flat_map(|(s, share)| (0..share.positions.len()).map(move |k| (s, k)))
            .collect();
        entries.sort_by_key(|&(s, k)| shares[s].positions[k]);
        let mut out = NumericShare {
            positions: Vec::with_capacity(entries.len()),
            at_h: Vec::with_capacity(entries.len()),
            at_twice_h: wide.then(|| Vec::with_capacity(entries.len())),
            kinks: Vec::with_capacity(entries.len()),
            stats: ShareStats::default(),
        };
        for (s, k) in entries {
            let share = &shares[s];
            let position = share.positions[k];
            if out.positions.last() == Some(&position) {
                return Err(Error::InvalidArgument(format!(
                    "element {position} of the check is in two shares: give each shard once"
                )));
            }
            out.positions.push(position);
            out.at_h.push(share.at_h[k]);
            if let (Some(out), Some(wide)) = (&mut out.at_twice_h, &share.at_twice_h) {
                out.push(wide[k]);
            }
            out.kinks.push(share.kinks[k]);
        }
        for s in &shares {
            out.stats.perturbed_losses += s.stats.perturbed_losses;
            out.stats.idle_losses += s.stats.idle_losses;
            out.stats.seconds += s.stats.seconds;
            out.stats.seconds_setup += s.stats.seconds_setup;
            out.stats.chunk = out.stats.chunk.max(s.stats.chunk);
        }
        Ok(out)
    }
}

/// Checks the analytic gradient of `spec` at `params` on the batch (x, labels).
pub fn check(
    ctx: &GpuContext,
    spec: &NetSpec,
    params: &[f64],
    x: &[f64],
    labels: &[u32],
    config: &GradcheckConfig,
) -> Result<GradcheckReport> {
    let subject = Subject {
        spec,
        params,
        x,
        labels,
        config,
    };
    check_on_adapters(std::slice::from_ref(ctx), &subject)
}

/// [`check`] with the perturbed losses spread over `contexts`, a thread an adapter, each taking
/// an interleaved share of the elements; the first adapter also computes the analytic gradient
/// and the report. The numerical gradients are a single adapter's bit for bit where the adapters
/// compute alike: each perturbed loss is an evaluation of its own, whatever else its chunk holds.
pub fn check_on_adapters(contexts: &[GpuContext], subject: &Subject) -> Result<GradcheckReport> {
    let (first, others) = split_adapters(contexts)?;
    let on_first = OnAdapter::new(first, subject)?;
    let analytic = on_first.analytic()?;
    let every: Vec<usize> = (0..on_first.element_count()).collect();
    let share = on_first.spread(others, &every, 1)?;
    on_first.report(analytic, vec![share])
}

/// Shard `shard` of a check's central differences, spread over `contexts` as
/// [`check_on_adapters`] spreads a whole check.
pub fn numeric_share(
    contexts: &[GpuContext],
    subject: &Subject,
    shard: Shard,
) -> Result<NumericShare> {
    let (first, others) = split_adapters(contexts)?;
    let on_first = OnAdapter::new(first, subject)?;
    let positions = shard.pick(&(0..on_first.element_count()).collect::<Vec<_>>());
    on_first.spread(others, &positions, shard.count())
}

/// The report of a check whose central differences were evaluated elsewhere, in `shares` that
/// together cover every element once ([`shard::merge_files`] reads them from shard files).
///
/// The analytic gradient is recomputed here rather than carried in the shards: it is one
/// forward and backward pass, against the thousands of perturbed losses the shards took, and
/// the subject (the net, its parameters and the batch) has to be here anyway for what only the
/// whole check can do (an f64 tensor that fails at h looked at again at h/2, the random
/// directions). That keeps the shard files to their own elements and every figure of the
/// report computed as a single run computes it.
pub fn merge(
    ctx: &GpuContext,
    subject: &Subject,
    shares: Vec<NumericShare>,
) -> Result<GradcheckReport> {
    let on_adapter = OnAdapter::new(ctx, subject)?;
    let analytic = on_adapter.analytic()?;
    on_adapter.report(analytic, shares)
}

fn split_adapters(contexts: &[GpuContext]) -> Result<(&GpuContext, &[GpuContext])> {
    contexts.split_first().ok_or_else(|| {
        Error::NoAdapter("no adapter to run the check on: see `wgrad devices`".into())
    })
}

/// The input of a layer whose input gradient is checked: `xL` for the input of layer L
/// (1-based), [N, IN].
struct CheckedInput {
    layer: usize,
    name: String,
    in_size: usize,
}

/// A check's net built on one adapter, for either half of a check: the central differences of
/// some of its elements, or the report from all of them.
struct OnAdapter<'a> {
    ctx: &'a GpuContext,
    subject: Subject<'a>,
    kernels: Kernels,
    model: Model,
    selected: Vec<TensorInfo>,
    inputs: Vec<CheckedInput>,
    tensors: Vec<CheckedTensor>,
    /// The arena indices of the checked parameters, the first positions of the element order.
    param_indices: Vec<usize>,
}

impl<'a> OnAdapter<'a> {
    fn new(ctx: &'a GpuContext, subject: &Subject<'a>) -> Result<Self> {
        let Subject {
            spec,
            params,
            labels,
            config,
            ..
        } = *subject;
        ctx.require(config.precision)?;
        crate::nn::model::check_fits(ctx, spec, labels.len(), config.precision)?;
        let (layers, layout) = spec.resolve()?;
        let (selected, inputs) = selected(&layers, &layout, &config.tensors)?;
        let tensors = element_order(&selected, &inputs, labels.len());
        // Backprop is log-softmax's exact gradient in a net that follows the book too (whose
        // backward drops its loss's 1e-7, a 1e-6 error alone): it is checked against that loss.
        let kernels = Kernels::with_loss(ctx, config.precision, CrossEntropy::LogSoftmax)?;
        let model = Model::new(ctx, spec, params, config.precision)?;
        Ok(OnAdapter {
            ctx,
            subject: *subject,
            kernels,
            model,
            selected: selected.into_iter().cloned().collect(),
            inputs,
            param_indices: param_indices(&tensors),
            tensors,
        })
    }

    fn element_count(&self) -> usize {
        self.tensors.last().map_or(0, |t| t.positions.end)
    }

    /// An engine at step `h` for an interleaved 1/`parts` of the elements ([`Chunking`]).
    fn engine_at(&self, h: f64, parts: usize) -> Result<PerturbedLossEngine<'_>> {
        let Subject {
            x, labels, config, ..
        } = self.subject;
        let strategy = config.strategy;
        let chunk = Chunking {
            size: config.chunk,
            parts,
        };
        let (ctx, kernels, model) = (self.ctx, &self.kernels, &self.model);
        PerturbedLossEngine::new(ctx, kernels, model, x, labels, strategy, h, chunk)
    }

    /// The central differences at `positions` (ascending, an interleaved 1/`parts` of the
    /// elements), on this adapter and `others`, a thread each, every adapter taking an
    /// interleaved part of them.
    fn spread(
        &self,
        others: &[GpuContext],
        positions: &[usize],
        parts: usize,
    ) -> Result<NumericShare> {
        let adapters = others.len() + 1;
        let parts = parts * adapters;
        if others.is_empty() {
            return self.numeric(positions, parts);
        }
        let part = |adapter: usize| {
            let shard = Shard::new(adapter + 1, adapters).expect("1 ≤ K ≤ N");
            shard.pick(positions)
        };
        let subject = self.subject;
        let shares = std::thread::scope(|scope| -> Result<Vec<NumericShare>> {
            let threads: Vec<_> = (others.iter().enumerate())
                .map(|(k, ctx)| {
                    let positions = part(k + 1);
                    scope.spawn(move || OnAdapter::new(ctx, &subject)?.numeric(&positions, parts))
                })
                .collect();
            let mut shares = vec![self.numeric(&part(0), parts)?];
            for thread in threads {
                let share = thread
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
                shares.push(share?);
            }
            Ok(shares)
        })?;
        NumericShare::combine(shares)
    }

    /// The central differences at `positions` (ascending, an interleaved 1/`parts` of the
    /// elements) on this adapter: the parameters' in one pass, then each input's.
    fn numeric(&self, positions: &[usize], parts: usize) -> Result<NumericShare> {
        let start = Instant::now();
        let engine = self.engine_at(self.subject.config.h, parts)?;
        let seconds_setup = start.elapsed().as_secs_f64();
        let tol = Tolerance::for_precision(self.subject.config.precision);
        let engine_twice_h = (tol.noise_factor > 0.0)
            .then(|| self.engine_at(2.0 * self.subject.config.h, parts))
            .transpose()?;
        let (params, inputs) = self.split(positions)?;
        let differences = |of: &dyn Fn(&PerturbedLossEngine) -> Result<NumericalGradient>| {
            let wide = engine_twice_h.as_ref().map(of).transpose()?;
            Ok::<_, Error>((of(&engine)?, wide))
        };
        let mut parts = vec![differences(&|e| e.gradient(&params))?];
        for (input, elements) in self.inputs.iter().zip(&inputs) {
            parts.push(differences(&|e| e.input_gradient(input.layer, elements))?);
        }
        base_unchanged(self.ctx, &self.model, self.subject.params)?;
        let mut share = NumericShare {
            positions: positions.to_vec(),
            at_h: Vec::with_capacity(positions.len()),
            at_twice_h: engine_twice_h.as_ref().map(|_| Vec::new()),
            kinks: Vec::with_capacity(positions.len()),
            stats: ShareStats {
                seconds_setup,
                chunk: engine.chunk,
                ..Default::default()
            },
        };
        for (at_h, wide) in parts {
            share.at_h.extend(&at_h.grad);
            share.kinks.extend(&at_h.kinks);
            share.stats.perturbed_losses += at_h.perturbed_losses;
            share.stats.idle_losses += at_h.idle_losses;
            if let (Some(wide), Some(out)) = (wide, &mut share.at_twice_h) {
                out.extend(&wide.grad);
                // A pair that straddles a kink at 2h measures no noise.
                let from = share.kinks.len() - wide.kinks.len();
                (share.kinks[from..].iter_mut().zip(&wide.kinks)).for_each(|(k, w)| *k |= w);
                share.stats.perturbed_losses += wide.perturbed_losses;
                share.stats.idle_losses += wide.idle_losses;
            }
        }
        share.stats.seconds = start.elapsed().as_secs_f64();
        Ok(share)
    }

    /// `positions` (ascending) as the arena indices of the parameters they name and, per
    /// checked input, the elements of it they name.
    fn split(&self, positions: &[usize]) -> Result<(Vec<usize>, Vec<Vec<usize>>)> {
        if positions.windows(2).any(|w| w[0] >= w[1]) {
            return Err(Error::InvalidArgument(
                "a share's positions must ascend, each once".into(),
            ));
        }
        let mut params = Vec::new();
        let mut inputs = vec![Vec::new(); self.inputs.len()];
        for &p in positions {
            if p < self.param_indices.len() {
                params.push(self.param_indices[p]);
                continue;
            }
            let t =
                (self.tensors.iter().position(|t| t.positions.contains(&p))).ok_or_else(|| {
                    Error::InvalidArgument(format!(
                        "element {p} is past the check's {}",
                        self.element_count()
                    ))
                })?;
            inputs[t - self.selected.len()].push(p - self.tensors[t].positions.start);
        }
        Ok((params, inputs))
    }

    /// The loss and the backprop gradients of the parameters and the checked inputs.
    fn analytic(&self) -> Result<Analytic> {
        let Subject {
            x, labels, config, ..
        } = self.subject;
        let start = Instant::now();
        let input_layers: Vec<usize> = self.inputs.iter().map(|i| i.layer).collect();
        let (ctx, kernels, model) = (self.ctx, &self.kernels, &self.model);
        let (loss, mut params, inputs) =
            analytic_gradients(ctx, kernels, model, x, labels, &input_layers)?;
        plant_fault(&mut params, &model.layout, config);
        Ok(Analytic {
            loss,
            params,
            inputs,
            seconds: start.elapsed().as_secs_f64(),
        })
    }

    /// The check's report from its analytic gradients and `shares` of its central differences,
    /// which together cover every element once.
    fn report(&self, analytic: Analytic, shares: Vec<NumericShare>) -> Result<GradcheckReport> {
        let Subject {
            spec,
            params,
            x,
            labels,
            config,
        } = self.subject;
        let (ctx, kernels, model) = (self.ctx, &self.kernels, &self.model);
        let Analytic {
            loss,
            params: analytic,
            inputs: analytic_inputs,
            seconds: seconds_analytic,
        } = analytic;
        let share = NumericShare::combine(shares)?;
        self.covered_by(&share)?;
        let start = Instant::now();
        let tol = Tolerance::for_precision(config.precision);
        let params_end = self.param_indices.len();
        let (mut numeric, numeric_twice_h, mut kinks) = scatter(
            model.layout.total,
            &self.param_indices,
            &share.at_h[..params_end],
            share.at_twice_h.as_ref().map(|w| &w[..params_end]),
            &share.kinks[..params_end],
        );
        let selected: Vec<&TensorInfo> = self.selected.iter().collect();
        let twice_h = numeric_twice_h.as_deref();
        let mut tensors: Vec<TensorCheck> = (selected.iter())
            .map(|t| check_of(t, &analytic, &numeric, twice_h, &kinks, &tol))
            .collect();
        let at_half_h = match config.precision {
            Precision::F64 => {
                // Whole tensors, the failing ones.
                let at_half_h = || self.engine_at(config.h / 2.0, 1);
                let (a, n, k) = (&analytic[..], &mut numeric[..], &mut kinks[..]);
                extrapolate(at_half_h, &selected, &mut tensors, a, n, k, &tol)?
            }
            Precision::F32 => None,
        };
        let seconds_extrapolation = start.elapsed().as_secs_f64();
        base_unchanged(ctx, model, params)?;
        let (input_checks, input_values) = self.check_inputs(&share, analytic_inputs, &tol);
        tensors.extend(input_checks);

        let directions = directional(
            ctx,
            kernels,
            model,
            spec,
            x,
            labels,
            &analytic,
            &self.param_indices,
            config,
        )?;
        let passed = tensors.iter().all(|t| t.passed) && directions.iter().all(|d| d.passed);
        let degenerate = degeneracy(spec, labels.len(), &selected, &analytic, &numeric);
        let half = at_half_h.as_ref();
        Ok(GradcheckReport {
            passed,
            precision: config.precision,
            strategy: config.strategy,
            h: config.h,
            batch: labels.len(),
            loss,
            seconds_numeric: share.stats.seconds + seconds_extrapolation,
            seconds_numeric_setup: share.stats.seconds_setup,
            seconds_analytic,
            perturbed_losses: share.stats.perturbed_losses + half.map_or(0, |g| g.perturbed_losses),
            idle_losses: share.stats.idle_losses + half.map_or(0, |g| g.idle_losses),
            chunk: share.stats.chunk,
            tolerance: tol,
            tensors,
            directions,
            degenerate,
            analytic,
            numeric,
            kinks,
            inputs: input_values,
        })
    }

    /// Fails unless `share` holds every element of the check, naming the first one it lacks.
    fn covered_by(&self, share: &NumericShare) -> Result<()> {
        let total = self.element_count();
        let missing = (share.positions.iter().enumerate())
            .find(|&(k, &p)| k != p)
            .map(|(k, _)| k)
            .or((share.positions.len() < total).then_some(share.positions.len()));
        if let Some(p) = missing.filter(|&p| p < total) {
            let t = (self.tensors.iter())
                .find(|t| t.positions.contains(&p))
                .expect("a position below the total is in a tensor");
            let at = unravel(p - t.positions.start, &t.shape);
            return Err(Error::InvalidArgument(format!(
                "the shares lack element {at:?} of {} (element {p} of the check's {total}): \
                 merge every shard of the check",
                t.name
            )));
        }
        if share.positions.len() > total {
            return Err(Error::InvalidArgument(format!(
                "the shares hold {} elements but the check has {total}: they belong to another \
                 check",
                share.positions.len()
            )));
        }
        Ok(())
    }

    /// The checks of the inputs (custom layers'), their analytic gradients `analytic` one per
    /// input, against their central differences in `share`.
    fn check_inputs(
        &self,
        share: &NumericShare,
        analytic: Vec<Vec<f64>>,
        tol: &Tolerance,
    ) -> (Vec<TensorCheck>, Vec<InputGradient>) {
        let tensors = &self.tensors[self.selected.len()..];
        (self.inputs.iter().zip(tensors).zip(analytic))
            .map(|((input, t), a)| {
                let r = t.positions.clone();
                let numeric = share.at_h[r.clone()].to_vec();
                let kinks = share.kinks[r.clone()].to_vec();
                let twice_h = share.at_twice_h.as_ref().map(|w| &w[r]);
                let check = tensor_check(&t.name, &t.shape, &a, &numeric, twice_h, &kinks, tol);
                let value = InputGradient {
                    layer: input.layer,
                    name: t.name.clone(),
                    shape: t.shape.clone(),
                    analytic: a,
                    numeric,
                    kinks,
                };
                (check, value)
            })
            .unzip()
    }
}

/// A check's backprop side.
struct Analytic {
    loss: f64,
    /// In the arena layout.
    params: Vec<f64>,
    /// One per checked input.
    inputs: Vec<Vec<f64>>,
    seconds: f64,
}

/// The central differences of the parameters `indices` (at h, at 2h, and whether a pair
/// straddled a kink at either step), placed at those indices of full-length vectors (NaN
/// elsewhere).
fn scatter(
    total: usize,
    indices: &[usize],
    at_h: &[f64],
    at_twice_h: Option<&[f64]>,
    pair_kinks: &[bool],
) -> (Vec<f64>, Option<Vec<f64>>, Vec<bool>) {
    let mut numeric = vec![f64::NAN; total];
    let mut numeric_twice_h = at_twice_h.map(|_| vec![f64::NAN; total]);
    let mut kinks = vec![false; total];
    for (k, &i) in indices.iter().enumerate() {
        numeric[i] = at_h[k];
        kinks[i] = pair_kinks[k];
        if let (Some(wide), Some(twice_h)) = (at_twice_h, &mut numeric_twice_h) {
            twice_h[i] = wide[k];
        }
    }
    (numeric, numeric_twice_h, kinks)
}

/// [`tensor_check`] of tensor `t` on its elements of the full-length gradients and kink flags.
fn check_of(
    t: &TensorInfo,
    analytic: &[f64],
    numeric: &[f64],
    numeric_twice_h: Option<&[f64]>,
    kinks: &[bool],
    tol: &Tolerance,
) -> TensorCheck {
    let r = t.offset..t.offset + t.numel;
    let (a, n, k) = (&analytic[r.clone()], &numeric[r.clone()], &kinks[r.clone()]);
    let twice_h = numeric_twice_h.map(|n2| &n2[r]);
    tensor_check(&t.name, &t.shape, a, n, twice_h, k, tol)
}

/// f64: each of `selected`'s tensors that failed at h looked at again, its numerical gradient
/// replaced by the Richardson extrapolation (4·n(h/2) − n(h))/3 from the engine `at_half_h`
/// builds, a pair that straddles a kink at h/2 kept out too, and its check redone there with its
/// figures at h kept ([`TensorCheck::failed_at_h`]). A central difference errs by h²·L'''/6
/// besides rounding; where the loss curves sharply on the scale of h (BatchNorm over the small
/// pre-activations of the book's 0.01 init, `affine12,bn,relu,affine9,bn,relu,affine10
/// --crop 8`: W1 off by 2.2e-6 at h, 5.5e-7 at h/2) that alone fails a correct backward pass.
/// The extrapolation cancels the h² term (8.5e-11 there) and leaves a wrong backward pass as
/// wrong as before. Returns the central differences at h/2, or None when every tensor passed.
fn extrapolate<'e>(
    at_half_h: impl FnOnce() -> Result<PerturbedLossEngine<'e>>,
    selected: &[&TensorInfo],
    tensors: &mut [TensorCheck],
    analytic: &[f64],
    numeric: &mut [f64],
    kinks: &mut [bool],
    tol: &Tolerance,
) -> Result<Option<NumericalGradient>> {
    let failed: Vec<usize> = (0..selected.len())
        .filter(|&k| !tensors[k].passed)
        .collect();
    if failed.is_empty() {
        return Ok(None);
    }
    let indices: Vec<usize> = (failed.iter())
        .flat_map(|&k| selected[k].offset..selected[k].offset + selected[k].numel)
        .collect();
    let half = at_half_h()?.gradient(&indices)?;
    for (q, &i) in indices.iter().enumerate() {
        numeric[i] = (4.0 * half.grad[q] - numeric[i]) / 3.0;
        kinks[i] |= half.kinks[q];
    }
    for k in failed {
        let again = check_of(selected[k], analytic, numeric, None, kinks, tol);
        let at_h = &tensors[k];
        tensors[k] = TensorCheck {
            failed_at_h: Some(AtStepH {
                norm_rel_err: at_h.norm_rel_err,
                max_rel_err: at_h.max_rel_err,
                elements_failed: at_h.elements_failed,
            }),
            ..again
        };
    }
    Ok(Some(half))
}

/// The test hook [`GradcheckConfig::analytic_fault`]: one tensor's analytic gradient scaled.
fn plant_fault(analytic: &mut [f64], layout: &ParamLayout, config: &GradcheckConfig) {
    let Some((name, factor)) = &config.analytic_fault else {
        return;
    };
    if let Some(t) = layout.get(name) {
        (analytic[t.offset..t.offset + t.numel].iter_mut()).for_each(|g| *g *= factor);
    }
}

/// What makes a check vacuous: BatchNorm over a batch of one (each feature's batch variance is
/// 0, so it outputs β whatever its input, and every gradient below it is exactly 0, as in the
/// book's ch06 check), and any tensor whose analytic and numerical gradients are both
/// identically 0, which agree without showing anything.
fn degeneracy(
    spec: &NetSpec,
    batch: usize,
    selected: &[&TensorInfo],
    analytic: &[f64],
    numeric: &[f64],
) -> Option<String> {
    let mut why = Vec::new();
    // Each BatchNorm channel normalises over N·S values (S = H·W after a convolution).
    let (layers, _) = spec.resolve().expect("a checked net");
    let batchnorm_over_one =
        (layers.iter()).any(|l| matches!(l, Layer::BatchNorm(bn) if bn.s * batch == 1));
    if batchnorm_over_one {
        why.push(
            "BatchNorm over a batch of 1 has zero batch variance, so the gradients below it are exactly 0: use --batch 2 or more".to_string(),
        );
    }
    let zero: Vec<&str> = (selected.iter())
        .filter(|t| {
            let r = t.offset..t.offset + t.numel;
            analytic[r.clone()].iter().all(|&a| a == 0.0) && numeric[r].iter().all(|&n| n == 0.0)
        })
        .map(|t| t.name.as_str())
        .collect();
    if !zero.is_empty() {
        why.push(format!(
            "{} {} analytic and numerical gradients that are both identically 0, which agree without checking anything",
            zero.join(", "),
            if zero.len() == 1 { "has" } else { "have" }
        ));
    }
    (!why.is_empty()).then(|| why.join("; "))
}

/// No perturbed evaluation may write what another reads: the shared base is as it was.
fn base_unchanged(ctx: &GpuContext, model: &Model, params: &[f64]) -> Result<()> {
    if bits(&model.read_params(ctx)?) != bits(&cast_all(params, model.precision)) {
        return Err(Error::Gpu(
            "the base parameters changed during the numerical gradient".into(),
        ));
    }
    Ok(())
}

fn bits(values: &[f64]) -> Vec<u64> {
    values.iter().map(|v| v.to_bits()).collect()
}

/// `values` as the GPU holds them at `precision`.
fn cast_all(values: &[f64], precision: Precision) -> Vec<f64> {
    values.iter().map(|&v| cast(v, precision)).collect()
}

fn cast(v: f64, precision: Precision) -> f64 {
    match precision {
        Precision::F32 => v as f32 as f64,
        Precision::F64 => v,
    }
}

/// Figures for one tensor; elements on kinks are kept out of every figure but the count.
/// `n_twice_h`, the same differences at 2h, gives the noise floor when `tol.noise_factor` > 0.
pub fn tensor_check(
    name: &str,
    shape: &[usize],
    a: &[f64],
    n: &[f64],
    n_twice_h: Option<&[f64]>,
    kinks: &[bool],
    tol: &Tolerance,
) -> TensorCheck {
    let mut sum_abs = 0.0;
    let mut diff2 = 0.0;
    let mut a2 = 0.0;
    let mut max_rel = 0.0;
    let mut max_at = 0;
    let mut failed = 0;
    let mut counted = 0;
    for i in 0..a.len() {
        if kinks[i] {
            continue;
        }
        counted += 1;
        let d = (a[i] - n[i]).abs();
        sum_abs += d;
        diff2 += d * d;
        a2 += a[i] * a[i];
        let scale = a[i].abs().max(n[i].abs());
        let rel = if scale > 0.0 { d / scale } else { 0.0 };
        if rel > max_rel || rel.is_nan() {
            max_rel = rel;
            max_at = i;
        }
        // NaN counts as a failure.
        if d.is_nan() || d > tol.atol + tol.rtol * scale {
            failed += 1;
        }
    }
    let norm_rel = if a2 > 0.0 {
        (diff2 / a2).sqrt()
    } else {
        diff2.sqrt()
    };
    let noise_rms = n_twice_h.map(|wide| noise_rms(n, wide, kinks));
    let floor = tol.norm_atol + tol.noise_factor * noise_rms.unwrap_or(0.0);
    let norm_ok = diff2.sqrt() <= tol.norm_tol * a2.sqrt() + floor * (counted as f64).sqrt();
    let passed = norm_ok && (!tol.per_element || failed == 0);
    TensorCheck {
        name: name.to_string(),
        numel: a.len(),
        mean_abs_diff: if counted > 0 {
            sum_abs / counted as f64
        } else {
            0.0
        },
        max_rel_err: max_rel,
        max_rel_err_at: unravel(max_at, shape),
        norm_rel_err: norm_rel,
        noise_rms,
        kink_crossings: kinks.iter().filter(|&&k| k).count(),
        elements_failed: failed,
        passed,
        failed_at_h: None,
    }
}

/// Rounding noise per element of central differences at h, from the same differences at 2h:
/// the noise scales as 1/h, so n(h) − n(2h) carries σ² + σ²/4 of variance, while the
/// derivative cancels (up to the truncation terms, which belong in the floor too).
fn noise_rms(n: &[f64], n_twice_h: &[f64], kinks: &[bool]) -> f64 {
    let (sum2, counted) = n
        .iter()
        .zip(n_twice_h)
        .zip(kinks)
        .filter(|(_, &kink)| !kink)
        .fold((0.0, 0usize), |(s, c), ((a, b), _)| {
            (s + (a - b) * (a - b), c + 1)
        });
    if counted == 0 {
        0.0
    } else {
        (sum2 / (1.25 * counted as f64)).sqrt()
    }
}

/// Central differences along random unit directions over the checked parameters, against the
/// analytic directional derivative g·v (PyTorch's fast gradcheck, JAX's check_grads). Each side
/// is evaluated on its own materialised copy, in a second model: the checked model is not
/// touched.
#[allow(clippy::too_many_arguments)]
fn directional(
    ctx: &GpuContext,
    kernels: &Kernels,
    model: &Model,
    spec: &NetSpec,
    x: &[f64],
    labels: &[u32],
    analytic: &[f64],
    indices: &[usize],
    config: &GradcheckConfig,
) -> Result<Vec<DirectionCheck>> {
    use rand::SeedableRng;
    if config.directions == 0 {
        return Ok(Vec::new());
    }
    let base = model.read_params(ctx)?;
    let probe = Model::new(ctx, spec, &base, config.precision)?;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(config.seed ^ 0xd1ec);
    let tol = match config.precision {
        Precision::F64 => 1e-5,
        Precision::F32 => 2e-3,
    };
    let h = config.h;
    let mut out = Vec::new();
    for _ in 0..config.directions {
        let mut v = vec![0.0; base.len()];
        for &i in indices {
            v[i] = crate::nn::spec::standard_normal(&mut rng);
        }
        let norm = v.iter().map(|a| a * a).sum::<f64>().sqrt();
        v.iter_mut().for_each(|a| *a /= norm);
        let side = |sign: f64| -> Result<f64> {
            let p: Vec<f64> = base.iter().zip(&v).map(|(b, d)| b + sign * h * d).collect();
            probe.write_params(ctx, &p);
            Ok(analytic_gradient(ctx, kernels, &probe, x, labels)?.0)
        };
        let numeric = (side(1.0)? - side(-1.0)?) / (2.0 * h);
        let exact: f64 = analytic.iter().zip(&v).map(|(a, d)| a * d).sum();
        let rel_err =
            (exact - numeric).abs() / exact.abs().max(numeric.abs()).max(f64::MIN_POSITIVE);
        let passed = (exact - numeric).abs() <= tol + tol * exact.abs();
        out.push(DirectionCheck {
            analytic: exact,
            numeric,
            rel_err,
            passed,
        });
    }
    Ok(out)
}

/// Writes both gradients of a check as safetensors: `analytic.W1`, `numeric.W1`, … for the checked
/// tensors, then `analytic.x2`, `numeric.x2` for a custom layer's input; metadata `precision`,
/// `strategy` and `h`.
pub fn save_grads(path: &std::path::Path, spec: &NetSpec, r: &GradcheckReport) -> Result<()> {
    use crate::checkpoint::{self, TensorData};
    let layout = spec.layout();
    // (name, shape, analytic, numeric): the checked parameter tensors, then the inputs.
    let params = (layout.tensors.iter())
        .filter(|t| r.tensors.iter().any(|c| c.name == t.name))
        .map(|t| {
            let range = t.offset..t.offset + t.numel;
            let (a, n) = (&r.analytic[range.clone()], &r.numeric[range]);
            (&t.name, &t.shape, a, n)
        });
    let inputs = (r.inputs.iter()).map(|i| (&i.name, &i.shape, &i.analytic[..], &i.numeric[..]));
    let mut tensors = Vec::new();
    for (name, shape, analytic, numeric) in params.chain(inputs) {
        for (prefix, values) in [("analytic", analytic), ("numeric", numeric)] {
            let data = match r.precision {
                Precision::F64 => TensorData::F64(values.to_vec()),
                Precision::F32 => TensorData::F32(values.iter().map(|&a| a as f32).collect()),
            };
            tensors.push((format!("{prefix}.{name}"), shape.clone(), data));
        }
    }
    let mut meta = std::collections::BTreeMap::new();
    meta.insert("precision".into(), r.precision.to_string());
    meta.insert("strategy".into(), r.strategy.to_string());
    meta.insert("h".into(), format!("{:e}", r.h));
    checkpoint::save_tensors(path, &tensors, &meta)
}

/// The first `n` training images and labels, as the book's gradient check takes them.
pub fn first_batch(data: &Dataset, n: usize) -> Result<(Vec<f64>, Vec<u32>)> {
    let max = data.len().min(crate::gpu::limits::MAX_ROWS);
    if n == 0 || n > max {
        return Err(Error::InvalidArgument(format!(
            "batch must be between 1 and {max} (the training set's size, at most {}), got {n} (--batch)",
            crate::gpu::limits::MAX_ROWS
        )));
    }
    Ok((
        data.images_f64(0..n),
        data.labels[..n].iter().map(|&l| u32::from(l)).collect(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A smooth-looking f64 gradient of `numel` elements of size about 1, and a copy of it.
    fn pair(numel: usize) -> (Vec<f64>, Vec<f64>) {
        let a: Vec<f64> = (0..numel).map(|i| 1.0 + (i % 7) as f64 * 0.1).collect();
        (a.clone(), a)
    }

    fn verdict(a: &[f64], n: &[f64], kinks: &[bool]) -> TensorCheck {
        let tol = Tolerance::for_precision(Precision::F64);
        tensor_check("W1", &[a.len()], a, n, None, kinks, &tol)
    }

    #[test]
    fn one_element_off_fails_even_when_the_norm_passes() {
        // 40,000 elements, one off by 1e-4 of itself: norm-wise that is 5e-7 (under norm_tol
        // 1e-6), per element 10× over rtol 1e-5. Both criteria must hold, so it fails.
        let (a, mut n) = pair(40_000);
        n[123] *= 1.0 + 1e-4;
        let none = vec![false; a.len()];
        let t = verdict(&a, &n, &none);
        assert!(t.norm_rel_err < 1e-6, "{t:?}");
        assert_eq!(t.elements_failed, 1, "{t:?}");
        assert!(!t.passed, "{t:?}");
        assert_eq!(t.max_rel_err_at, vec![123]);
        assert!((t.max_rel_err - 1e-4 / (1.0 + 1e-4)).abs() < 1e-12, "{t:?}");
        // Off by 1e-6 of itself it is within rtol: a pass. The bound scales with the element, so
        // a large one may be off by more in absolute terms (1e-4 here, against atol 1e-7).
        let (mut a, _) = pair(40_000);
        a[123] = 100.0;
        let mut n = a.clone();
        n[123] *= 1.0 + 1e-6;
        let t = verdict(&a, &n, &none);
        assert!(t.passed, "{t:?}");
    }

    #[test]
    fn kink_elements_are_left_out_of_the_verdict_and_counted() {
        let (a, mut n) = pair(50);
        n[7] = -3.0;
        n[20] = 0.0;
        let mut kinks = vec![false; a.len()];
        assert!(!verdict(&a, &n, &kinks).passed);
        kinks[7] = true;
        kinks[20] = true;
        let t = verdict(&a, &n, &kinks);
        assert!(t.passed, "{t:?}");
        assert_eq!(t.kink_crossings, 2);
        assert_eq!(t.norm_rel_err, 0.0);
        // The book's mean |a − n| is over the 48 elements that count.
        n[3] += 0.5;
        let t = verdict(&a, &n, &kinks);
        assert!((t.mean_abs_diff - 0.5 / 48.0).abs() < 1e-15, "{t:?}");
    }

    #[test]
    fn f32_floor_follows_the_measured_noise() {
        // The same 1% error passes when the differences at h and 2h disagree by much more
        // (noise too large to see it) and fails when they agree (noise small).
        let tol = Tolerance::for_precision(Precision::F32);
        let (a, _) = pair(1_000);
        let n: Vec<f64> = a.iter().map(|v| v * 1.01).collect();
        let none = vec![false; a.len()];
        let quiet: Vec<f64> = n.iter().map(|v| v + 1e-6).collect();
        let noisy: Vec<f64> = n
            .iter()
            .enumerate()
            .map(|(i, v)| v + if i % 2 == 0 { 0.05 } else { -0.05 })
            .collect();
        let check = |wide: &[f64]| tensor_check("W1", &[1_000], &a, &n, Some(wide), &none, &tol);
        let t = check(&quiet);
        assert!(!t.passed, "{t:?}");
        assert!(
            (t.noise_rms.unwrap() - 1e-6 / 1.25f64.sqrt()).abs() < 1e-9,
            "{t:?}"
        );
        assert!(check(&noisy).passed);
    }
}
