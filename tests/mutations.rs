//! Mutation checks: every deliberate bug listed in tests/mutations.txt is applied, one at a time,
//! to a copy of the tracked tree, and the tests named for it must fail. A mutation that no test
//! catches is a hole in the suite; the run fails and names it.
//!
//! Ignored by default: each mutation rebuilds the crate (about a minute on two cores).
//!
//! ```text
//! cargo test --release --test mutations -- --ignored --nocapture
//! WGRAD_MUTATIONS=adam,kink cargo test --release --test mutations -- --ignored --nocapture
//! ```
//!
//! - `WGRAD_MUTATIONS`: comma-separated words; only entries whose id contains one of them run.
//! - `WGRAD_MUTATION_TIMEOUT`: seconds allowed to each cargo command (default 900); a test run
//!   that exceeds it counts as caught (a hang is a visible failure), a build as an error.
//!
//! Builds go to `target/mutants` (kept between runs, so dependencies compile once), cargo's
//! output to `target/mutants/logs/<id>.log`, and the summary to `target/mutations-report.txt`.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// One entry of tests/mutations.txt.
#[derive(Debug, Default)]
struct Mutation {
    id: String,
    why: String,
    file: String,
    find: String,
    replace: Option<String>,
    /// Arguments after `cargo test --release`, one selection each; caught if any run fails.
    tests: Vec<Vec<String>>,
}

#[derive(Debug)]
enum Outcome {
    /// `by`: the selection that failed and the tests it reported failing.
    Caught { by: String },
    /// `tried`: the selections that all passed.
    Survived { tried: String },
    /// `find` no longer occurs exactly once (or the file is gone): the list needs updating.
    Stale { detail: String },
    /// The mutant does not build (Rust) or does not validate (WGSL): it proves nothing.
    Invalid { detail: String },
}

impl Outcome {
    fn label(&self) -> &'static str {
        match self {
            Outcome::Caught { .. } => "caught",
            Outcome::Survived { .. } => "SURVIVED",
            Outcome::Stale { .. } => "STALE",
            Outcome::Invalid { .. } => "INVALID",
        }
    }

    fn detail(&self) -> &str {
        match self {
            Outcome::Caught { by } => by,
            Outcome::Survived { tried } => tried,
            Outcome::Stale { detail } | Outcome::Invalid { detail } => detail,
        }
    }
}

#[test]
#[ignore = "rebuilds the crate once per mutation; run with --ignored"]
fn listed_mutations_are_caught() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let list = fs::read_to_string(root.join("tests/mutations.txt")).unwrap();
    let mutations = select(parse(&list).unwrap_or_else(|e| panic!("tests/mutations.txt: {e}")));
    let started = Instant::now();

    // One copy for the whole run: each mutation edits one file of it and restores it.
    let tree = tempfile::Builder::new()
        .prefix("wgrad-mutants-")
        .tempdir()
        .unwrap();
    copy_tracked_tree(root, tree.path());
    let cargo = Cargo::new(tree.path(), &root.join("target/mutants"));

    baseline(&cargo, &mutations);
    let mut rows = Vec::new();
    for m in &mutations {
        let t = Instant::now();
        let outcome = run_mutation(&cargo, m);
        let secs = t.elapsed().as_secs_f64();
        println!("{}", row(&m.id, &outcome, secs));
        rows.push((m, outcome, secs));
    }

    let report = summary(&rows, started.elapsed().as_secs_f64());
    println!("\n{report}");
    fs::write(root.join("target/mutations-report.txt"), &report).unwrap();
    let failed: Vec<&str> = rows
        .iter()
        .filter(|(_, o, _)| !matches!(o, Outcome::Caught { .. }))
        .map(|(m, _, _)| m.id.as_str())
        .collect();
    assert!(failed.is_empty(), "not caught: {}", failed.join(", "));
}

