//! README.md's commands stay true: every `wgrad` command line in its shell blocks names a
//! subcommand and flags the binary has, every repository file it names exists, and the two
//! opening commands are the ones `.ci/run` runs.

use std::path::Path;
use std::process::Command;

const README: &str = include_str!("../README.md");

/// The lines of README's ```sh blocks.
fn shell_lines() -> Vec<&'static str> {
    let mut lines = Vec::new();
    let mut inside = false;
    for line in README.lines() {
        if line.starts_with("```") {
            inside = line == "```sh";
            continue;
        }
        if inside {
            lines.push(line);
        }
    }
    lines
}

/// The words of a `wgrad` invocation on `line` (`cargo run --release -- …` or `wgrad …`), up to
/// a comment, pipe or command separator.
fn wgrad_words(line: &str) -> Option<Vec<&str>> {
    let command = line.split(['#', '|', ';']).next()?.trim();
    let rest = command
        .strip_prefix("cargo run --release --")
        .or_else(|| command.strip_prefix("wgrad "))?;
    Some(rest.split_whitespace().collect())
}

fn help(subcommand: &str) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_wgrad"))
        .args([subcommand, "--help"])
        .output()
        .expect("wgrad runs");
    assert!(out.status.success(), "`wgrad {subcommand} --help` failed");
    String::from_utf8(out.stdout).expect("help is UTF-8")
}

#[test]
fn every_wgrad_command_in_readme_uses_flags_its_subcommand_has() {
    let commands: Vec<Vec<&str>> = shell_lines().into_iter().filter_map(wgrad_words).collect();
    assert!(
        commands.len() >= 10,
        "README's wgrad commands: {commands:?}"
    );
    for words in commands {
        let subcommand = words[0];
        let text = help(subcommand);
        for flag in words.iter().filter(|w| w.starts_with("--")) {
            let flag = flag.split('=').next().unwrap();
            assert!(
                text.contains(&format!("{flag} ")) || text.contains(&format!("{flag}\n")),
                "README runs `wgrad {subcommand} {flag}`, which `wgrad {subcommand} --help` does not list"
            );
        }
    }
}

#[test]
fn every_repository_file_readme_names_exists() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for line in shell_lines() {
        let command = line.split('#').next().unwrap();
        for word in command.split_whitespace() {
            let path = word.strip_prefix("wgsl:").unwrap_or(word);
            let path = path.split(',').find(|p| p.contains('/')).unwrap_or(path);
            let in_repo = ["src/", "tests/", "python/", ".ci/"]
                .iter()
                .any(|dir| path.starts_with(dir) || path.starts_with(&format!("./{dir}")));
            if in_repo {
                let file = root.join(path.trim_start_matches("./"));
                assert!(
                    file.exists(),
                    "README names {path}, which is not in the repository"
                );
            }
        }
    }
}

#[test]
fn readme_opens_with_the_train_and_test_commands_ci_runs() {
    let lines = shell_lines();
    assert!(
        lines[0].starts_with("cargo run --release -- train"),
        "{}",
        lines[0]
    );
    let test = lines[1].split('#').next().unwrap().trim();
    let ci = include_str!("../.ci/run");
    assert_eq!(
        ci.lines().rfind(|l| !l.trim().is_empty()).map(str::trim),
        Some(test),
        ".ci/run must end with README's test command"
    );
}
