//! `wgrad bench train`: the figures it reports (as text, one a line, and as one JSON object),
//! that its dispatches per step are those of the step the trainer records, that bad input is
//! refused before the GPU is opened, and that `wgrad bench`'s gradient timing is still there
//! beside it.

mod common;

use common::cli::*;
use common::{ctx, STATE_WORDS, STATS_WORDS};
use serde_json::Value;
use wgrad::data::GpuDataset;
use wgrad::gpu::{GpuBuffer, Precision};
use wgrad::nn::{init_params, Activation, Init, Kernels, Model, NetSpec, Recorder, Workspace};
use wgrad::optim::{GpuOptimizer, Optimizer};

/// The book's TwoLayerNet with plain SGD, as the CLI tests bench it.
const TWO_LAYER: [&str; 4] = ["--hidden", "50", "--optimizer", "sgd"];

fn json_of(run: &Run) -> Value {
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(run.stdout.trim().lines().count(), 1, "{}", run.stdout);
    serde_json::from_str(run.stdout.trim())
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{}", run.stdout))
}

fn number(value: &Value, key: &str) -> f64 {
    value[key]
        .as_f64()
        .unwrap_or_else(|| panic!("{key} is not a number in {value}"))
}

fn bench_train(args: &[&str]) -> Run {
    let mut all = vec!["bench", "train"];
    all.extend_from_slice(args);
    wgrad(&all)
}

/// Kernel launches in one training step of 784-50-10 ReLU with SGD at batch 100, recorded here
/// as the trainer records it (gather, L2 penalty, forward, backward, metrics, update, advance).
fn recorded_two_layer_step() -> usize {
    let ctx = ctx();
    let precision = Precision::F32;
    let mnist = wgrad::data::bundled().unwrap();
    let spec = NetSpec::mlp(784, &[50], 10, Activation::Relu);
    let kernels = Kernels::with_loss(ctx, precision, spec.conventions.cross_entropy()).unwrap();
    let params = init_params(&spec, Init::Std(0.01), 42);
    let model = Model::new(ctx, &spec, &params, precision).unwrap();
    let rec = Recorder {
        ctx,
        kernels: &kernels,
        model: &model,
    };
    let data = GpuDataset::new(ctx, &mnist.train);
    let ws = Workspace::new(ctx, &model, 100, 1, true);
    let state = GpuBuffer::zeroed(ctx, "state", STATE_WORDS, 4);
    let stats = GpuBuffer::real(ctx, "stats", STATS_WORDS, precision);
    let losses = GpuBuffer::real(ctx, "step_losses", 40, precision);
    let sgd = Optimizer::from_name("sgd", Some(0.01)).unwrap();
    let optimizer = GpuOptimizer::new(&rec.gpu(), &model, &sgd, None, &state).unwrap();
    let step =
        wgrad::train::step_dispatches(&rec, &data, &ws, (&state, &stats, &losses), &optimizer);
    step.iter().filter(|d| !d.workgroups().contains(&0)).count()
}

#[test]
fn json_has_every_figure_and_the_recorded_steps_dispatches() {
    let mut args = TWO_LAYER.to_vec();
    args.extend(["--steps", "50", "--json"]);
    let report = json_of(&bench_train(&args));
    for key in [
        "net",
        "parameters",
        "batch",
        "precision",
        "optimizer",
        "lr",
        "adapter",
        "warmup_steps",
        "steps",
        "seconds",
        "steps_per_second",
        "samples_per_second",
        "dispatches_per_step",
        "steps_per_submit",
        "submits_per_step",
        "commit",
        "version",
    ] {
        assert!(report.get(key).is_some(), "no {key} in {report}");
    }
    assert_eq!(report["net"], "affine50,relu,affine10", "{report}");
    assert_eq!(number(&report, "parameters"), 39_760.0);
    assert_eq!(number(&report, "batch"), 100.0);
    assert_eq!(report["precision"], "f32");
    assert_eq!(report["optimizer"], "sgd");
    assert!(report["adapter"]["name"].is_string(), "{report}");
    assert!(report["adapter"]["driver_info"].is_string(), "{report}");
    // One epoch of the bundled 8,004 images at batch 100 warms up; then the 50 timed steps.
    assert_eq!(number(&report, "warmup_steps"), 80.0);
    assert_eq!(number(&report, "steps"), 50.0);
    let (seconds, steps_per_second, samples_per_second) = (
        number(&report, "seconds"),
        number(&report, "steps_per_second"),
        number(&report, "samples_per_second"),
    );
    assert!(seconds > 0.0 && steps_per_second > 0.0, "{report}");
    assert!((steps_per_second * seconds - 50.0).abs() < 1e-6, "{report}");
    let per_batch = steps_per_second * 100.0;
    assert!(
        (samples_per_second - per_batch).abs() <= 1e-9 * per_batch,
        "samples/s {samples_per_second} is not steps/s × batch = {per_batch}"
    );
    // The 50 timed steps are epoch 2 cut short: a submit of 40 steps and one of 10.
    assert_eq!(number(&report, "steps_per_submit"), 40.0);
    assert_eq!(number(&report, "submits_per_step"), 2.0 / 50.0);
    let dispatches = number(&report, "dispatches_per_step");
    // Affine + ReLU, affine, the loss with its metrics, two weight gradients each with its
    // bias's, the input gradient through ReLU', the gather and the update.
    assert!(
        dispatches > 0.0 && dispatches <= 8.0,
        "dispatches per TwoLayerNet step: {dispatches}, more than the 8 its fusions leave"
    );
    assert_eq!(dispatches as usize, recorded_two_layer_step(), "{report}");
    // The commit is the build's, as --version names it.
    let version = wgrad(&["--version"]).stdout;
    let commit = report["commit"].as_str().unwrap();
    assert!(
        version.contains(&format!("(commit {commit},")),
        "{commit} vs {version}"
    );
    // `train --json` reports the same count for the same net.
    let train = json_of(&wgrad(&[
        "train",
        "--hidden",
        "50",
        "--optimizer",
        "sgd",
        "--epochs",
        "1",
        "--json",
    ]));
    assert_eq!(train["dispatches_per_step"], report["dispatches_per_step"]);
}