/// The list still fits the code: each `find` occurs exactly once in its file. Run with the
/// ordinary suite, so a change that rewrites a mutated line fails here, at once, instead of
/// leaving an entry that the ignored run above reports stale sessions later.
#[test]
fn every_listed_mutation_still_applies_once() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let list = fs::read_to_string(root.join("tests/mutations.txt")).unwrap();
    let mutations = parse(&list).unwrap_or_else(|e| panic!("tests/mutations.txt: {e}"));
    let stale: Vec<String> = (mutations.iter())
        .filter_map(|m| {
            let source = fs::read_to_string(root.join(&m.file)).unwrap_or_default();
            let found = source.matches(m.find.as_str()).count();
            (found != 1).then(|| format!("{} ({}: found {found} times)", m.id, m.file))
        })
        .collect();
    assert!(
        stale.is_empty(),
        "stale entries in tests/mutations.txt, update their `find`: {}",
        stale.join(", ")
    );
}

// ---------------------------------------------------------------------------------------------
// The list

/// Parses the list: `## id` starts an entry, `key: value` lines fill it, other lines starting
/// with `#` are comments. In values, `\n` is a newline and `\\` a backslash, so a `find` can span
/// lines where one line alone is not unique.
fn parse(text: &str) -> Result<Vec<Mutation>, String> {
    let mut out: Vec<Mutation> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let at = |msg: String| format!("line {}: {msg}", i + 1);
        let line = line.trim_end();
        if let Some(id) = line.strip_prefix("## ") {
            out.push(Mutation {
                id: id.trim().to_string(),
                ..Default::default()
            });
            continue;
        }
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (key, value) = line
            .split_once(':')
            .ok_or_else(|| at(format!("expected `key: value`, got `{line}`")))?;
        let value = unescape(value.strip_prefix(' ').unwrap_or(value)).map_err(at)?;
        let m = out
            .last_mut()
            .ok_or_else(|| at("a value before the first `## id`".into()))?;
        let repeated = match key {
            "why" => set(&mut m.why, value),
            "file" => set(&mut m.file, value),
            "find" => set(&mut m.find, value),
            "replace" => m.replace.replace(value).is_some(),
            "tests" => {
                m.tests
                    .push(value.split_whitespace().map(String::from).collect());
                false
            }
            _ => return Err(at(format!("unknown key `{key}`"))),
        };
        if repeated {
            return Err(at(format!("`{key}` given twice in {}", m.id)));
        }
    }
    check_entries(&out)?;
    Ok(out)
}

/// Fills a single-valued field; true when it was already set.
fn set(slot: &mut String, value: String) -> bool {
    let was_set = !slot.is_empty();
    *slot = value;
    was_set
}

fn unescape(s: &str) -> Result<String, String> {
    let mut out = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('\\') => out.push('\\'),
            other => return Err(format!("unknown escape `\\{}`", other.unwrap_or(' '))),
        }
    }
    Ok(out)
}

/// Every entry complete, ids unique, and no entry that changes nothing.
fn check_entries(list: &[Mutation]) -> Result<(), String> {
    let mut ids = std::collections::HashSet::new();
    for m in list {
        let missing = [
            ("why", m.why.is_empty()),
            ("file", m.file.is_empty()),
            ("find", m.find.is_empty()),
            ("replace", m.replace.is_none()),
            ("tests", m.tests.iter().all(Vec::is_empty)),
        ];
        if let Some((key, _)) = missing.iter().find(|(_, gone)| *gone) {
            return Err(format!("{}: no `{key}`", m.id));
        }
        if m.replace.as_deref() == Some(m.find.as_str()) {
            return Err(format!("{}: `replace` equals `find`, a no-op", m.id));
        }
        if !ids.insert(m.id.as_str()) {
            return Err(format!("{}: id used twice", m.id));
        }
    }
    Ok(())
}

/// The entries `WGRAD_MUTATIONS` asks for (all when unset).
fn select(all: Vec<Mutation>) -> Vec<Mutation> {
    let Ok(filter) = std::env::var("WGRAD_MUTATIONS") else {
        return all;
    };
    let words: Vec<&str> = filter
        .split(',')
        .map(str::trim)
        .filter(|w| !w.is_empty())
        .collect();
    let chosen: Vec<Mutation> = all
        .into_iter()
        .filter(|m| words.iter().any(|w| m.id.contains(w)))
        .collect();
    assert!(
        !chosen.is_empty(),
        "WGRAD_MUTATIONS={filter} matches no entry"
    );
    chosen
}

