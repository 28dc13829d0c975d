//! The `wgrad` command line: parses the arguments and dispatches to `cli::`, a module per
//! subcommand; the work is the library's.

use std::process::ExitCode;

use clap::FromArgMatches;

mod cli;

use cli::{Cli, Command, Given};

fn main() -> ExitCode {
    quiet_mesa_runtime_dir();
    let matches = cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let given = |name| Given::of(matches.subcommand_matches(name));
    let result = match cli.command {
        Command::Train(args) => cli::train::run_train(*args, &given("train")),
        Command::Gradcheck(args) => cli::gradcheck::run_gradcheck(args, &given("gradcheck")),
        Command::Bench(mut args) => match args.command.take() {
            Some(cli::bench::BenchCommand::Train(train)) => {
                let bench = matches.subcommand_matches("bench");
                let given = Given::of(bench.and_then(|m| m.subcommand_matches("train")));
                cli::bench_train::run_bench_train(*train, &given)
            }
            None => cli::bench::run_bench(args, &given("bench")),
        },
        Command::Eval(args) => cli::eval::run_eval(args, &given("eval")),
        Command::Predict(args) => cli::predict::run_predict(args, &given("predict")),
        Command::Plot(args) => cli::plot::run_plot(args),
        Command::Devices { json } => cli::devices::run_devices(json),
        Command::Completions { shell } => cli::generate::run_completions(shell),
        Command::Man(args) => cli::generate::run_man(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("wgrad: error: {e}");
            ExitCode::from(2)
        }
    }
}

/// Mesa prints "XDG_RUNTIME_DIR is invalid or not set" on every start without it; the warning
/// is harmless, but noise on every run. Point it at a private folder when it is unset (before
/// any thread exists, so setting the variable is sound).
fn quiet_mesa_runtime_dir() {
    if std::env::var_os("XDG_RUNTIME_DIR").is_some() {
        return;
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
        let uid = std::fs::metadata("/proc/self")
            .map(|m| m.uid())
            .unwrap_or(0);
        let dir = std::env::temp_dir().join(format!("wgrad-runtime-{uid}"));
        let _ = std::fs::DirBuilder::new().mode(0o700).create(&dir);
        let private = std::fs::metadata(&dir)
            .map(|m| m.is_dir() && m.uid() == uid && m.permissions().mode() & 0o077 == 0)
            .unwrap_or(false);
        if private {
            std::env::set_var("XDG_RUNTIME_DIR", &dir);
        }
    }
}
