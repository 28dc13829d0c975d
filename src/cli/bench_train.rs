//! `wgrad bench train`: training throughput of any net `wgrad train` trains, with its flags.

use std::process::ExitCode;

use clap::Args;

use wgrad::{bench, report, Result};

use super::train::RecipeArgs;
use super::Given;

/// The examples under `wgrad bench train --help`.
pub const EXAMPLES: &str = "Examples:
  wgrad bench train                                # the bare `wgrad train` net, 300 steps
  wgrad bench train --hidden 50 --init 0.01 --optimizer sgd --lr 0.1 --json   # TwoLayerNet
  wgrad bench train --model simple-conv --steps 100 --steps-per-submit 10
  wgrad bench train --hidden 1000 --batch-size 1000 --steps 20 --profile   # matmul GFLOP/s";

#[derive(Args)]
pub struct BenchTrainArgs {
    #[command(flatten)]
    pub recipe: RecipeArgs,
    /// Training steps to time, after one untimed epoch of warm-up (80 steps of batch 100 on the
    /// bundled set). The trainer's own clock: evaluation between epochs is not counted.
    #[arg(long, default_value_t = 300)]
    pub steps: usize,
    /// Then time each dispatch of the step alone: its seconds, the matmuls' GFLOP/s, and what
    /// a dispatch costs at least.
    #[arg(long)]
    pub profile: bool,
    /// Print one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
}

pub fn run_bench_train(args: BenchTrainArgs, given: &Given) -> Result<ExitCode> {
    // Every argument is checked before the data is read or the GPU is touched.
    if args.steps == 0 {
        return Err(wgrad::Error::InvalidArgument(
            "--steps must be at least 1: the training steps to time (e.g. --steps 300)".into(),
        ));
    }
    let (config, mnist) = args.recipe.config(1, given)?;
    config.validate(&mnist.train)?;
    let ctx = args.recipe.net.context()?;
    let steps_per_epoch = config.split(&mnist.train).0.len() / config.batch_size;
    eprintln!(
        "wgrad: warm-up epoch of {steps_per_epoch} steps, then {} timed steps",
        args.steps
    );
    let figures = bench::train(&ctx, &mnist, &config, args.steps, args.profile)?;
    let commit = env!("WGRAD_COMMIT");
    if args.json {
        let mut value = report::with_adapter(&figures, &ctx);
        value["adapter"]["driver_info"] = serde_json::json!(ctx.info.driver_info);
        value["commit"] = serde_json::json!(commit);
        value["version"] = serde_json::json!(super::VERSION);
        println!("{value}");
        return Ok(ExitCode::SUCCESS);
    }
    let adapter = format!("{}, {}", ctx.describe(), ctx.info.driver_info);
    print!("{}", report::train_bench_text(&figures, &adapter, commit));
    Ok(ExitCode::SUCCESS)
}
