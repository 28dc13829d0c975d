//! A resumed run is the same run, bit for bit. Through the library, every optimizer is stopped
//! mid-epoch and at an epoch boundary, stored in a full-state checkpoint file, read back and
//! continued; through the binary, runs are interrupted by SIGINT and SIGTERM at random steps and
//! resumed with `--resume`. Each time the final parameters, BatchNorm statistics, optimizer state
//! and reported figures must equal those of a run that was never stopped.

use std::path::Path;

mod common;

use common::cli::*;
use serde_json::Value;
use tempfile::TempDir;
use wgrad::data::{TEST_IMAGES as TEST_IMAGES_FILE, TEST_LABELS as TEST_LABELS_FILE};
use wgrad::data::{TRAIN_IMAGES as TRAIN_IMAGES_FILE, TRAIN_LABELS as TRAIN_LABELS_FILE};
use wgrad::gpu::Precision;
use wgrad::nn::{Activation, Init, NetSpec};
use wgrad::optim::{LrSchedule, Optimizer, Schedule};
use wgrad::train::{self, CheckpointEvery, EpochReport, RunRecord, RunState, TrainConfig};
use wgrad::{checkpoint, data};

// ---------------------------------------------------------------------------------------------
// Through the library

/// Every optimizer, with the hyperparameters that switch on all three of its state slots, and
/// β1 ≠ β2 so that a swap shows.
fn optimizers() -> Vec<Optimizer> {
    let named = |name: &str| Optimizer::from_name(name, Some(0.02)).unwrap();
    let mut all = vec![named("sgd"), named("momentum"), named("nesterov")];
    all.push(Optimizer::Adagrad {
        lr: 0.02,
        lr_decay: 0.01,
        eps: 1e-10,
        initial_accumulator: 0.1,
        weight_decay: 1e-4,
    });
    all.push(Optimizer::Rmsprop {
        lr: 0.002,
        alpha: 0.9,
        eps: 1e-8,
        momentum: 0.5,
        centered: true,
        weight_decay: 0.0,
    });
    all.push(Optimizer::Adam {
        lr: 0.003,
        beta1: 0.8,
        beta2: 0.95,
        eps: 1e-8,
        amsgrad: true,
        weight_decay: 0.0,
    });
    all.push(named("adamw"));
    all
}

fn small_mnist() -> data::Mnist {
    let bundled = data::bundled().unwrap();
    data::Mnist {
        train: bundled.train.take(700),
        test: bundled.test.take(100),
    }
}

/// Two epochs of 15 steps (about 630 of the 700 images; a tenth is held out for validation), with
/// BatchNorm and dropout, handing out its state every 5 steps.
fn config(optimizer: Optimizer, precision: Precision) -> TrainConfig {
    let spec = NetSpec::mlp(784, &[12, 8], 10, Activation::Relu);
    TrainConfig {
        spec: spec.with_batchnorm().with_dropout(0.2),
        init: Init::He,
        optimizer,
        epochs: 2,
        batch_size: 40,
        seed: 11,
        precision,
        steps_per_submit: 4,
        checkpoint_every: Some(CheckpointEvery::Steps(5)),
        // The split is redrawn on resume from the seed: a wrong one would end elsewhere.
        val_fraction: 0.1,
        ..Default::default()
    }
}

/// A run's final state and figures, with each number as its bits (and timings left out).
fn fingerprint(run: &RunState, history: &[EpochReport]) -> Vec<u64> {
    let mut bits: Vec<u64> = run.params.iter().map(|v| v.to_bits()).collect();
    for (_, _, values) in &run.state {
        bits.extend(values.iter().map(|v| v.to_bits()));
    }
    for (_, values) in &run.optimizer.slots {
        bits.extend(values.iter().map(|v| v.to_bits()));
    }
    bits.extend(run.optimizer.beta_powers.map(f64::to_bits));
    for e in history {
        bits.extend([e.train_loss, e.train_accuracy].map(f64::to_bits));
        let held_out = [e.val_loss, e.val_accuracy, e.test_loss, e.test_accuracy];
        bits.extend(held_out.map(|v| v.map_or(u64::MAX, f64::to_bits)));
    }
    bits.push(run.progress.steps);
    bits
}

