//! `wgrad eval`: a saved net's loss, accuracy, per-class figures and confusion matrix.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use wgrad::{checkpoint, data, report, Result};

use super::net::StoredNetArgs;

#[derive(Args)]
pub struct EvalArgs {
    /// A checkpoint written by `wgrad train` (--save, --save-best, --checkpoint-every, or an
    /// interrupt); the net is built from it alone.
    pub checkpoint: PathBuf,
    /// The data folder [default: the run's own, else the bundled set].
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// test, train, or val (the run's own --val-fraction split; train is what remains of it).
    #[arg(long, default_value = "test")]
    pub split: String,
    #[command(flatten)]
    pub run: StoredNetArgs,
    /// Print one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
}

pub fn run_eval(args: EvalArgs) -> Result<ExitCode> {
    if !["test", "train", "val"].contains(&args.split.as_str()) {
        return Err(wgrad::Error::InvalidArgument(format!(
            "unknown split '{}': use test, train or val",
            args.split
        )));
    }
    let net = checkpoint::load_net(&args.checkpoint)?;
    let config = net.run.as_ref().map(|r| &r.config);
    let dir = (args.data.clone()).or_else(|| net.run.as_ref().and_then(|r| r.data_dir.clone()));
    let mnist = data::load(dir.as_deref())?;
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
