//! `wgrad --version` names the commit it was built from and the wgpu it runs on:
//! WGRAD_COMMIT (`git rev-parse --short HEAD`, "unknown" outside a git checkout) and
//! WGRAD_WGPU_VERSION (wgpu's version in Cargo.lock).

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    (out.status.success() && !text.trim().is_empty()).then(|| text.trim().to_string())
}

fn main() {
    let commit = git(&["rev-parse", "--short", "HEAD"]).unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=WGRAD_COMMIT={commit}");
    // Rebuild when HEAD moves (a commit, a checkout); in a worktree the git dir is elsewhere.
    if let Some(dir) = git(&["rev-parse", "--git-dir"]) {
        for file in ["HEAD", "logs/HEAD"] {
            println!("cargo:rerun-if-changed={dir}/{file}");
        }
    }
    let lock = std::fs::read_to_string("Cargo.lock").unwrap_or_default();
    let wgpu = (lock.split("[[package]]"))
        .find(|p| p.contains("\nname = \"wgpu\"\n"))
        .and_then(|p| p.lines().find_map(|l| l.strip_prefix("version = ")))
        .map(|v| v.trim_matches('"').to_string())
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=WGRAD_WGPU_VERSION={wgpu}");
    println!("cargo:rerun-if-changed=Cargo.lock");
    println!("cargo:rerun-if-changed=build.rs");
}