/// Trains `config` straight, then again from its checkpoints at step 10 (mid-epoch) and 15 (the
/// epoch boundary), each written to a file and read back; all three must end the same.
fn assert_resumes_bit_for_bit(mnist: &data::Mnist, config: &TrainConfig, dir: &Path) {
    let ctx = common::ctx();
    let mut stops = Vec::new();
    let mut keep = |run: &RunState| {
        stops.push(run.clone());
        Ok(())
    };
    let hooks = train::Hooks {
        on_checkpoint: Some(&mut keep),
        ..Default::default()
    };
    let straight = train::train_with(ctx, mnist, config, hooks).unwrap();
    let steps: Vec<u64> = stops.iter().map(|r| r.progress.steps).collect();
    assert_eq!(steps, [5, 10, 15, 20, 25, 30]);
    let want = fingerprint(&straight.run, &straight.history);
    let name = config.optimizer.name();
    for stop in [&stops[1], &stops[2]] {
        let path = dir.join(format!("{name}-{}.safetensors", stop.progress.steps));
        let record = RunRecord::new(config, stop, small_mnist().identity(), None);
        checkpoint::save_run(&path, stop, &record, &Default::default()).unwrap();
        let (record, stored) = checkpoint::load_run(&path).unwrap();
        assert_eq!(&stored, stop, "{name}: the file gives back what was stored");
        let mut resumed_config = record.config;
        resumed_config.resume = Some(stored);
        let resumed = train::train(ctx, mnist, &resumed_config, None).unwrap();
        assert_eq!(resumed.history.len(), 2);
        assert!(
            fingerprint(&resumed.run, &resumed.history) == want,
            "{name} ({:?}): resumed at step {} it ends elsewhere than straight",
            config.precision,
            stop.progress.steps
        );
    }
}

#[test]
fn every_optimizer_resumes_bit_for_bit_mid_epoch_and_at_a_boundary() {
    let mnist = small_mnist();
    let dir = TempDir::new().unwrap();
    for precision in common::precisions() {
        for optimizer in optimizers() {
            assert_resumes_bit_for_bit(&mnist, &config(optimizer, precision), dir.path());
        }
    }
}

/// The schedule is part of the stored run: a resumed run takes the stored step's learning rate
/// (and one-cycle's momentum) from the GPU step counter, mid-epoch and at a boundary alike.
#[test]
fn scheduled_runs_resume_bit_for_bit() {
    let mnist = small_mnist();
    let dir = TempDir::new().unwrap();
    let optimizers = optimizers();
    let (momentum, adam) = (&optimizers[1], &optimizers[5]);
    for (optimizer, schedule, warmup_steps) in [
        (adam, Schedule::Onecycle, 0),
        (momentum, Schedule::Cosine { min_lr: 0.001 }, 7),
    ] {
        let mut config = config(optimizer.clone(), Precision::F32);
        config.schedule = LrSchedule {
            schedule,
            warmup_steps,
        };
        assert_resumes_bit_for_bit(&mnist, &config, dir.path());
    }
}

/// Stopped, the run's state names each optimizer slot as `torch.optim` does.
#[test]
fn a_full_state_checkpoint_names_optimizer_state_as_pytorch_does() {
    let dir = TempDir::new().unwrap();
    let mnist = small_mnist();
    let want = [
        ("momentum", vec!["momentum_buffer"]),
        ("adagrad", vec!["sum"]),
        ("rmsprop", vec!["square_avg", "momentum_buffer", "grad_avg"]),
        ("adam", vec!["exp_avg", "exp_avg_sq", "max_exp_avg_sq"]),
    ];
    for optimizer in optimizers() {
        let Some((_, slots)) = want.iter().find(|(n, _)| *n == optimizer.name()) else {
            continue;
        };
        let mut config = config(optimizer, Precision::F32);
        config.epochs = 1;
        let report = train::train(common::ctx(), &mnist, &config, None).unwrap();
        let path = dir.path().join("named.safetensors");
        let record = RunRecord::new(&config, &report.run, mnist.identity(), None);
        checkpoint::save_run(&path, &report.run, &record, &Default::default()).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        for slot in slots {
            for tensor in ["W1", "b1", "gamma1", "beta1", "W3"] {
                let name = format!("{slot}.{tensor}");
                assert!(
                    file.tensor(&name).is_ok(),
                    "no {name} in {:?}",
                    file.names()
                );
            }
        }
        assert!(file.tensor("W1").is_ok() && file.tensor("running_mean1").is_ok());
    }
}

// ---------------------------------------------------------------------------------------------
// Through the binary

const SIDE: u32 = 12;

