//! `wgrad eval`: a saved net's loss, accuracy, per-class figures and confusion matrix.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use wgrad::{checkpoint, data, report, Result};

use super::net::{ShapeArgs, StoredNetArgs};
use super::Given;

/// The examples under `wgrad eval --help`.
pub const EXAMPLES: &str = "Examples:
  wgrad eval net.safetensors                      # a checkpoint of wgrad train
  wgrad eval net.safetensors --split val --json
  wgrad eval params.npz --model simple-conv        # numpy's weights, the net named by flags";

#[derive(Args)]
pub struct EvalArgs {
    /// A checkpoint written by `wgrad train` (--save, --save-best, --checkpoint-every, or an
    /// interrupt), whose net is built from it alone; or any weights file, safetensors or numpy
    /// .npz (W1, b1, …), with the net flags (--model, --layers, --hidden, …) that describe it.
    #[arg(value_name = "WEIGHTS")]
    pub checkpoint: PathBuf,
    /// The data folder [default: the run's own, else the bundled set].
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// test, train, or val (the run's own --val-fraction split; train is what remains of it).
    #[arg(long, default_value = "test")]
    pub split: String,
    #[command(flatten)]
    pub run: StoredNetArgs,
    #[command(flatten, next_help_heading = "The net of a plain weights file")]
    pub net: ShapeArgs,
    /// Print one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
}

pub fn run_eval(args: EvalArgs, given: &Given) -> Result<ExitCode> {
    if !["test", "train", "val"].contains(&args.split.as_str()) {
        return Err(wgrad::Error::InvalidArgument(format!(
            "unknown split '{}': use test, train or val",
            args.split
        )));
    }
    let (net, mnist) = if ShapeArgs::given(given) {
        let mnist = data::load(args.data.as_deref())?;
        (args.net.load(&args.checkpoint, &mnist.train)?, mnist)
    } else {
        let net = checkpoint::load_net(&args.checkpoint)?;
        let run_dir = net.run.as_ref().and_then(|r| r.data_dir.clone());
        let mnist = data::load(args.data.clone().or(run_dir).as_deref())?;
        (net, mnist)
    };
    let config = net.run.as_ref().map(|r| &r.config);
    let set = match (args.split.as_str(), config) {
        ("test", _) => mnist.test,
        ("train", Some(config)) => config.split(&mnist.train).0.into_owned(),
        ("train", None) => mnist.train,
        (_, Some(config)) if config.val_fraction > 0.0 => {
            (config.split(&mnist.train).1).expect("a validation part")
        }
        _ => {
            return Err(wgrad::Error::InvalidArgument(format!(
                "{} holds no validation split: it was not trained with --val-fraction; use \
                 --split test or train",
                args.checkpoint.display()
            )))
        }
    };
    let precision = args.run.precision(&net)?;
    net.spec.check_data(&set)?;
    let ctx = args.run.context()?;
    let stored = (&net.spec, &net.params[..], &net.state[..]);
    let report = wgrad::evaluate::evaluate(&ctx, stored, &set, precision)?;
    if args.json {
        let mut value = report::with_adapter(&report, &ctx);
        value["split"] = serde_json::json!(args.split);
        println!("{value}");
    } else {
        print!("{}", report::eval_text(&report, &args.split));
    }
    Ok(ExitCode::SUCCESS)
}
