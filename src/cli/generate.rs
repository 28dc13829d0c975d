//! What is generated from the clap definition itself, so that it cannot drift from the parser:
//! shell completions, man pages, and the Markdown CLI reference (docs/cli.md).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Args;

use wgrad::{Error, Result};

use super::write_stdout;

pub const COMPLETIONS_EXAMPLES: &str = "Examples:
  wgrad completions bash > ~/.local/share/bash-completion/completions/wgrad
  wgrad completions zsh > ~/.zfunc/_wgrad        # with fpath+=~/.zfunc in ~/.zshrc
  wgrad completions fish > ~/.config/fish/completions/wgrad.fish
  wgrad completions powershell >> $PROFILE";

pub const MAN_EXAMPLES: &str = "Examples:
  wgrad man | man -l -                           # read wgrad(1) now
  wgrad man --out ~/.local/share/man/man1        # wgrad.1, wgrad-train.1, …
  wgrad man --markdown > docs/cli.md             # the CLI reference in the repository";

#[derive(Args)]
pub struct ManArgs {
    /// Write wgrad.1 and wgrad-SUBCOMMAND.1 into this existing folder, instead of printing
    /// wgrad.1 on stdout.
    #[arg(long, value_name = "DIR", conflicts_with = "markdown")]
    pub out: Option<PathBuf>,
    /// Print the CLI reference as Markdown (docs/cli.md) instead: every command's --help.
    #[arg(long)]
    pub markdown: bool,
}

pub fn run_completions(shell: clap_complete::Shell) -> Result<ExitCode> {
    let mut cmd = super::command();
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut cmd, "wgrad", &mut script);
    write_stdout(&String::from_utf8_lossy(&script))?;
    Ok(ExitCode::SUCCESS)
}

pub fn run_man(args: ManArgs) -> Result<ExitCode> {
    if args.markdown {
        write_stdout(&markdown())?;
        return Ok(ExitCode::SUCCESS);
    }
    let pages = man_pages()?;
    let Some(dir) = args.out else {
        write_stdout(&String::from_utf8_lossy(&pages[0].1))?;
        return Ok(ExitCode::SUCCESS);
    };
    if !dir.is_dir() {
        return Err(Error::InvalidArgument(format!(
            "--out {}: no such folder; create it first (mkdir -p {}) or name another",
            dir.display(),
            dir.display()
        )));
    }
    // Every page is rendered before the first is written; each is written whole or not at all.
    for (name, roff) in &pages {
        write_whole(&dir.join(name), roff)?;
    }
    eprintln!(
        "wgrad: wrote {} man pages into {}",
        pages.len(),
        dir.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// wgrad.1, then wgrad-SUBCOMMAND.1 for each subcommand, as roff.
pub fn man_pages() -> Result<Vec<(String, Vec<u8>)>> {
    let cmd = super::command();
    let render = |cmd: clap::Command| -> Result<Vec<u8>> {
        let mut roff = Vec::new();
        clap_mangen::Man::new(cmd)
            .render(&mut roff)
            .map_err(|e| Error::io("rendering a man page", e))?;
        Ok(roff)
    };
    let mut pages = vec![("wgrad.1".to_string(), render(cmd.clone())?)];
    for (name, sub) in subcommands(&cmd, "wgrad") {
        // clap names are &'static without its `string` feature; a handful of short names.
        let static_name: &'static str = Box::leak(name.clone().into_boxed_str());
        let page = sub.name(static_name).version(super::VERSION);
        pages.push((format!("{name}.1"), render(page)?));
    }
    Ok(pages)
}

/// Every subcommand below `cmd` (whose page is `prefix`), each followed by its own
/// (`bench train` after `bench`), as `prefix-sub[-subsub]` and the command; clap's `help`
/// subcommand is left out.
fn subcommands(cmd: &clap::Command, prefix: &str) -> Vec<(String, clap::Command)> {
    let mut out = Vec::new();
    for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
        let name = format!("{prefix}-{}", sub.get_name());
        out.push((name.clone(), sub.clone()));
        out.extend(subcommands(sub, &name));
    }
    out
}

/// The CLI reference: every command's long help, in the order `wgrad --help` lists them.
pub fn markdown() -> String {
    let mut cmd = super::command();
    cmd.build();
    let mut out = String::from(
        "# wgrad command-line reference\n\n\
         Generated from the parser's own definition by `wgrad man --markdown`; never edit it \
         by hand.\n`tests/cli_docs.rs` fails when this file differs from what the binary \
         prints. Regenerate it with:\n\n\
         ```sh\ncargo run --release -- man --markdown > docs/cli.md\n```\n\n\
         Man pages: `wgrad man --out DIR`. Completions: `wgrad completions bash|zsh|fish|powershell`.\n",
    );
    let mut section = |title: &str, help: String| {
        out += &format!("\n## `{title}`\n\n```text\n{}\n```\n", help.trim_end());
    };
    section("wgrad", cmd.render_long_help().to_string());
    let names: Vec<String> = cmd
        .get_subcommands()
        .map(|s| s.get_name().to_string())
        .collect();
    for name in names {
        let sub = cmd.find_subcommand_mut(&name).expect("listed");
        section(&format!("wgrad {name}"), sub.render_long_help().to_string());
        // A subcommand's own subcommands (`bench train`) come right after it; `help`'s mirror
        // the others.
        let nested: Vec<String> = (sub.get_subcommands())
            .map(|s| s.get_name().to_string())
            .filter(|n| n != "help" && name != "help")
            .collect();
        for inner in nested {
            let help = (sub.find_subcommand_mut(&inner).expect("listed")).render_long_help();
            section(&format!("wgrad {name} {inner}"), help.to_string());
        }
    }
    out
}

/// `bytes` into `path` through a temporary file beside it, renamed over it.
fn write_whole(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("1.tmp");
    let written = std::fs::write(&tmp, bytes).and_then(|_| std::fs::rename(&tmp, path));
    written.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::io(format!("writing {}", path.display()), e)
    })
}
