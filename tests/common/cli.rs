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
