//! `wgrad plot`: loss and accuracy curves from metrics files.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use wgrad::{plot, Result};

/// The examples under `wgrad plot --help`.
pub const EXAMPLES: &str = "Examples:
  wgrad plot run.jsonl -o curves.png
  wgrad plot momentum.jsonl adam.csv -o both.svg --x step";

#[derive(Args)]
pub struct PlotArgs {
    /// Metrics files the trainer wrote: JSON Lines (.jsonl) or CSV (.csv) with a header row.
    /// Several are overlaid, each named by its file stem.
    #[arg(required = true, value_name = "RUN")]
    pub runs: Vec<PathBuf>,
    /// The picture to write: .svg or .png.
    #[arg(short, long, value_name = "FILE")]
    pub output: PathBuf,
    /// Against epoch (epoch records) or step (every record, step records' batch losses too).
    #[arg(long, default_value = "epoch", value_name = "epoch|step")]
    pub x: String,
}

pub fn run_plot(args: PlotArgs) -> Result<ExitCode> {
    let x: plot::XAxis = args.x.parse()?;
    plot::check_output(&args.output)?;
    let names = plot::run_names(&args.runs);
    let runs = (args.runs.iter().zip(names))
        .map(|(path, name)| plot::Run::read(path, name))
        .collect::<Result<Vec<_>>>()?;
    plot::plot_runs(&runs, x, &args.output)?;
    Ok(ExitCode::SUCCESS)
}
