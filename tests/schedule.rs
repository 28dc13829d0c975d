//! Learning-rate schedules through `wgrad train`: the lr of every step, as the metrics file
//! records it, against PyTorch's schedulers replayed here the way PyTorch computes them
//! (StepLR and CosineAnnealingLR by their recursive `get_lr`, OneCycleLR by its phases, the
//! warmup as a LambdaLR in front through SequentialLR), independently of wgrad's closed forms.
//! That the GPU applies each step's rate and momentum is tests/gpu_optim.rs's concern.

use std::f64::consts::PI;
use std::path::Path;

mod common;

use common::cli::*;
use serde_json::Value;
use tempfile::TempDir;

/// 600 training images at batch 20: 30 steps an epoch, 90 in three epochs.
const STEPS_PER_EPOCH: usize = 30;
const TOTAL: usize = 90;

/// The lr of each of the run's steps, from its per-step metrics records.
fn step_rates(data: &Path, flags: &[&str]) -> Vec<f64> {
    let out = TempDir::new().unwrap();
    let path = out.path().join("m.jsonl");
    let mut args = vec!["train", "--data", path_str(data), "--batch-size", "20"];
    args.extend_from_slice(&["--hidden", "8", "--epochs", "3", "--steps-per-submit", "8"]);
    args.extend_from_slice(&["--metrics", path_str(&path), "--log-every", "1"]);
    args.extend_from_slice(flags);
    let run = wgrad(&args);
    assert_eq!(run.code, Some(0), "{flags:?}: {}", run.stderr);
    let text = std::fs::read_to_string(&path).unwrap();
    let records: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let steps: Vec<&Value> = records.iter().filter(|r| r["kind"] == "step").collect();
    assert_eq!(steps.len(), TOTAL, "{flags:?}");
    for (k, r) in steps.iter().enumerate() {
        assert_eq!(r["step"], k + 1);
    }
    steps.iter().map(|r| r["lr"].as_f64().unwrap()).collect()
}

fn assert_rates(flags: &[&str], got: &[f64], want: &[f64]) {
    assert_eq!(got.len(), want.len());
    for (k, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= 1e-12 * w.abs().max(1e-300),
            "{flags:?} step {k}: lr {g:e}, PyTorch's {w:e}"
        );
    }
}

/// StepLR stepped once per epoch: `get_lr` multiplies the current lr by γ at multiples of
/// step_size.
fn step_lr(base: f64, step_size: usize, gamma: f64) -> Vec<f64> {
    let (mut lr, mut rates) = (base, Vec::new());
    for epoch in 0..TOTAL / STEPS_PER_EPOCH {
        if epoch != 0 && epoch % step_size == 0 {
            lr *= gamma;
        }
        rates.extend([lr; STEPS_PER_EPOCH]);
    }
    rates
}

/// CosineAnnealingLR's recursive `get_lr` over `t_max` steps.
fn cosine_lr(base: f64, eta_min: f64, t_max: usize) -> Vec<f64> {
    let mut rates = vec![base];
    for e in 1..t_max {
        let (e, t) = (e as f64, t_max as f64);
        let last = rates[rates.len() - 1];
        rates.push(
            (1.0 + (PI * e / t).cos()) / (1.0 + (PI * (e - 1.0) / t).cos()) * (last - eta_min)
                + eta_min,
        );
    }
    rates
}

/// OneCycleLR (two phases, cos annealing, PyTorch's defaults).
fn one_cycle_lr(max_lr: f64, total: usize) -> Vec<f64> {
    let (initial, pct_start) = (max_lr / 25.0, 0.3);
    let min = initial / 1e4;
    let rise_end = pct_start * total as f64 - 1.0;
    let cos = |start: f64, end: f64, pct: f64| end + (start - end) / 2.0 * ((PI * pct).cos() + 1.0);
    (0..total)
        .map(|k| {
            let k = k as f64;
            if k <= rise_end {
                cos(initial, max_lr, k / rise_end)
            } else {
                let last = (total - 1) as f64;
                cos(max_lr, min, (k - rise_end) / (last - rise_end))
            }
        })
        .collect()
}

/// LambdaLR(lambda k: (k + 1) / n) for the first n steps.
fn warmup(base: f64, n: usize) -> Vec<f64> {
    (0..n).map(|k| base * (k + 1) as f64 / n as f64).collect()
}

#[test]
fn every_schedules_lr_matches_pytorchs_at_every_step() {
    let data = small_idx_folder();
    let d = data.path();
    let cases: Vec<(Vec<&str>, Vec<f64>)> = vec![
        (vec!["--lr", "0.05"], vec![0.05; TOTAL]),
        (
            vec!["--lr", "0.05", "--lr-schedule", "step:2:0.3"],
            step_lr(0.05, 2, 0.3),
        ),
        (
            vec![
                "--lr",
                "0.05",
                "--lr-schedule",
                "cosine",
                "--min-lr",
                "0.001",
            ],
            cosine_lr(0.05, 0.001, TOTAL),
        ),
        (
            vec![
                "--optimizer",
                "adam",
                "--lr",
                "0.01",
                "--lr-schedule",
                "onecycle",
            ],
            one_cycle_lr(0.01, TOTAL),
        ),
        (
            vec![
                "--lr",
                "0.05",
                "--warmup-steps",
                "10",
                "--lr-schedule",
                "cosine",
            ],
            [warmup(0.05, 10), cosine_lr(0.05, 0.0, TOTAL - 10)].concat(),
        ),
        (
            vec!["--lr", "0.05", "--warmup-steps", "7"],
            [warmup(0.05, 7), vec![0.05; TOTAL - 7]].concat(),
        ),
    ];
    for (flags, want) in cases {
        assert_rates(&flags, &step_rates(d, &flags), &want);
    }
}

#[test]
fn schedules_the_run_cannot_follow_are_refused() {
    let data = small_idx_folder();
    let d = path_str(data.path());
    let base = ["train", "--data", d, "--hidden", "8", "--epochs", "1"];
    for (flags, names) in [
        (&["--lr-schedule", "cosine:3"][..], "step:EPOCHS:GAMMA"),
        (&["--lr-schedule", "step:0:0.5"][..], "E ≥ 1"),
        (
            &["--lr-schedule", "step:1:-2"][..],
            "GAMMA must be a positive",
        ),
        (&["--min-lr", "0.001"][..], "--lr-schedule cosine"),
        (
            &["--lr-schedule", "cosine", "--min-lr", "5"][..],
            "between 0 and",
        ),
        (
            &["--warmup-steps", "6", "--lr-schedule", "cosine"][..],
            "fewer warmup steps",
        ),
        (
            &["--batch-size", "200", "--lr-schedule", "onecycle"][..],
            "at least 4 steps",
        ),
    ] {
        wgrad_fails(&[&base[..], flags].concat(), &[names]);
    }
}