/// 12×12 images, 1200 to train on and 100 to test: 60 steps an epoch at batch 20.
fn data_folder() -> TempDir {
    let dir = TempDir::new().unwrap();
    let d = dir.path();
    write(d, TRAIN_IMAGES_FILE, &images_idx(1200, SIDE));
    write(d, TRAIN_LABELS_FILE, &labels_idx(1200));
    write(d, TEST_IMAGES_FILE, &images_idx(100, SIDE));
    write(d, TEST_LABELS_FILE, &labels_idx(100));
    dir
}

/// The three runs the acceptance names: momentum MLP; MLP with BatchNorm, dropout and Adam; a
/// small convnet with RMSprop (momentum and centring on, so that all three slots are used).
const RUNS: [&[&str]; 3] = [
    &[
        "--hidden",
        "24,16",
        "--optimizer",
        "momentum",
        "--lr",
        "0.05",
    ],
    &[
        "--hidden",
        "24,16",
        "--batchnorm",
        "--dropout",
        "0.2",
        "--optimizer",
        "adam",
        "--beta1",
        "0.85",
    ],
    &[
        "--layers",
        "conv4x3,relu,maxpool2,affine10",
        "--optimizer",
        "rmsprop",
        "--lr",
        "0.003",
        "--momentum",
        "0.5",
        "--centered",
    ],
];

const EPOCHS: &str = "3";
const STEPS: u64 = 3 * 60;

fn train_args<'a>(data: &'a Path, run: &[&'a str], rest: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["train", "--data", path_str(data), "--batch-size", "20"];
    args.extend_from_slice(run);
    args.extend_from_slice(&["--steps-per-submit", "3", "--json"]);
    args.extend_from_slice(rest);
    args
}

/// A step in [lo, hi) that differs from run to run (printed on failure, to replay).
fn random_step(lo: u64, hi: u64) -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    lo + u64::from(nanos) % (hi - lo)
}

/// Runs wgrad with `args`, sends `signal` once it reports a periodic checkpoint at or past
/// `at_step`, and returns its exit code and stderr.
fn interrupt(args: &[&str], signal: &str, at_step: u64) -> (Option<i32>, String) {
    let run = Running::until(args, |line| {
        let step = line.split(".step").nth(1).and_then(|s| s.split('.').next());
        step.and_then(|s| s.parse::<u64>().ok())
            .is_some_and(|s| s >= at_step)
    });
    send_signal(&run.child, signal);
    let seen = run.seen.clone();
    let (status, _, rest) = run.finish();
    (status.code(), seen + &rest)
}

/// The tensors of a safetensors file, by name, as raw bytes.
fn tensors(path: &Path) -> Vec<(String, Vec<usize>, Vec<u8>)> {
    let bytes = std::fs::read(path).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut all: Vec<_> = file
        .tensors()
        .into_iter()
        .map(|(name, view)| (name, view.shape().to_vec(), view.data().to_vec()))
        .collect();
    all.sort_by(|a, b| a.0.cmp(&b.0));
    all
}

/// The reported figures of every epoch, timings left out.
fn figures(report: &Value) -> Vec<[f64; 4]> {
    let history = report["history"].as_array().expect("history");
    let get = |e: &Value, k: &str| e[k].as_f64().unwrap();
    let keys = ["train_loss", "train_accuracy", "test_loss", "test_accuracy"];
    history.iter().map(|e| keys.map(|k| get(e, k))).collect()
}

fn json(run: &Run) -> Value {
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    serde_json::from_str(run.stdout.trim()).unwrap()
}

/// Periodic step checkpoints show how far a run has got, so that a signal can be aimed.
const WATCHED: [&str; 4] = ["--checkpoint-every", "2s", "--keep", "1"];

#[test]
fn runs_interrupted_by_sigint_resume_bit_for_bit() {
    let data = data_folder();
    for (i, run) in RUNS.iter().enumerate() {
        let out = TempDir::new().unwrap();
        let file = |name: &str| out.path().join(name);
        let (straight, stopped, end) = (file("straight.st"), file("stopped.st"), file("end.st"));
        let args = train_args(data.path(), run, &["--epochs", EPOCHS]);
        let report = json(&wgrad(
            &[&args[..], &["--save", path_str(&straight)]].concat(),
        ));

        // At least an epoch before the end, so that the signal comes while it trains.
        let at = random_step(2, STEPS - 60);
        let watched = [&args[..], &WATCHED, &["--save", path_str(&stopped)]].concat();
        let (code, stderr) = interrupt(&watched, "INT", at);
        assert_eq!(code, Some(130), "run {i}, SIGINT at step {at}: {stderr}");
        assert_mentions(&stderr, &["interrupted at step", "wgrad train --resume"]);
        let resume = ["train", "--resume", path_str(&stopped), "--json", "--save"];
        let resumed = json(&wgrad(&[&resume[..], &[path_str(&end)]].concat()));
        assert!(
            tensors(&end) == tensors(&straight),
            "run {i}: stopped by SIGINT at step {at} and resumed, it ends elsewhere"
        );
        assert_eq!(
            figures(&resumed),
            figures(&report),
            "run {i}, SIGINT at step {at}"
        );
        assert_eq!(resumed["steps"], STEPS);
    }
}

