//! `wgrad bench`: analytic against numerical gradients, each strategy and precision.

use std::process::ExitCode;

use clap::{Args, Subcommand};

use wgrad::gpu::Precision;
use wgrad::{bench, gradcheck, report, Result};

use super::bench_train::BenchTrainArgs;
use super::net::{check_params, cropped, NetArgs, CHECK_NET};
use super::Given;

/// The examples under `wgrad bench --help`.
pub const EXAMPLES: &str = "Examples:
  wgrad bench --hidden 50 --batch 100            # each strategy and precision
  wgrad bench --model simple-conv --precision f32 --variants incremental --json
  wgrad bench train --hidden 50 --optimizer sgd  # training steps/s and samples/s instead";

#[derive(Subcommand)]
pub enum BenchCommand {
    /// Time training steps of any net `wgrad train` trains (its flags): steps/s, samples/s,
    /// dispatches and submits per step.
    #[command(after_help = super::bench_train::EXAMPLES)]
    Train(Box<BenchTrainArgs>),
}

#[derive(Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub command: Option<BenchCommand>,
    #[command(flatten)]
    pub net: NetArgs,
    /// Use the central N×N window of each image.
    #[arg(long)]
    pub crop: Option<usize>,
    /// Batch: the first N training images.
    #[arg(long, default_value_t = 100)]
    pub batch: usize,
    /// Precisions to time, comma-separated [default: f64 (where the adapter has it) and f32].
    #[arg(long, value_delimiter = ',')]
    pub precision: Vec<String>,
    /// Variants: incremental, full, sequential (the book's loop: one pair per submit).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "incremental,full,sequential"
    )]
    pub variants: Vec<String>,
    /// Variants predicted to exceed this many seconds are timed on a prefix and extrapolated.
    #[arg(long, default_value_t = 20.0)]
    pub budget: f64,
    /// Best of this many runs.
    #[arg(long, default_value_t = 3)]
    pub repeats: usize,
    /// Print one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
}

pub fn run_bench(args: BenchArgs, given: &Given) -> Result<ExitCode> {
    for v in &args.variants {
        if !["incremental", "full", "sequential"].contains(&v.as_str()) {
            return Err(wgrad::Error::InvalidArgument(format!(
                "unknown variant '{v}': use incremental, full or sequential"
            )));
        }
    }
    let mnist = cropped(args.net.load_data()?, args.crop)?;
    let spec = args.net.spec(&mnist.train, &CHECK_NET, given)?;
    let (x, labels) = gradcheck::first_batch(&mnist.train, args.batch)?;
    let ctx = args.net.context()?;
    let precisions: Vec<Precision> = if args.precision.is_empty() {
        [Precision::F64, Precision::F32]
            .into_iter()
            .filter(|p| ctx.supports(*p))
            .collect()
    } else {
        args.precision
            .iter()
            .map(|p| p.parse())
            .collect::<Result<_>>()?
    };
    let params = check_params(&args.net, &ctx, &spec, &mnist, 0)?;
    let config = bench::BenchConfig {
        precisions,
        variants: args.variants.clone(),
        budget_seconds: args.budget,
        repeats: args.repeats,
    };
    let report = bench::run(&ctx, &spec, &params, &x, &labels, &config)?;
    if args.json {
        let value = report::with_adapter(&report, &ctx);
        println!("{value}");
        return Ok(ExitCode::SUCCESS);
    }
    print!(
        "{}",
        report::bench_text(&report, &ctx.describe(), &config.precisions)
    );
    Ok(ExitCode::SUCCESS)
}
