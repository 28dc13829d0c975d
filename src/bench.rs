//! `wgrad bench`: how long the analytic gradient and the numerical gradient (each strategy,
//! each precision, and the book's one-pair-at-a-time algorithm) take for one net and batch.
//! Variants that would run for minutes are timed on a prefix and extrapolated, and say so.

use std::time::Instant;

use serde::Serialize;

use crate::error::Result;
use crate::gpu::{GpuContext, Precision};
use crate::nn::{Kernels, Model, NetSpec};
use crate::numgrad::{analytic_gradient, default_h, PerturbedLossEngine, Strategy};

#[derive(Clone, Debug)]
pub struct BenchConfig {
    pub precisions: Vec<Precision>,
    /// Variants: "incremental", "full", "sequential".
    pub variants: Vec<String>,
    /// A variant predicted to take longer than this is timed on a prefix and extrapolated.
    pub budget_seconds: f64,
    pub repeats: usize,
}

#[derive(Clone, Debug, Serialize)]
pub struct NumericTiming {
    pub strategy: String,
    pub precision: Precision,
    pub seconds: f64,
    pub perturbed_losses: usize,
    pub perturbed_losses_per_second: f64,
    pub extrapolated: bool,
    /// Perturbed losses actually evaluated for the figure.
    pub measured_losses: usize,
    pub chunk: usize,
}

#[derive(Clone, Debug, Serialize)]
pub struct BenchReport {
    pub batch: usize,
    pub parameters: usize,
    /// Analytic gradient in the first precision (best of `repeats`).
    pub analytic_seconds: f64,
    pub analytic: Vec<(Precision, f64)>,
    pub numeric: Vec<NumericTiming>,
}

fn best_of<T>(repeats: usize, mut f: impl FnMut() -> Result<T>) -> Result<(f64, T)> {
    let mut best = f64::INFINITY;
    let mut last = None;
    for _ in 0..repeats.max(1) {
        let start = Instant::now();
        last = Some(f()?);
        best = best.min(start.elapsed().as_secs_f64());
    }
    Ok((best, last.expect("ran at least once")))
}

pub fn run(
    ctx: &GpuContext,
    spec: &NetSpec,
    params: &[f64],
    x: &[f64],
    labels: &[u32],
    config: &BenchConfig,
) -> Result<BenchReport> {
    let numel = spec.layout().total;
    let indices: Vec<usize> = (0..numel).collect();
    let mut analytic = Vec::new();
    let mut numeric = Vec::new();
    for &precision in &config.precisions {
        ctx.require(precision)?;
        let kernels = Kernels::with_loss(ctx, precision, spec.conventions.cross_entropy())?;
        let model = Model::new(ctx, spec, params, precision)?;
        analytic_gradient(ctx, &kernels, &model, x, labels)?; // warm-up: pipelines, caches
        let (seconds, _) = best_of(config.repeats, || {
            analytic_gradient(ctx, &kernels, &model, x, labels)
        })?;
        analytic.push((precision, seconds));
        for variant in &config.variants {
            let (strategy, chunk) = match variant.as_str() {
                "incremental" => (Strategy::Incremental, None),
                "full" => (Strategy::Full, None),
                // The book's loop on the GPU: one ± pair per submit, read back each time.
                _ => (Strategy::Full, Some(2)),
            };
            let h = default_h(precision);
            let start = Instant::now();
            let engine =
                PerturbedLossEngine::new(ctx, &kernels, &model, x, labels, strategy, h, chunk)?;
            let setup = start.elapsed().as_secs_f64();
            // Probe one chunk to predict the whole; extrapolate from a prefix past the budget.
            let pairs_per_chunk = (engine.chunk / 2).max(1);
            let probe = &indices[..pairs_per_chunk.min(numel)];
            let probe_time = engine.gradient(probe)?.seconds;
            let predicted = probe_time * numel as f64 / probe.len() as f64;
            let timing = if predicted <= config.budget_seconds {
                let (seconds, g) = best_of(
                    if predicted * 3.0 < config.budget_seconds {
                        config.repeats
                    } else {
                        1
                    },
                    || engine.gradient(&indices),
                )?;
                NumericTiming {
                    strategy: variant.clone(),
                    precision,
                    seconds: seconds + setup,
                    perturbed_losses: g.perturbed_losses,
                    perturbed_losses_per_second: g.perturbed_losses as f64 / (seconds + setup),
                    extrapolated: false,
                    measured_losses: g.perturbed_losses,
                    chunk: engine.chunk,
                }
            } else {
                let take = ((config.budget_seconds / 4.0 / probe_time).ceil() as usize
                    * probe.len())
                .clamp(probe.len(), numel);
                let g = engine.gradient(&indices[..take])?;
                let seconds = g.seconds * numel as f64 / take as f64 + setup;
                NumericTiming {
                    strategy: variant.clone(),
                    precision,
                    seconds,
                    perturbed_losses: 2 * numel,
                    perturbed_losses_per_second: 2.0 * numel as f64 / seconds,
                    extrapolated: true,
                    measured_losses: g.perturbed_losses,
                    chunk: engine.chunk,
                }
            };
            numeric.push(timing);
        }
    }
    Ok(BenchReport {
        batch: labels.len(),
        parameters: numel,
        analytic_seconds: analytic.first().map(|a| a.1).unwrap_or(0.0),
        analytic,
        numeric,
    })
}

