//! `wgrad gradcheck`: backprop against numerical gradients, per tensor.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use wgrad::gpu::Precision;
use wgrad::numgrad::{self, Strategy};
use wgrad::{gradcheck, plot, report, Result};

use super::net::{check_params, cropped, NetArgs, CHECK_NET};
use super::Given;

/// The examples under `wgrad gradcheck --help`.
pub const EXAMPLES: &str = "Examples:
  wgrad gradcheck                               # TwoLayerNet 784-50-10, batch 3, f64
  wgrad gradcheck --model simple-conv --after-steps 50
  wgrad gradcheck --layers affine50,wgsl:my_layer.wgsl,affine10   # your own WGSL layer
  wgrad gradcheck --params W1,b2 --save-grads grads.safetensors --json";

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
    /// the input of a custom layer 2).
    #[arg(long)]
    pub save_grads: Option<PathBuf>,
    /// Draw a histogram of each tensor's element-wise relative errors here (.svg or .png).
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// Print one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
}

pub fn run_gradcheck(args: GradcheckArgs, given: &Given) -> Result<ExitCode> {
    let strategy: Strategy = args.strategy.parse()?;
    if let Some(path) = &args.save_grads {
        wgrad::checkpoint::ensure_writable(path)?;
    }
    if let Some(path) = &args.plot {
        plot::check_output(path)?;
    }
    let mnist = cropped(args.net.load_data()?, args.crop)?;
    let spec = args.net.spec(&mnist.train, &CHECK_NET, given)?;
    let (x, labels) = gradcheck::first_batch(&mnist.train, args.batch)?;
    let ctx = args.net.context()?;
    let precision = match &args.precision {
        Some(p) => p.parse()?,
        None if ctx.supports(Precision::F64) => Precision::F64,
        None => {
            eprintln!("wgrad: adapter has no f64 (SHADER_F64): checking in f32, where per-element central differences are unreliable");
            Precision::F32
        }
    };
    let params = check_params(&args.net, &ctx, &spec, &mnist, args.after_steps)?;
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
    let report = gradcheck::check(&ctx, &spec, &params, &x, &labels, &config)?;
    if let Some(path) = &args.save_grads {
        gradcheck::save_grads(path, &spec, &report)?;
    }
    if let Some(path) = &args.plot {
        plot::plot_gradcheck(&report, &spec.layout(), path)?;
    }
    if args.json {
        let value = report::with_adapter(&report, &ctx);
        println!("{value}");
    } else {
        print!("{}", report::gradcheck_text(&report));
    }
    Ok(if report.passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
