//! The `wgrad` binary as the CLI tests run it, and the synthetic IDX files they feed it.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use flate2::write::GzEncoder;
use flate2::Compression;

pub const IMAGES_MAGIC: u32 = 2051;
pub const LABELS_MAGIC: u32 = 2049;
/// `main` exits with this on every reported error; clap uses it for usage errors too.
pub const ERROR_EXIT: i32 = 2;

pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

pub fn wgrad(args: &[&str]) -> Run {
    let Output {
        status,
        stdout,
        stderr,
    } = Command::new(env!("CARGO_BIN_EXE_wgrad"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("the wgrad binary runs");
    Run {
        code: status.code(),
        stdout: String::from_utf8(stdout).expect("stdout is UTF-8"),
        stderr: String::from_utf8(stderr).expect("stderr is UTF-8"),
    }
}

/// Runs `wgrad ARGS`, which must fail with [`ERROR_EXIT`] naming every one of `expected` on
/// stderr.
pub fn wgrad_fails(args: &[&str], expected: &[&str]) -> Run {
    let run = wgrad(args);
    assert_eq!(
        run.code,
        Some(ERROR_EXIT),
        "wgrad {args:?} should fail with exit status {ERROR_EXIT}; stderr:\n{}",
        run.stderr
    );
    assert_mentions(&run.stderr, expected);
    run
}

pub fn path_str(p: &Path) -> &str {
    p.to_str().expect("temp paths are UTF-8")
}

pub fn assert_mentions(text: &str, parts: &[&str]) {
    for part in parts {
        assert!(text.contains(part), "stderr lacks {part:?}:\n{text}");
    }
}

pub fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

pub fn idx(magic: u32, dims: &[u32], body: &[u8]) -> Vec<u8> {
    let mut bytes = magic.to_be_bytes().to_vec();
    for d in dims {
        bytes.extend(d.to_be_bytes());
    }
    bytes.extend(body);
    bytes
}

pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = GzEncoder::new(Vec::new(), Compression::fast());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

pub fn labels_for(count: u32) -> Vec<u8> {
    (0..count).map(|i| (i % 10) as u8).collect()
}

/// `count` side×side images in which digit d lights pixel d (and a faint background that
/// varies), so that a net can learn them; labels cycle through 0–9.
pub fn images_idx(count: u32, side: u32) -> Vec<u8> {
    let size = (side * side) as usize;
    let mut pixels = Vec::with_capacity(count as usize * size);
    for (i, label) in labels_for(count).into_iter().enumerate() {
        for p in 0..size {
            let lit = p % 10 == usize::from(label);
            pixels.push(if lit { 255 } else { ((i + p) % 7) as u8 * 8 });
        }
    }
    idx(IMAGES_MAGIC, &[count, side, side], &pixels)
}

pub fn labels_idx(count: u32) -> Vec<u8> {
    idx(LABELS_MAGIC, &[count], &labels_for(count))
}

/// A folder of 12×12 synthetic images under MNIST's names: 600 to train on and 100 to test (30
/// steps an epoch at batch 20).
pub fn small_idx_folder() -> tempfile::TempDir {
    use wgrad::data::{TEST_IMAGES, TEST_LABELS, TRAIN_IMAGES, TRAIN_LABELS};
    let dir = tempfile::TempDir::new().unwrap();
    let d = dir.path();
    write(d, TRAIN_IMAGES, &images_idx(600, 12));
    write(d, TRAIN_LABELS, &labels_idx(600));
    write(d, TEST_IMAGES, &images_idx(100, 12));
    write(d, TEST_LABELS, &labels_idx(100));
    dir
}

pub fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    fs::write(&path, bytes).unwrap();
    path
}

/// Sends `signal` (INT, TERM, …) to `child` through the shell's builtin kill: a bare CI image
/// may lack procps' /usr/bin/kill.
pub fn send_signal(child: &std::process::Child, signal: &str) {
    let kill = format!("kill -{signal} {}", child.id());
    let sent = Command::new("sh").args(["-c", &kill]).status().unwrap();
    assert!(sent.success(), "{kill} failed");
}

/// `wgrad ARGS` running, its stderr read as far as the first line that the test waits for.
pub struct Running {
    pub child: std::process::Child,
    stderr: std::io::BufReader<std::process::ChildStderr>,
    /// Stderr up to and including the awaited line.
    pub seen: String,
}

impl Running {
    /// Starts `wgrad ARGS` (stdout piped, for a `--json` report) and reads its stderr until a
    /// line for which `awaited` holds.
    pub fn until(args: &[&str], awaited: impl Fn(&str) -> bool) -> Running {
        use std::io::BufRead;
        let mut child = Command::new(env!("CARGO_BIN_EXE_wgrad"))
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the wgrad binary runs");
        let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
        let mut seen = String::new();
        loop {
            let mut line = String::new();
            let read = stderr.read_line(&mut line).unwrap();
            assert!(
                read > 0,
                "wgrad {args:?} ended before the awaited line: {seen}"
            );
            seen.push_str(&line);
            if awaited(&line) {
                break;
            }
        }
        Running {
            child,
            stderr,
            seen,
        }
    }

    /// Waits for the end: the exit status, stdout, and stderr after the awaited line.
    pub fn finish(mut self) -> (std::process::ExitStatus, String, String) {
        let mut rest = String::new();
        std::io::Read::read_to_string(&mut self.stderr, &mut rest).unwrap();
        let output = self.child.wait_with_output().unwrap();
        let stdout = String::from_utf8(output.stdout).expect("stdout is UTF-8");
        (output.status, stdout, rest)
    }
}
