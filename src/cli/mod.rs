//! The `wgrad` command line: a module per subcommand, each its flags and a `run_*` that turns them
//! into library calls. What a second front also needs (reports, run metadata, gradient files,
//! signals) lives in the library.

use clap::parser::ValueSource;
use clap::{ArgMatches, CommandFactory, Parser, Subcommand};

use wgrad::Result;

pub mod bench;
pub mod bench_train;
pub mod devices;
pub mod eval;
pub mod generate;
pub mod gradcheck;
pub mod net;
pub mod plot;
pub mod predict;
pub mod train;
mod train_config;

use bench::BenchArgs;
use eval::EvalArgs;
use gradcheck::GradcheckArgs;
use plot::PlotArgs;
use predict::PredictArgs;
use train::TrainArgs;

/// `wgrad --version`: the crate's version, the commit it was built from (build.rs) and wgpu's.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("WGRAD_COMMIT"),
    ", wgpu ",
    env!("WGRAD_WGPU_VERSION"),
    ")"
);

#[derive(Parser)]
#[command(
    name = "wgrad",
    version = VERSION,
    about = "Train MNIST-sized nets on any GPU (wgpu/WGSL), and check their gradients numerically",
    after_help = EXAMPLES,
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

const EXAMPLES: &str = "Examples:
  wgrad train                          # train on the bundled MNIST subset
  wgrad gradcheck --model simple-conv  # check SimpleConvNet's gradients numerically
  wgrad train --help                   # every flag of a command, with examples

Colour: clap's help and errors are coloured on a terminal; NO_COLOR=1 turns that off.";

#[derive(Subcommand)]
pub enum Command {
    /// Train a net (on the bundled 10k MNIST subset unless --data names another data set).
    #[command(after_help = train::EXAMPLES)]
    Train(Box<TrainArgs>),
    /// Check backprop against batched numerical gradients, per tensor.
    #[command(after_help = gradcheck::EXAMPLES)]
    Gradcheck(GradcheckArgs),
    /// Time analytic and numerical gradients (each strategy and precision, and the book's loop);
    /// `bench train`: training throughput.
    #[command(
        after_help = bench::EXAMPLES,
        args_conflicts_with_subcommands = true,
        disable_help_subcommand = true
    )]
    Bench(BenchArgs),
    /// Loss, accuracy, per-class precision and recall, and the confusion matrix of a saved net.
    #[command(after_help = eval::EXAMPLES)]
    Eval(EvalArgs),
    /// Classify pictures with a saved net: PNGs of any size or colour type, or IDX image files.
    #[command(after_help = predict::EXAMPLES)]
    Predict(PredictArgs),
    /// Draw loss and accuracy curves from metrics files (.jsonl or .csv), one run or several.
    #[command(after_help = plot::EXAMPLES)]
    Plot(PlotArgs),
    /// List the GPU adapters wgpu can see.
    #[command(after_help = devices::EXAMPLES)]
    Devices {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Print a shell completion script (bash, zsh, fish, powershell, elvish) on stdout.
    #[command(after_help = generate::COMPLETIONS_EXAMPLES)]
    Completions {
        #[arg(value_name = "SHELL")]
        shell: clap_complete::Shell,
    },
    /// Write the man pages (wgrad.1 and one per subcommand), or print the CLI reference.
    #[command(after_help = generate::MAN_EXAMPLES)]
    Man(generate::ManArgs),
}

/// The flags given on the command line (not left at their defaults), by clap id.
pub struct Given(std::collections::BTreeSet<String>);

impl Given {
    pub fn of(matches: Option<&ArgMatches>) -> Given {
        let Some(m) = matches else {
            return Given(Default::default());
        };
        let ids = m.ids().map(|id| id.as_str().to_string());
        let given = ids.filter(|id| m.value_source(id) == Some(ValueSource::CommandLine));
        Given(given.collect())
    }

    pub fn any(&self, ids: &[&str]) -> bool {
        ids.iter().any(|id| self.0.contains(*id))
    }
}

/// Writes `text` on stdout. A reader that has gone (`wgrad predict … | head`) is no error: an
/// IDX file of thousands of images makes long output.
pub fn write_stdout(text: &str) -> Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|_| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(wgrad::Error::io("writing the predictions to stdout", e))
        }
        _ => Ok(()),
    }
}

/// The whole command line as clap sees it, for the parser and the generators.
pub fn command() -> clap::Command {
    Cli::command()
}