// ---------------------------------------------------------------------------------------------
// The tree and cargo

/// Copies the files git tracks (as they are in the working tree, uncommitted edits included):
/// no build output, and nothing untracked that a test might depend on by accident.
fn copy_tracked_tree(root: &Path, dest: &Path) {
    let out = Command::new("git")
        .arg("-C")
        .arg(root)
        .args(["ls-files", "-z"])
        .output()
        .expect("git");
    assert!(out.status.success(), "git ls-files failed");
    for name in out.stdout.split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let rel = Path::new(std::str::from_utf8(name).unwrap());
        let from = root.join(rel);
        // Tracked but deleted in the working tree: the copy mirrors the working tree.
        if !from.exists() {
            continue;
        }
        let to = dest.join(rel);
        fs::create_dir_all(to.parent().unwrap()).unwrap();
        fs::copy(&from, &to).unwrap_or_else(|e| panic!("copy {}: {e}", rel.display()));
    }
}

enum Run {
    Passed,
    Failed { failing: Vec<String> },
    TimedOut,
}

/// `cargo test --release` in the copy, with a persistent target directory outside it.
struct Cargo {
    tree: PathBuf,
    target: PathBuf,
    logs: PathBuf,
    timeout: Duration,
}

impl Cargo {
    fn new(tree: &Path, target: &Path) -> Cargo {
        let logs = target.join("logs");
        fs::create_dir_all(&logs).unwrap();
        let secs = std::env::var("WGRAD_MUTATION_TIMEOUT")
            .map(|s| s.parse().expect("WGRAD_MUTATION_TIMEOUT: seconds"))
            .unwrap_or(900);
        Cargo {
            tree: tree.to_path_buf(),
            target: target.to_path_buf(),
            logs,
            timeout: Duration::from_secs(secs),
        }
    }

    fn log_path(&self, name: &str) -> PathBuf {
        self.logs.join(format!("{name}.log"))
    }

    /// Builds the selection's test targets; Err holds the tail of the compiler's output.
    fn build(&self, selection: &[String], log: &str) -> Result<(), String> {
        let mut args = vec!["--no-run".to_string()];
        args.extend_from_slice(selection);
        match self.cargo_test(&args, log) {
            (Some(status), _) if status.success() => Ok(()),
            (Some(_), text) => Err(tail(&text, 20)),
            (None, _) => panic!("building {selection:?} took over {:?}", self.timeout),
        }
    }

    /// Runs the (already built) selection.
    fn test(&self, selection: &[String], log: &str) -> Run {
        match self.cargo_test(selection, log) {
            (Some(status), _) if status.success() => Run::Passed,
            (Some(_), text) => Run::Failed {
                failing: failing_tests(&text),
            },
            (None, _) => Run::TimedOut,
        }
    }