#[test]
fn a_run_stopped_twice_by_sigterm_and_resumed_twice_is_the_same_run() {
    let data = data_folder();
    let out = TempDir::new().unwrap();
    let file = |name: &str| out.path().join(name);
    let (straight, stopped, end) = (file("straight.st"), file("stopped.st"), file("end.st"));
    let args = train_args(data.path(), RUNS[1], &["--epochs", EPOCHS]);
    let report = json(&wgrad(
        &[&args[..], &["--save", path_str(&straight)]].concat(),
    ));
    let (first, second) = (random_step(2, 60), random_step(70, STEPS - 60));
    let watched = [&args[..], &WATCHED, &["--save", path_str(&stopped)]].concat();
    let (code, stderr) = interrupt(&watched, "TERM", first);
    assert_eq!(code, Some(143), "SIGTERM at step {first}: {stderr}");
    let resume = ["train", "--resume", path_str(&stopped)];
    let again = [&resume[..], &WATCHED, &["--save", path_str(&stopped)]].concat();
    let (code, stderr) = interrupt(&again, "TERM", second);
    assert_eq!(code, Some(143), "SIGTERM at step {second}: {stderr}");
    let resumed = json(&wgrad(
        &[&resume[..], &["--json", "--save", path_str(&end)]].concat(),
    ));
    assert!(
        tensors(&end) == tensors(&straight),
        "stopped at steps {first} and {second}, it ends elsewhere"
    );
    assert_eq!(figures(&resumed), figures(&report));
}

/// A stored run of one epoch (the momentum MLP) on `data`, saved at `path`.
fn stored_run(data: &Path, path: &Path) {
    let args = train_args(data, RUNS[0], &["--epochs", "1", "--save", path_str(path)]);
    json(&wgrad(&args));
}

#[test]
fn flags_that_contradict_the_stored_run_are_refused_naming_both_values() {
    let data = data_folder();
    let out = TempDir::new().unwrap();
    let run = out.path().join("run.st");
    stored_run(data.path(), &run);
    let resume = |extra: &[&str]| {
        let args = [
            &["train", "--resume", path_str(&run), "--epochs", "2"][..],
            extra,
        ]
        .concat();
        wgrad(&args)
    };
    let cases: [(&[&str], &[&str]); 5] = [
        (
            &["--batch-size", "10"],
            &["--batch-size 10", "batch-size 20"],
        ),
        (&["--seed", "7"], &["--seed 7", "seed 42"]),
        (
            &["--optimizer", "adam"],
            &["\"name\":\"adam\"", "\"name\":\"sgd\""],
        ),
        (&["--lr", "0.1"], &["\"lr\":0.1", "\"lr\":0.05"]),
        (
            &["--hidden", "24,8"],
            &["affine24,relu,affine8", "affine24,relu,affine16"],
        ),
    ];
    for (flags, named) in cases {
        let refused = resume(flags);
        assert_eq!(
            refused.code,
            Some(ERROR_EXIT),
            "{flags:?}: {}",
            refused.stderr
        );
        assert_mentions(&refused.stderr, named);
        assert_mentions(
            &refused.stderr,
            &["contradicts the checkpoint", "drop the flag"],
        );
    }
    // A flag that agrees with the run is no contradiction.
    let agreeing = resume(&["--batch-size", "20", "--lr", "0.05", "--json"]);
    assert_eq!(json(&agreeing)["history"].as_array().unwrap().len(), 2);
}

