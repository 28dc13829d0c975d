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