    /// Runs `cargo test --release ARGS`, output appended to the log; None when it timed out.
    fn cargo_test(&self, args: &[String], log: &str) -> (Option<ExitStatus>, String) {
        let path = self.log_path(log);
        let mut file = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .unwrap();
        let start = fs::metadata(&path).unwrap().len();
        std::io::Write::write_all(
            &mut file,
            format!("\n$ cargo test --release {}\n", args.join(" ")).as_bytes(),
        )
        .unwrap();
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.current_dir(&self.tree)
            .env("CARGO_TARGET_DIR", &self.target)
            .args(["test", "--release"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file);
        // Its own process group, so a timeout can stop the test binaries cargo started too.
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let status = wait_with_timeout(cmd.spawn().expect("cargo"), self.timeout);
        let text = fs::read_to_string(&path).unwrap_or_default();
        (status, text.get(start as usize..).unwrap_or("").to_string())
    }
}

fn wait_with_timeout(mut child: Child, timeout: Duration) -> Option<ExitStatus> {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        if start.elapsed() > timeout {
            // Negative pid: the whole group (cargo and the test binary it runs).
            let _ = Command::new("kill")
                .args(["-KILL", &format!("-{}", child.id())])
                .status();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// The libtest lines `test NAME ... FAILED`.
fn failing_tests(output: &str) -> Vec<String> {
    output
        .lines()
        .filter_map(|l| l.strip_prefix("test ")?.strip_suffix(" ... FAILED"))
        .map(String::from)
        .collect()
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

// ---------------------------------------------------------------------------------------------
// Running the list

/// Each selection must pass on the unmutated copy; otherwise a failure under a mutation would
/// say nothing about the mutation.
fn baseline(cargo: &Cargo, mutations: &[Mutation]) {
    let mut selections: Vec<&Vec<String>> = mutations.iter().flat_map(|m| &m.tests).collect();
    selections.sort();
    selections.dedup();
    let _ = fs::remove_file(cargo.log_path("baseline"));
    for sel in selections {
        let t = Instant::now();
        if let Err(e) = cargo.build(sel, "baseline") {
            panic!("baseline does not build ({sel:?}):\n{e}");
        }
        match cargo.test(sel, "baseline") {
            Run::Passed => {}
            Run::Failed { failing } => panic!(
                "baseline fails {sel:?} ({}): fix the suite first; see {}",
                failing.join(", "),
                cargo.log_path("baseline").display()
            ),
            Run::TimedOut => panic!("baseline {sel:?} timed out"),
        }
        println!(
            "baseline {:<50} passes {:6.0}s",
            sel.join(" "),
            t.elapsed().as_secs_f64()
        );
    }
}

/// Puts the original text back when dropped, even if the run panics.
struct Restore {
    path: PathBuf,
    original: String,
}

impl Drop for Restore {
    fn drop(&mut self) {
        fs::write(&self.path, &self.original).expect("restore the mutated file");
    }
}

fn run_mutation(cargo: &Cargo, m: &Mutation) -> Outcome {
    let path = cargo.tree.join(&m.file);
    let Ok(original) = fs::read_to_string(&path) else {
        return Outcome::Stale {
            detail: format!("{} is not tracked", m.file),
        };
    };
    let count = original.matches(m.find.as_str()).count();
    if count != 1 {
        return Outcome::Stale {
            detail: format!("`find` occurs {count} times in {}", m.file),
        };
    }
    let mutated = original.replacen(&m.find, m.replace.as_deref().unwrap_or(""), 1);
    if m.file.ends_with(".wgsl") {
        if let Some(e) = wgsl_error(&cargo.tree, &m.file, &original) {
            panic!("the unmutated {} does not validate here: {e}", m.file);
        }
        if let Some(e) = wgsl_error(&cargo.tree, &m.file, &mutated) {
            return Outcome::Invalid {
                detail: format!("WGSL: {}", first_line(&e)),
            };
        }
    }
    let _ = fs::remove_file(cargo.log_path(&m.id));
    fs::write(&path, &mutated).unwrap();
    let _restore = Restore { path, original };
    for sel in &m.tests {
        if let Err(e) = cargo.build(sel, &m.id) {
            return Outcome::Invalid {
                detail: format!("does not compile: {}", first_line(&e)),
            };
        }
        let by = match cargo.test(sel, &m.id) {
            Run::Passed => continue,
            Run::Failed { failing } => format!("{}: {}", sel.join(" "), failing.join(", ")),
            Run::TimedOut => format!("{}: timed out", sel.join(" ")),
        };
        return Outcome::Caught { by };
    }
    let tried: Vec<String> = m.tests.iter().map(|sel| sel.join(" ")).collect();
    Outcome::Survived {
        tried: format!("passed: {}", tried.join("; ")),
    }
}

fn first_line(text: &str) -> &str {
    text.lines()
        .find(|l| l.contains("error"))
        .unwrap_or_else(|| text.lines().next().unwrap_or(""))
        .trim()
}

/// Parses and validates a shader as the crate builds it (prelude + file with its `#include`s
/// pasted in, in both precisions), so a mutant that would only fail at pipeline creation is
/// reported as invalid, not caught. An included file is checked inside every shader that
/// includes it; the precision preludes are not standalone shaders and are not checked.
fn wgsl_error(tree: &Path, file: &str, text: &str) -> Option<String> {
    if file.contains("precision_") {
        return None;
    }
    let name = file.trim_start_matches("shaders/");
    // The harness of a user's layer is a module only around a layer: validate it around GELU's
    // (which declares no tensors, so the harness needs no generated code).
    if name == "custom_layer.wgsl" {
        let layer = fs::read_to_string(tree.join("tests/layers/gelu.wgsl")).unwrap();
        return validate(tree, &format!("{layer}\n{text}"));
    }
    let included = wgrad::gpu::kernel::INCLUDES.iter().any(|(f, _)| *f == name);
    if !included {
        return validate(tree, &expand_includes(tree, text, None));
    }
    // Validate it inside every whole shader that pulls it in, directly or through another
    // include (which is no shader on its own).
    let marker = "// (the included file under test)";
    let mut shaders: Vec<PathBuf> = fs::read_dir(tree.join("shaders"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|path| {
            let file = path.file_name().unwrap().to_str().unwrap();
            !wgrad::gpu::kernel::INCLUDES.iter().any(|(f, _)| *f == file)
        })
        .collect();
    shaders.sort();
    shaders
        .iter()
        .map(|path| fs::read_to_string(path).unwrap())
        .filter(|shader| expand_includes(tree, shader, Some((name, marker))).contains(marker))
        .find_map(|shader| validate(tree, &expand_includes(tree, &shader, Some((name, text)))))
}

/// `text` with each `#include "name"` line replaced by that file of the tree (or by
/// `replacement` for the file it names), itself expanded, as the crate's shader loader does.
fn expand_includes(tree: &Path, text: &str, replacement: Option<(&str, &str)>) -> String {
    let lines: Vec<String> = text
        .lines()
        .map(|line| match line.trim().strip_prefix("#include ") {
            Some(name) => {
                let name = name.trim().trim_matches('"');
                let body = match replacement {
                    Some((file, body)) if file == name => body.to_string(),
                    _ => fs::read_to_string(tree.join("shaders").join(name)).unwrap(),
                };
                expand_includes(tree, &body, replacement)
            }
            None => line.to_string(),
        })
        .collect();
    lines.join("\n")
}

fn validate(tree: &Path, text: &str) -> Option<String> {
    use wgpu::naga::front::wgsl;
    use wgpu::naga::valid::{Capabilities, ValidationFlags, Validator};
    use wgrad::nn::CrossEntropy;
    let preludes = ["precision_f32.wgsl", "precision_f64.wgsl"];
    let losses = [CrossEntropy::LogSoftmax, CrossEntropy::Book];
    for (prelude, loss) in preludes.iter().flat_map(|p| losses.map(|l| (p, l))) {
        let prelude = fs::read_to_string(tree.join("shaders").join(prelude)).unwrap();
        // As kernel::source_for builds a shader, with the prelude of the tree under test.
        let constants = wgrad::gpu::kernel::host_constants(loss);
        let source = format!("{prelude}\n{constants}\n{text}");
        let module = match wgsl::parse_str(&source) {
            Ok(module) => module,
            Err(e) => return Some(e.emit_to_string(&source)),
        };
        let mut validator = Validator::new(ValidationFlags::all(), Capabilities::all());
        if let Err(e) = validator.validate(&module) {
            return Some(format!("{:?}", e.into_inner()));
        }
    }
    None
}

fn row(id: &str, outcome: &Outcome, secs: f64) -> String {
    format!(
        "{id:<44} {:<9} {secs:6.0}s  {}",
        outcome.label(),
        outcome.detail()
    )
}

fn summary(rows: &[(&Mutation, Outcome, f64)], total: f64) -> String {
    let mut s = String::new();
    writeln!(
        s,
        "{:<44} {:<9} {:>7}  detail",
        "mutation", "outcome", "secs"
    )
    .unwrap();
    for (m, outcome, secs) in rows {
        writeln!(s, "{}", row(&m.id, outcome, *secs)).unwrap();
    }
    let count = |label: &str| rows.iter().filter(|(_, o, _)| o.label() == label).count();
    writeln!(s, "\ntotal {total:.0}s").unwrap();
    let (stale, invalid) = (count("STALE"), count("INVALID"));
    write!(
        s,
        "{} caught, {} survived",
        count("caught"),
        count("SURVIVED")
    )
    .unwrap();
    if stale + invalid > 0 {
        write!(s, ", {stale} stale, {invalid} invalid").unwrap();
    }
    writeln!(s).unwrap();
    s
}
