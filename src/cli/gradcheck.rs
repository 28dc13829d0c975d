//! `wgrad gradcheck`: backprop against numerical gradients, per tensor; a check split into
//! shards (`--shard`, `--merge`) or over every adapter (`--adapter all`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Args;

use wgrad::gpu::{GpuContext, Precision};
use wgrad::gradcheck::shard::{self, Shard};
use wgrad::gradcheck::{GradcheckReport, Subject};
use wgrad::nn::NetSpec;
use wgrad::numgrad::{self, Strategy};
use wgrad::{gradcheck, plot, report, Error, Result};

use super::net::{check_params, cropped, NetArgs, CHECK_NET};
use super::Given;

/// The examples under `wgrad gradcheck --help`.
pub const EXAMPLES: &str = "Examples:
  wgrad gradcheck                               # TwoLayerNet 784-50-10, batch 3, f64
  wgrad gradcheck --model simple-conv --after-steps 50
  wgrad gradcheck --layers affine50,wgsl:my_layer.wgsl,affine10   # your own WGSL layer
  wgrad gradcheck --params W1,b2 --save-grads grads.safetensors --json
  wgrad gradcheck --batch 100 --shard 2/3 --save-grads shard-2.safetensors   # job 2 of 3
  wgrad gradcheck --merge shard-*.safetensors   # the 3 jobs' report, as one run's
  wgrad gradcheck --batch 100 --adapter all     # a thread per adapter";

#[derive(Args)]
pub struct GradcheckArgs {
    #[command(flatten)]
    pub net: NetArgs,
    /// Check on the central N×N window of each image (a reduced input for convnets, as the
    /// book's ch07 check uses 10×10).
    #[arg(long)]
    pub crop: Option<usize>,
    /// Check on the first N training images (the book uses 3).
    #[arg(long, default_value_t = 3)]
    pub batch: usize,
    /// f64 (default where the adapter has SHADER_F64) or f32.
    #[arg(long)]
    pub precision: Option<String>,
    /// Central-difference step [default: 1e-5 in f64, 5e-3 in f32, near ∛ε].
    #[arg(long, allow_hyphen_values = true)]
    pub h: Option<f64>,
    /// incremental (default) or full.
    #[arg(long, default_value = "incremental")]
    pub strategy: String,
    /// Only these tensors, comma-separated (e.g. W1,b2).
    #[arg(long, value_delimiter = ',')]
    pub params: Vec<String>,
    /// Train this many steps (momentum SGD, lr 0.1, batch 100) before checking.
    #[arg(long, default_value_t = 0)]
    pub after_steps: usize,
    /// Also check K random directions (directional derivatives).
    #[arg(long, default_value_t = 0)]
    pub directions: usize,
    /// Perturbed losses per GPU chunk [default: from the device limits].
    #[arg(long)]
    pub chunk: Option<usize>,
    /// Write both gradients here as safetensors (analytic.W1, numeric.W1, …; analytic.x2 for
    /// the input of a custom layer 2); with --shard, the shard's file.
    #[arg(long)]
    pub save_grads: Option<PathBuf>,
    /// Compute only shard K of N of the numerical gradient (every Nth element, from the Kth) and
    /// write it to --save-grads, for --merge to join with the other N−1; e.g. 2/3.
    #[arg(long, value_name = "K/N")]
    pub shard: Option<Shard>,
    /// Merge the files of every shard of one check (--shard K/N --save-grads FILE) into its
    /// report; the check comes from the files, so no net, batch or check flags are given.
    #[arg(long, value_name = "FILE", num_args = 1.., conflicts_with = "shard")]
    pub merge: Vec<PathBuf>,
    /// Draw a histogram of each tensor's element-wise relative errors here (.svg or .png).
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// Print one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
}

/// The flags that say what a check is: a merge takes all of them from its shard files.
const CHECK_FLAGS: &[&str] = &[
    "hidden",
    "model",
    "layers",
    "batchnorm",
    "dropout",
    "activation",
    "init",
    "weight_decay",
    "seed",
    "data",
    "init_from",
    "crop",
    "batch",
    "precision",
    "h",
    "strategy",
    "params",
    "after_steps",
    "directions",
];

pub fn run_gradcheck(args: GradcheckArgs, given: &Given) -> Result<ExitCode> {
    if !args.merge.is_empty() {
        return run_merge(&args, given);
    }
    let strategy: Strategy = args.strategy.parse()?;
    if let Some(shard) = args.shard {
        shard_outputs(&args, shard)?;
    }
    check_outputs(&args)?;
    let mnist = cropped(args.net.load_data()?, args.crop)?;
    let spec = args.net.spec(&mnist.train, &CHECK_NET, given)?;
    let (x, labels) = gradcheck::first_batch(&mnist.train, args.batch)?;
    let mut contexts = args.net.check_contexts()?;
    let precision = match &args.precision {
        Some(p) => p.parse()?,
        None if contexts[0].supports(Precision::F64) => Precision::F64,
        None => {
            eprintln!("wgrad: adapter has no f64 (SHADER_F64): checking in f32, where per-element central differences are unreliable");
            Precision::F32
        }
    };
    keep_adapters_with(&mut contexts, precision);
    let params = check_params(&args.net, &contexts[0], &spec, &mnist, args.after_steps)?;
    let config = gradcheck::GradcheckConfig {
        precision,
        h: args.h.unwrap_or_else(|| numgrad::default_h(precision)),
        strategy,
        tensors: args.params.clone(),
        directions: args.directions,
        seed: args.net.seed,
        chunk: args.chunk,
        analytic_fault: None,
    };
    let subject = Subject {
        spec: &spec,
        params: &params,
        x: &x,
        labels: &labels,
        config: &config,
    };
    if let Some(shard) = args.shard {
        let path = (args.save_grads.as_deref()).expect("shard_outputs asked for --save-grads");
        return run_shard(&args, &contexts, &subject, shard, path);
    }
    let report = gradcheck::check_on_adapters(&contexts, &subject)?;
    write_report(&args, &contexts[0], &spec, &report)
}