/// `wgrad bench train`: a training run's throughput over its timed steps, the trainer's own
/// measure (its steps' seconds, evaluation excluded), after an untimed warm-up epoch.
#[derive(Clone, Debug, Serialize)]
pub struct TrainBench {
    /// The net's layers, as `--layers` writes them.
    pub net: String,
    pub parameters: usize,
    pub batch: usize,
    pub precision: Precision,
    /// The optimizer's name (sgd, momentum, adam, …) and its learning rate.
    pub optimizer: String,
    pub lr: f64,
    /// Steps of the untimed warm-up: the run's first epoch.
    pub warmup_steps: u64,
    /// Timed steps.
    pub steps: u64,
    /// The timed steps' seconds.
    pub seconds: f64,
    pub steps_per_second: f64,
    pub samples_per_second: f64,
    /// Kernel launches in one recorded training step.
    pub dispatches_per_step: usize,
    /// Steps recorded into one submit (the last submit of an epoch may hold fewer).
    pub steps_per_submit: usize,
    /// Submits of the timed steps, per step.
    pub submits_per_step: f64,
    /// `--profile`: each dispatch of the step timed alone, in step order.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub profile: Option<StepProfile>,
}

/// A training step's dispatches, each timed alone: one submit of many repeats of it (so the
/// figure includes its share of a pass's barriers but no submit), after the run.
#[derive(Clone, Debug, Serialize)]
pub struct StepProfile {
    pub dispatches: Vec<DispatchTiming>,
    /// The fastest dispatch alone: an upper bound on what launching one costs here.
    pub dispatch_seconds: f64,
    /// The best rate of the step's matmuls.
    pub matmul_gflops: Option<f64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct DispatchTiming {
    /// shader::entry/precision
    pub kernel: String,
    pub workgroups: [u32; 3],
    pub seconds: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gflops: Option<f64>,
}

/// Times each of `step`'s dispatches alone, repeated in one submit for about a tenth of a second.
pub fn profile_step(ctx: &GpuContext, step: &[crate::gpu::Dispatch]) -> Result<StepProfile> {
    use crate::gpu::kernel;
    let time = |d: &crate::gpu::Dispatch, repeats: usize| -> Result<f64> {
        let start = Instant::now();
        kernel::submit(ctx, std::slice::from_ref(d), repeats);
        ctx.wait()?;
        Ok(start.elapsed().as_secs_f64() / repeats as f64)
    };
    let mut dispatches = Vec::new();
    for d in step.iter().filter(|d| !d.workgroups().contains(&0)) {
        time(d, 1)?;
        let guess = time(d, 10)?;
        let repeats = ((0.1 / guess) as usize).clamp(10, 5000);
        let seconds = time(d, repeats)?;
        dispatches.push(DispatchTiming {
            kernel: d.label.clone(),
            workgroups: d.workgroups(),
            seconds,
            gflops: d.flops.map(|f| f as f64 / seconds / 1e9),
        });
    }
    let dispatch_seconds = (dispatches.iter())
        .map(|d| d.seconds)
        .fold(f64::INFINITY, f64::min);
    let matmul_gflops = (dispatches.iter())
        .filter_map(|d| d.gflops)
        .reduce(f64::max);
    Ok(StepProfile {
        dispatches,
        dispatch_seconds,
        matmul_gflops,
    })
}

/// Trains `config`'s net for one epoch of warm-up and then `steps` timed steps (the last
/// epoch cut short by `max_steps`), and reports the timed steps' throughput from the run's
/// per-epoch figures. `config.epochs` and `config.max_steps` are set here.
pub fn train(
    ctx: &GpuContext,
    data: &crate::data::Mnist,
    config: &crate::train::TrainConfig,
    steps: usize,
    profile: bool,
) -> Result<TrainBench> {
    if steps == 0 {
        return Err(crate::Error::InvalidArgument(
            "--steps must be at least 1: the training steps to time (e.g. --steps 300)".into(),
        ));
    }
    config.validate(&data.train)?;
    let steps_per_epoch = config.split(&data.train).0.len() / config.batch_size;
    let mut config = config.clone();
    config.epochs = 1 + steps.div_ceil(steps_per_epoch);
    config.max_steps = Some(steps_per_epoch + steps);
    let mut profiled = None;
    let mut look = |step: &[crate::gpu::Dispatch]| -> Result<()> {
        profiled = Some(profile_step(ctx, step)?);
        Ok(())
    };
    let hooks = crate::train::Hooks {
        after_run: profile.then_some(&mut look as crate::train::AfterRun),
        ..Default::default()
    };
    let report = crate::train::train_with(ctx, data, &config, hooks)?;
    let batch = config.batch_size as f64;
    let (mut seconds, mut submits) = (0.0, 0);
    for pair in report.history.windows(2) {
        let epoch_steps = (pair[1].step - pair[0].step) as usize;
        seconds += epoch_steps as f64 * batch / pair[1].samples_per_second;
        submits += epoch_steps.div_ceil(config.steps_per_submit);
    }
    let timed = report.steps - steps_per_epoch as u64;
    let layers: Vec<String> = config.spec.layers.iter().map(|l| l.to_string()).collect();
    Ok(TrainBench {
        net: layers.join(","),
        parameters: config.spec.layout().total,
        batch: config.batch_size,
        precision: config.precision,
        optimizer: config.optimizer.name().to_string(),
        lr: config.optimizer.lr(),
        warmup_steps: steps_per_epoch as u64,
        steps: timed,
        seconds,
        steps_per_second: timed as f64 / seconds,
        samples_per_second: timed as f64 * batch / seconds,
        dispatches_per_step: report.dispatches_per_step,
        steps_per_submit: config.steps_per_submit,
        submits_per_step: submits as f64 / timed as f64,
        profile: profiled,
    })
}