#[test]
fn text_has_one_figure_a_line() {
    let mut args = TWO_LAYER.to_vec();
    args.extend(["--steps", "5", "--batch-size", "1000"]);
    let run = bench_train(&args);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let labels: Vec<&str> = (run.stdout.lines())
        .map(|l| l.split(": ").next().unwrap())
        .collect();
    assert_eq!(
        labels,
        [
            "net",
            "parameters",
            "batch",
            "precision",
            "optimizer",
            "adapter",
            "warm-up steps (untimed)",
            "steps",
            "seconds",
            "steps/s",
            "samples/s",
            "dispatches per step",
            "submits per step",
            "commit",
        ],
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("\nbatch: 1000\n"), "{}", run.stdout);
    // 8 steps of 1,000 images make the warm-up epoch.
    assert!(
        run.stdout.contains("\nwarm-up steps (untimed): 8\n"),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("\nsteps: 5\n"), "{}", run.stdout);
}

#[test]
fn bad_input_is_refused_before_the_gpu_is_opened() {
    for (args, expected) in [
        (
            &["--steps", "0"][..],
            &["--steps must be at least 1", "--steps 300"][..],
        ),
        (&["--batch-size", "0"], &["batch size must be at least 1"]),
        (&["--optimizer", "sgdd"], &["unknown optimizer 'sgdd'"]),
        (&["--epochs", "2"], &["unexpected argument '--epochs'"]),
    ] {
        let mut all = vec!["bench", "train"];
        all.extend_from_slice(args);
        let run = wgrad_fails(&all, expected);
        assert!(run.stdout.is_empty(), "{args:?}: {}", run.stdout);
        assert!(
            !run.stderr.contains("wgrad: adapter"),
            "{args:?}: the GPU was opened first:\n{}",
            run.stderr
        );
    }
}

#[test]
fn bench_keeps_its_gradient_timing_beside_train() {
    let run = wgrad(&[
        "bench",
        "--hidden",
        "50",
        "--batch",
        "3",
        "--precision",
        "f32",
        "--variants",
        "incremental",
        "--repeats",
        "1",
        "--json",
    ]);
    let report = json_of(&run);
    assert_eq!(number(&report, "parameters"), 39_760.0);
    assert_eq!(report["numeric"][0]["strategy"], "incremental");
    // The gradient flags belong to `bench`, not to `bench train`, and the other way round.
    wgrad_fails(&["bench", "--hidden", "50", "train"], &["train"]);
    wgrad_fails(&["bench", "train", "--variants", "full"], &["--variants"]);
    let help = wgrad(&["bench", "--help"]).stdout;
    assert!(help.contains("wgrad bench train"), "{help}");
    let help = wgrad(&["bench", "train", "--help"]).stdout;
    for flag in [
        "--steps",
        "--batch-size",
        "--optimizer",
        "--lr",
        "--hidden",
        "--json",
    ] {
        assert!(
            help.contains(flag),
            "bench train --help lacks {flag}:\n{help}"
        );
    }
    assert!(help.contains("Examples:\n  wgrad bench train"), "{help}");
}

#[test]
fn profile_times_every_dispatch_of_the_step_alone() {
    let mut args = TWO_LAYER.to_vec();
    args.extend(["--steps", "5", "--profile", "--json"]);
    let report = json_of(&bench_train(&args));
    let profile = &report["profile"];
    let dispatches = profile["dispatches"].as_array().expect("a dispatch list");
    assert_eq!(
        dispatches.len() as f64,
        number(&report, "dispatches_per_step"),
        "{profile}"
    );
    let kernels: Vec<&str> = dispatches
        .iter()
        .map(|d| d["kernel"].as_str().unwrap())
        .collect();
    assert!(
        kernels[0].starts_with("gather.wgsl::gather/"),
        "{kernels:?}"
    );
    assert!(
        kernels.last().unwrap().starts_with("optim.wgsl::sgd/"),
        "{kernels:?}"
    );
    // Four matmuls (two forward, two weight gradients with their biases) and dX: each with a
    // rate, nothing else with one.
    for d in dispatches {
        let is_matmul = d["kernel"].as_str().unwrap().starts_with("matmul.wgsl::");
        assert_eq!(d["gflops"].is_number(), is_matmul, "{d}");
        assert!(d["seconds"].as_f64().unwrap() > 0.0, "{d}");
    }
    assert_eq!(
        kernels.iter().filter(|k| k.starts_with("matmul")).count(),
        5
    );
    let fastest = dispatches
        .iter()
        .map(|d| d["seconds"].as_f64().unwrap())
        .fold(f64::INFINITY, f64::min);
    assert_eq!(profile["dispatch_seconds"].as_f64().unwrap(), fastest);
    assert!(
        profile["matmul_gflops"].as_f64().unwrap() > 0.0,
        "{profile}"
    );
}