#[test]
fn resuming_on_other_data_is_refused_and_the_same_data_elsewhere_is_accepted() {
    let data = data_folder();
    let out = TempDir::new().unwrap();
    let run = out.path().join("run.st");
    stored_run(data.path(), &run);
    // The same files, gzipped, in another folder: the same data.
    let elsewhere = TempDir::new().unwrap();
    for name in [
        TRAIN_IMAGES_FILE,
        TRAIN_LABELS_FILE,
        TEST_IMAGES_FILE,
        TEST_LABELS_FILE,
    ] {
        let bytes = std::fs::read(data.path().join(name)).unwrap();
        write(elsewhere.path(), &format!("{name}.gz"), &gzip(&bytes));
    }
    let resume = |dir: &Path| {
        let args = [
            "train",
            "--resume",
            path_str(&run),
            "--epochs",
            "2",
            "--data",
        ];
        wgrad(&[&args[..], &[path_str(dir)]].concat())
    };
    assert_eq!(resume(elsewhere.path()).code, Some(0));
    // One label changed: other data.
    let mut labels = std::fs::read(data.path().join(TRAIN_LABELS_FILE)).unwrap();
    *labels.last_mut().unwrap() ^= 1;
    write(
        elsewhere.path(),
        &format!("{TRAIN_LABELS_FILE}.gz"),
        &gzip(&labels),
    );
    let refused = resume(elsewhere.path());
    assert_eq!(refused.code, Some(ERROR_EXIT), "{}", refused.stderr);
    assert_mentions(
        &refused.stderr,
        &["was trained on", "sha256", "point --data at the run's data"],
    );
}

#[test]
fn init_from_a_wgrad_checkpoint_needs_no_net_flags() {
    let data = data_folder();
    let out = TempDir::new().unwrap();
    let conv = out.path().join("conv.st");
    let args = train_args(
        data.path(),
        RUNS[2],
        &["--epochs", "1", "--save", path_str(&conv)],
    );
    let trained = json(&wgrad(&args));
    let again = [
        "train",
        "--data",
        path_str(data.path()),
        "--epochs",
        "1",
        "--json",
    ];
    let from = json(&wgrad(
        &[&again[..], &["--init-from", path_str(&conv)]].concat(),
    ));
    assert_eq!(from["spec"]["layers"], trained["spec"]["layers"]);
    // Net flags still win, and a net of other shapes names both.
    let other = wgrad(
        &[
            &again[..],
            &["--init-from", path_str(&conv), "--hidden", "8"],
        ]
        .concat(),
    );
    assert_eq!(other.code, Some(ERROR_EXIT), "{}", other.stderr);
    assert_mentions(&other.stderr, &["W1", "[4, 1, 3, 3]", "[144, 8]"]);
}

#[test]
fn a_file_without_a_run_cannot_be_resumed_and_a_finished_run_asks_for_more_epochs() {
    let data = data_folder();
    let out = TempDir::new().unwrap();
    let run = out.path().join("run.st");
    stored_run(data.path(), &run);
    let finished = wgrad(&["train", "--resume", path_str(&run)]);
    assert_eq!(finished.code, Some(ERROR_EXIT), "{}", finished.stderr);
    assert_mentions(&finished.stderr, &["already taken 60 steps", "--epochs 2"]);

    let plain = out.path().join("plain.st");
    let spec = NetSpec::mlp(144, &[24, 16], 10, Activation::Relu);
    let params = vec![0.01; spec.layout().total];
    checkpoint::save(&plain, &spec.layout(), &params, &Default::default()).unwrap();
    let refused = wgrad(&["train", "--resume", path_str(&plain)]);
    assert_eq!(refused.code, Some(ERROR_EXIT), "{}", refused.stderr);
    assert_mentions(&refused.stderr, &["not a run to resume", "--init-from"]);
}

#[test]
fn periodic_checkpoints_keep_the_newest_k() {
    let data = data_folder();
    let out = TempDir::new().unwrap();
    let run = out.path().join("run.st");
    let every = [
        "--epochs",
        "3",
        "--checkpoint-every",
        "1",
        "--keep",
        "2",
        "--save",
    ];
    json(&wgrad(&train_args(
        data.path(),
        RUNS[0],
        &[&every[..], &[path_str(&run)]].concat(),
    )));
    assert_eq!(
        entries(out.path()),
        ["run.st", "run.step120.st", "run.step180.st"]
    );
    // Each is a run to resume: the one at the end of epoch 2 continues to the final run.
    let end = out.path().join("end.st");
    let from = out.path().join("run.step120.st");
    let resumed = wgrad(&[
        "train",
        "--resume",
        path_str(&from),
        "--save",
        path_str(&end),
    ]);
    assert_eq!(resumed.code, Some(0), "{}", resumed.stderr);
    assert!(tensors(&end) == tensors(&run));
}
