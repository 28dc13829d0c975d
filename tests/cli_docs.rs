//! What is generated from the clap definition: docs/cli.md must be what `wgrad man --markdown`
//! prints, completions and man pages must come out for every shell and subcommand, and the
//! command-line conventions hold (`--version` with the commit and wgpu, NO_COLOR, examples in
//! every --help).

use std::path::Path;
use std::process::Command;

mod common;

use common::cli::*;
use tempfile::TempDir;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn docs_cli_md_is_what_the_generator_prints() {
    let generated = wgrad(&["man", "--markdown"]);
    assert_eq!(generated.code, Some(0), "{}", generated.stderr);
    let committed = std::fs::read_to_string(root().join("docs/cli.md")).unwrap_or_default();
    assert!(
        committed == generated.stdout,
        "docs/cli.md differs from `wgrad man --markdown`: regenerate it with\n  cargo run \
         --release -- man --markdown > docs/cli.md"
    );
    // Every subcommand is in it, with its flags.
    for section in [
        "## `wgrad train`",
        "## `wgrad gradcheck`",
        "## `wgrad bench train`",
        "## `wgrad man`",
    ] {
        assert!(generated.stdout.contains(section), "{section}");
    }
    assert!(generated.stdout.contains("--init-from <INIT_FROM>"));
}

#[test]
fn completions_for_every_shell_know_the_subcommands() {
    for shell in ["bash", "zsh", "fish", "powershell"] {
        let run = wgrad(&["completions", shell]);
        assert_eq!(run.code, Some(0), "{shell}: {}", run.stderr);
        assert!(
            run.stdout.contains("gradcheck") && run.stdout.contains("init-from"),
            "{shell} completions lack gradcheck or --init-from:\n{}",
            run.stdout
        );
    }
    wgrad_fails(&["completions", "tcsh"], &["invalid value 'tcsh'", "bash"]);
}

#[test]
fn man_pages_are_roff_that_groff_reads() {
    let run = wgrad(&["man"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let first_macro = (run.stdout.lines())
        .find(|l| l.starts_with('.') && !l.starts_with(".ie") && !l.starts_with(".el"))
        .unwrap_or("");
    assert!(first_macro.starts_with(".TH wgrad 1"), "{}", run.stdout);
    assert!(run.stdout.contains(".SH NAME") && run.stdout.contains("gradcheck"));
    // Every line of a roff request is a request: a dot and a name, nothing stray.
    for line in run.stdout.lines().filter(|l| l.starts_with('.')) {
        let name = line[1..].split_whitespace().next().unwrap_or("");
        assert!(
            !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric()),
            "not a roff request: {line:?}"
        );
    }
    let dir = TempDir::new().unwrap();
    let written = wgrad(&["man", "--out", path_str(dir.path())]);
    assert_eq!(written.code, Some(0), "{}", written.stderr);
    let pages = entries(dir.path());
    for page in [
        "wgrad.1",
        "wgrad-train.1",
        "wgrad-gradcheck.1",
        "wgrad-bench-train.1",
        "wgrad-completions.1",
    ] {
        assert!(pages.contains(&page.to_string()), "{pages:?}");
    }
    // groff, where the machine has it, reads each page without a warning (-k: UTF-8 input,
    // as man(1) reads it).
    for page in &pages {
        let checked = Command::new("groff")
            .args(["-k", "-man", "-Tutf8", "-z", "-ww"])
            .arg(dir.path().join(page))
            .output();
        if let Ok(out) = checked {
            let warnings = String::from_utf8_lossy(&out.stderr);
            assert!(
                out.status.success() && warnings.trim().is_empty(),
                "{page}: {warnings}"
            );
        }
    }
    // A folder that is not there: an error naming the fix, and nothing written.
    let missing = dir.path().join("no/such/dir");
    wgrad_fails(
        &["man", "--out", path_str(&missing)],
        &["no such folder", "mkdir -p"],
    );
    assert!(!missing.exists());
}

#[test]
fn version_names_the_commit_and_wgpu() {
    let run = wgrad(&["--version"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let line = run.stdout.trim();
    assert!(
        line.starts_with(concat!("wgrad ", env!("CARGO_PKG_VERSION"))),
        "{line}"
    );
    assert!(line.contains(", wgpu 30."), "{line}");
    let head = Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(root())
        .output();
    let commit = match head {
        Ok(out) if out.status.success() => String::from_utf8(out.stdout).unwrap(),
        _ => "unknown".to_string(),
    };
    assert!(
        line.contains(&format!("(commit {}", commit.trim())),
        "{line} does not name the checkout's commit {commit}"
    );
}

#[test]
fn no_color_turns_colour_off() {
    let help = |no_color: bool| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_wgrad"));
        cmd.args(["train", "--help"]).env("CLICOLOR_FORCE", "1");
        cmd.env_remove("NO_COLOR");
        if no_color {
            cmd.env("NO_COLOR", "1");
        }
        String::from_utf8(cmd.output().unwrap().stdout).unwrap()
    };
    assert!(help(false).contains('\x1b'), "forced colour shows escapes");
    assert!(
        !help(true).contains('\x1b'),
        "NO_COLOR wins over CLICOLOR_FORCE"
    );
    // Errors too.
    let mut bad = Command::new(env!("CARGO_BIN_EXE_wgrad"));
    bad.args(["train", "--no-such-flag"])
        .env("CLICOLOR_FORCE", "1")
        .env("NO_COLOR", "1");
    let err = String::from_utf8(bad.output().unwrap().stderr).unwrap();
    assert!(
        err.contains("--no-such-flag") && !err.contains('\x1b'),
        "{err}"
    );
}

#[test]
fn every_subcommand_help_has_examples() {
    let subcommands = [
        "train",
        "gradcheck",
        "bench",
        "eval",
        "predict",
        "plot",
        "devices",
        "completions",
        "man",
    ];
    for sub in subcommands {
        let run = wgrad(&[sub, "--help"]);
        assert_eq!(run.code, Some(0), "{sub}: {}", run.stderr);
        assert!(
            run.stdout.contains("Examples:\n  wgrad "),
            "wgrad {sub} --help has no examples:\n{}",
            run.stdout
        );
    }
    let listed = wgrad(&["--help"]).stdout;
    for sub in subcommands {
        assert!(listed.contains(&format!("  {sub} ")), "{sub} not listed");
    }
}
