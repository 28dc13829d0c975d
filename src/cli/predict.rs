//! `wgrad predict`: classify pictures (PNG) or IDX image files with a saved net.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use wgrad::{checkpoint, report, Result};

use super::net::{ShapeArgs, StoredNetArgs};
use super::write_stdout;
use super::Given;

/// The examples under `wgrad predict --help`.
pub const EXAMPLES: &str = "Examples:
  wgrad predict net.safetensors digit.png drawn-7.png
  wgrad predict net.safetensors t10k-images-idx3-ubyte.gz --top 5 --json
  wgrad predict params.npz --model simple-conv digit.png";

#[derive(Args)]
pub struct PredictArgs {
    /// A checkpoint written by `wgrad train`, whose net is built from it alone; or any weights
    /// file, safetensors or numpy .npz (W1, b1, …), with the net flags (--model, --layers,
    /// --hidden, …) that describe it.
    #[arg(value_name = "WEIGHTS")]
    pub checkpoint: PathBuf,
    /// PNG pictures (any size, colour type or bit depth), each made into the net's input as
    /// MNIST's digits were: greyscale, inverted when the background is light, the digit fitted
    /// into the central 20×20 of 28×28 and centred by mass. IDX image files (raw or gzip): one
    /// prediction per image, taken as they are when of the net's size.
    #[arg(value_name = "FILE")]
    pub files: Vec<PathBuf>,
    /// Show the K most probable classes of each picture.
    #[arg(long, value_name = "K", default_value_t = 3)]
    pub top: usize,
    /// Never invert: bright pixels are ink even on a light background.
    #[arg(long)]
    pub no_invert: bool,
    #[command(flatten)]
    pub run: StoredNetArgs,
    #[command(flatten, next_help_heading = "The net of a plain weights file")]
    pub net: ShapeArgs,
    /// With net flags: the data set whose image shape and class count the net takes
    /// [default: the bundled MNIST subset, 28×28, 10 classes].
    #[arg(long, help_heading = "The net of a plain weights file")]
    pub data: Option<PathBuf>,
    /// Print one JSON document on stdout: an array of {file, index (IDX only), top: [{class,
    /// probability}], blank (when no ink was found)}.
    #[arg(long)]
    pub json: bool,
}

pub fn run_predict(args: PredictArgs, given: &Given) -> Result<ExitCode> {
    use wgrad::predict;
    if args.files.is_empty() {
        return Err(wgrad::Error::InvalidArgument(format!(
            "no pictures given: name one or more PNG or IDX image files after the checkpoint, \
             as in `wgrad predict {} digit.png`",
            args.checkpoint.display()
        )));
    }
    if args.top == 0 {
        return Err(wgrad::Error::InvalidArgument(
            "--top 0 shows no class: give 1 or more".into(),
        ));
    }
    let net = if ShapeArgs::given(given) {
        let data = wgrad::data::load(args.data.as_deref())?;
        args.net.load(&args.checkpoint, &data.train)?
    } else if let Some(dir) = &args.data {
        return Err(wgrad::Error::InvalidArgument(format!(
            "--data {} describes the net of a plain weights file: give it with the net flags \
             (--model, --layers, --hidden, …), or drop it for a wgrad checkpoint, which brings \
             its net",
            dir.display()
        )));
    } else {
        checkpoint::load_net(&args.checkpoint)?
    };
    let precision = args.run.precision(&net)?;
    let shape = predict::input_shape(&net.spec, net.run.as_ref())?;
    // Every file is read before the GPU is opened, so that a bad one is reported at once.
    let mut inputs = Vec::new();
    for file in &args.files {
        inputs.extend(predict::read_file(file, shape, !args.no_invert)?);
    }
    let ctx = args.run.context()?;
    let stored = (&net.spec, &net.params[..], &net.state[..]);
    let probabilities = predict::predict(&ctx, stored, &inputs, shape, precision)?;
    let k = args.top.min(net.spec.output);
    let text = if args.json {
        format!("{}\n", report::predictions_json(&inputs, &probabilities, k))
    } else {
        report::predictions_text(&inputs, &probabilities, k)
    };
    write_stdout(&text)?;
    Ok(ExitCode::SUCCESS)
}