/// A shard writes its share of the check and no report: it needs --save-grads, and has nothing
/// to plot.
fn shard_outputs(args: &GradcheckArgs, shard: Shard) -> Result<()> {
    if args.save_grads.is_none() {
        return Err(Error::InvalidArgument(format!(
            "--shard {shard} computes part of the numerical gradient, which has no report of its \
             own: add --save-grads FILE to write it, and merge every shard's file with \
             `wgrad gradcheck --merge FILE…`"
        )));
    }
    if args.plot.is_some() {
        return Err(Error::InvalidArgument(
            "--plot draws the whole check's errors, which a shard does not have: give --plot to \
             the `wgrad gradcheck --merge` that joins the shards"
                .into(),
        ));
    }
    Ok(())
}

/// Refuses, before any GPU work, output paths that cannot be written.
fn check_outputs(args: &GradcheckArgs) -> Result<()> {
    if let Some(path) = &args.save_grads {
        wgrad::checkpoint::ensure_writable(path)?;
    }
    if let Some(path) = &args.plot {
        plot::check_output(path)?;
    }
    Ok(())
}

/// With `--adapter all`, the adapters that can check in `precision`, which the first chose (or
/// --precision asked of it: if it cannot, the check refuses it with the fix).
fn keep_adapters_with(contexts: &mut Vec<GpuContext>, precision: Precision) {
    if !contexts[0].supports(precision) {
        return;
    }
    let (able, unable): (Vec<_>, Vec<_>) =
        (std::mem::take(contexts).into_iter()).partition(|c| c.supports(precision));
    if !unable.is_empty() {
        let names: Vec<String> = unable.iter().map(|c| c.describe()).collect();
        eprintln!(
            "wgrad: leaving out {}: no {precision}, which this check runs in",
            names.join(", ")
        );
    }
    *contexts = able;
}

fn run_shard(
    args: &GradcheckArgs,
    contexts: &[GpuContext],
    subject: &Subject,
    shard: Shard,
    path: &Path,
) -> Result<ExitCode> {
    let share = gradcheck::numeric_share(contexts, subject, shard)?;
    let adapters: Vec<String> = contexts.iter().map(|c| c.describe()).collect();
    shard::save(path, subject, shard, &share, &adapters.join("; "))?;
    let stats = &share.stats;
    if args.json {
        let value = serde_json::json!({
            "shard": shard.to_string(),
            "elements": share.positions.len(),
            "perturbed_losses": stats.perturbed_losses,
            "idle_losses": stats.idle_losses,
            "seconds_numeric": stats.seconds,
            "seconds_numeric_setup": stats.seconds_setup,
            "saved": path,
        });
        println!("{value}");
    } else {
        println!(
            "gradcheck shard {shard}: {} elements, {} perturbed losses in {:.3} s (setup {:.3} s), \
             saved to {}; merge all {} shards with `wgrad gradcheck --merge FILE…`",
            share.positions.len(),
            stats.perturbed_losses,
            stats.seconds,
            stats.seconds_setup,
            path.display(),
            shard.count()
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn run_merge(args: &GradcheckArgs, given: &Given) -> Result<ExitCode> {
    if let Some(flag) = CHECK_FLAGS.iter().find(|f| given.any(&[f])) {
        return Err(Error::InvalidArgument(format!(
            "--{} says what to check, which --merge reads from the shard files (each holds the \
             net, its parameters, the batch and the check's settings): drop it",
            flag.replace('_', "-")
        )));
    }
    check_outputs(args)?;
    let mut merged = shard::merge_files(&args.merge, args.chunk)?;
    let shares = std::mem::take(&mut merged.shares);
    // The shards took the perturbed losses; the merge's own work (the analytic gradient, an f64
    // tensor's second look at h/2) is one adapter's.
    let ctx = args.net.check_contexts()?.swap_remove(0);
    let report = gradcheck::merge(&ctx, &merged.subject(), shares)?;
    write_report(args, &ctx, &merged.spec, &report)
}

/// The report's outputs: --save-grads, --plot, and the table or --json; the exit code is the
/// verdict's.
fn write_report(
    args: &GradcheckArgs,
    ctx: &GpuContext,
    spec: &NetSpec,
    report: &GradcheckReport,
) -> Result<ExitCode> {
    if let Some(path) = &args.save_grads {
        gradcheck::save_grads(path, spec, report)?;
    }
    if let Some(path) = &args.plot {
        plot::plot_gradcheck(report, &spec.layout(), path)?;
    }
    if args.json {
        let value = report::with_adapter(report, ctx);
        println!("{value}");
    } else {
        print!("{}", report::gradcheck_text(report));
    }
    Ok(if report.passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
