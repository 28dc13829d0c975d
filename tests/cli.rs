//! The `wgrad` binary as a user meets it: one test per bad input, each checking the exit status,
//! that stderr names the problem and the fix, that stdout stays empty (no half report for a
//! script to parse), and that no checkpoint is left where `--save` asked for one; then the
//! success paths (`devices --json`, `train --json --save`, `--init-from`, determinism).
//!
//! Synthetic MNIST folders are written into temp dirs with tiny images, so every run takes well
//! under a second on lavapipe.

use std::fs;
use std::path::{Path, PathBuf};

mod common;

use common::cli::*;
use serde_json::Value;
use tempfile::TempDir;
use wgrad::data::{TEST_IMAGES, TEST_LABELS, TRAIN_IMAGES, TRAIN_LABELS};

// ---------------------------------------------------------------------------------------------
// Running the binary

/// Runs `wgrad train ARGS --json --save OUT/model.safetensors` in a fresh output folder and
/// checks that it fails with `ERROR_EXIT`, prints nothing on stdout, names every one of
/// `expected` on stderr, and leaves the output folder empty (no checkpoint, no probe or temp
/// file). Returns stderr.
fn train_fails(args: &[&str], expected: &[&str]) -> String {
    let out = TempDir::new().unwrap();
    let save = out.path().join("model.safetensors");
    let mut all = vec!["train"];
    all.extend_from_slice(args);
    all.extend(["--json", "--save", path_str(&save)]);
    let run = wgrad_fails(&all, expected);
    assert!(
        run.stdout.trim().is_empty(),
        "a failed run printed on stdout:\n{}",
        run.stdout
    );
    assert_eq!(
        entries(out.path()),
        Vec::<String>::new(),
        "a failed run left files where --save pointed; stderr:\n{}",
        run.stderr
    );
    run.stderr
}

/// Like [`train_fails`], and also checks that the error came before the GPU was opened (the CLI
/// says which adapter it uses as soon as it opens one): bad arguments cost no device time.
fn train_fails_before_gpu(args: &[&str], expected: &[&str]) -> String {
    let stderr = train_fails(args, expected);
    assert!(
        !stderr.contains("wgrad: adapter"),
        "the GPU was opened before the bad input was noticed:\n{stderr}"
    );
    stderr
}

fn train_json(args: &[&str]) -> Value {
    let mut all = vec!["train"];
    all.extend_from_slice(args);
    all.push("--json");
    let run = wgrad(&all);
    assert_eq!(run.code, Some(0), "wgrad {all:?} failed:\n{}", run.stderr);
    assert_eq!(
        run.stdout.trim().lines().count(),
        1,
        "--json should print exactly one line:\n{}",
        run.stdout
    );
    let value: Value = serde_json::from_str(run.stdout.trim())
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{}", run.stdout));
    assert!(value.is_object(), "{value}");
    value
}

fn number(value: &Value, key: &str) -> f64 {
    value[key]
        .as_f64()
        .unwrap_or_else(|| panic!("{key} is not a number in {value}"))
}

// ---------------------------------------------------------------------------------------------
// Synthetic IDX folders

const TRAIN_COUNT: u32 = 200;
const TEST_COUNT: u32 = 50;
const SIDE: u32 = 5;

/// A valid folder of 5×5 images, 200 train and 50 test: training images gzip-compressed, the
/// rest raw, as MNIST mirrors mix them. Each data test breaks exactly one thing in it.
fn valid_folder() -> TempDir {
    let dir = TempDir::new().unwrap();
    let d = dir.path();
    write(
        d,
        &format!("{TRAIN_IMAGES}.gz"),
        &gzip(&images_idx(TRAIN_COUNT, SIDE)),
    );
    write(d, TRAIN_LABELS, &labels_idx(TRAIN_COUNT));
    write(d, TEST_IMAGES, &images_idx(TEST_COUNT, SIDE));
    write(d, TEST_LABELS, &labels_idx(TEST_COUNT));
    dir
}

/// A checkpoint written by `wgrad train` itself (1 epoch on the bundled set).
fn trained_checkpoint(dir: &Path, hidden: &str) -> PathBuf {
    let path = dir.join(format!("hidden-{hidden}.safetensors"));
    let run = wgrad(&[
        "train",
        "--hidden",
        hidden,
        "--epochs",
        "1",
        "--save",
        path_str(&path),
    ]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert!(path.is_file());
    path
}

// ---------------------------------------------------------------------------------------------
// The baseline the data tests break

#[test]
fn valid_synthetic_folder_trains() {
    let data = valid_folder();
    let epochs = 4;
    let report = train_json(&[
        "--data",
        path_str(data.path()),
        "--hidden",
        "8",
        "--batch-size",
        "20",
        "--epochs",
        &epochs.to_string(),
    ]);
    assert_eq!(report["spec"]["input"], 25, "{report}");
    assert_eq!(
        report["spec"]["image"],
        serde_json::json!([1, 5, 5]),
        "{report}"
    );
    assert_eq!(report["spec"]["hidden"], serde_json::json!([8]), "{report}");
    // 200 images in batches of 20: ten steps an epoch.
    assert_eq!(report["steps"], 10 * epochs, "{report}");
    let history = report["history"].as_array().expect("history is a list");
    assert_eq!(history.len(), epochs, "{report}");
    for (k, h) in history.iter().enumerate() {
        assert_eq!(h["epoch"], k + 1, "{report}");
        // Accuracies are counts over the whole sets: multiples of 1/200 and 1/50.
        for (key, count) in [
            ("train_accuracy", TRAIN_COUNT),
            ("test_accuracy", TEST_COUNT),
        ] {
            let correct = number(h, key) * f64::from(count);
            assert!(
                (correct - correct.round()).abs() < 1e-6,
                "{key} {} is not a count over {count} images: {report}",
                number(h, key)
            );
        }
    }
    let first = &history[0];
    let last = &history[epochs - 1];
    assert!(
        number(last, "train_loss") < 0.5 * number(first, "train_loss"),
        "the loss does not fall: {report}"
    );
    // Digit d lights pixel d, which a net learns in a few epochs.
    assert!(number(&report, "test_accuracy") >= 0.9, "{report}");
    assert_eq!(report["test_accuracy"], last["test_accuracy"], "{report}");
    assert_eq!(report["train_accuracy"], last["train_accuracy"], "{report}");
    assert_eq!(report["final_loss"], last["train_loss"], "{report}");
}

#[test]
fn optimizer_flags_set_their_own_hyperparameters() {
    // Every value differs from its default and from the others, so that a flag wired to the
    // wrong field (β1 into β2, --eps into --alpha) shows.
    let data = valid_folder();
    let common = [
        "--data",
        path_str(data.path()),
        "--hidden",
        "4",
        "--batch-size",
        "50",
        "--epochs",
        "1",
    ];
    let cases: [(&[&str], serde_json::Value); 4] = [
        (
            &[
                "--optimizer",
                "adam",
                "--lr",
                "0.002",
                "--beta1",
                "0.8",
                "--beta2",
                "0.95",
                "--eps",
                "1e-6",
                "--amsgrad",
                "--optim-weight-decay",
                "0.03",
            ],
            serde_json::json!({"name": "adam", "lr": 0.002, "beta1": 0.8, "beta2": 0.95, "eps": 1e-6, "amsgrad": true, "weight_decay": 0.03}),
        ),
        (
            &["--optimizer", "adamw", "--beta1", "0.7", "--beta2", "0.9"],
            serde_json::json!({"name": "adamw", "lr": 1e-3, "beta1": 0.7, "beta2": 0.9, "eps": 1e-8, "amsgrad": false, "weight_decay": 1e-2}),
        ),
        (
            &[
                "--optimizer",
                "rmsprop",
                "--alpha",
                "0.9",
                "--eps",
                "1e-7",
                "--momentum",
                "0.5",
                "--centered",
            ],
            serde_json::json!({"name": "rmsprop", "lr": 1e-2, "alpha": 0.9, "eps": 1e-7, "momentum": 0.5, "centered": true, "weight_decay": 0.0}),
        ),
        (
            &[
                "--optimizer",
                "adagrad",
                "--lr-decay",
                "0.1",
                "--initial-accumulator",
                "0.2",
                "--eps",
                "1e-9",
            ],
            serde_json::json!({"name": "adagrad", "lr": 1e-2, "lr_decay": 0.1, "eps": 1e-9, "initial_accumulator": 0.2, "weight_decay": 0.0}),
        ),
    ];
    for (flags, expected) in cases {
        let mut args = common.to_vec();
        args.extend_from_slice(flags);
        let report = train_json(&args);
        assert_eq!(report["optimizer"], expected, "{flags:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// Data

#[test]
fn data_folder_that_does_not_exist() {
    let parent = TempDir::new().unwrap();
    let missing = parent.path().join("no-such-mnist");
    train_fails_before_gpu(
        &["--data", path_str(&missing)],
        &[
            path_str(&missing),
            "does not exist",
            "MNIST's four files train-images-idx3-ubyte",
            "data_batch_1.bin",
        ],
    );
}

#[test]
fn data_folder_missing_one_file_names_it() {
    let data = valid_folder();
    fs::remove_file(data.path().join(TEST_LABELS)).unwrap();
    train_fails_before_gpu(
        &["--data", path_str(data.path())],
        &[
            &format!("{TEST_LABELS} not found in {}", data.path().display()),
            &format!("tried {TEST_LABELS}.gz and {TEST_LABELS}"),
            "the folder must hold the four standard MNIST files",
        ],
    );
}

#[test]
fn data_corrupt_gzip() {
    let data = valid_folder();
    let file = data.path().join(format!("{TRAIN_IMAGES}.gz"));
    let mut bytes = fs::read(&file).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle..].iter_mut().for_each(|b| *b ^= 0x5a);
    fs::write(&file, bytes).unwrap();
    train_fails_before_gpu(
        &["--data", path_str(data.path())],
        &[
            path_str(&file),
            "corrupt gzip data",
            "download the file again",
        ],
    );
}

#[test]
fn data_wrong_magic_from_swapped_files() {
    let data = valid_folder();
    // The test images file holds labels: what a swapped or renamed download looks like.
    let file = write(data.path(), TEST_IMAGES, &labels_idx(TEST_COUNT));
    train_fails_before_gpu(
        &["--data", path_str(data.path())],
        &[
            path_str(&file),
            "magic number 2049",
            "IDX labels",
            "expected 2051",
            "not swapped or renamed",
        ],
    );
}

#[test]
fn data_truncated_file() {
    let data = valid_folder();
    let mut bytes = images_idx(TEST_COUNT, SIDE);
    let full = bytes.len();
    bytes.truncate(full - 10);
    let file = write(data.path(), TEST_IMAGES, &bytes);
    train_fails_before_gpu(
        &["--data", path_str(data.path())],
        &[
            &format!("{} is truncated", file.display()),
            &format!("calls for {full} bytes"),
            &format!("it holds {}", full - 10),
            "download the file again",
        ],
    );
}

#[test]
fn data_image_and_label_counts_differ() {
    let data = valid_folder();
    write(data.path(), TRAIN_LABELS, &labels_idx(TRAIN_COUNT - 1));
    train_fails_before_gpu(
        &["--data", path_str(data.path())],
        &[
            &format!("holds {TRAIN_COUNT} images"),
            &format!("{TRAIN_LABELS} holds {} labels", TRAIN_COUNT - 1),
            "each images file needs the labels file of the same set",
        ],
    );
}

/// Labels may run past 9 (the class count is the largest label + 1), but not past classes that
/// have no image: label 30 among digits is a corrupt file, not a 31-class set.
#[test]
fn data_label_that_leaves_classes_empty() {
    let data = valid_folder();
    let mut labels = labels_for(TEST_COUNT);
    labels[3] = 30;
    let file = write(
        data.path(),
        TEST_LABELS,
        &idx(LABELS_MAGIC, &[TEST_COUNT], &labels),
    );
    train_fails_before_gpu(
        &["--data", path_str(data.path())],
        &[
            path_str(&file),
            "label 30 at index 3 makes 31 classes",
            "classes 10-29 have no image",
            "download the file again",
        ],
    );
}

/// The CLI sizes the net's input from the data, so 25-pixel images can only meet a 784-input
/// net through a checkpoint made for 784 inputs. The folder itself is valid (it trains without
/// the checkpoint): the error is about the fit, and must name the tensor and both shapes.
#[test]
fn data_images_do_not_fit_the_checkpoint_net() {
    let data = valid_folder();
    let ckpt_dir = TempDir::new().unwrap();
    let ckpt = trained_checkpoint(ckpt_dir.path(), "16");
    train_json(&[
        "--data",
        path_str(data.path()),
        "--hidden",
        "16",
        "--batch-size",
        "20",
        "--epochs",
        "1",
    ]);
    train_fails_before_gpu(
        &[
            "--data",
            path_str(data.path()),
            "--hidden",
            "16",
            "--init-from",
            path_str(&ckpt),
        ],
        &[
            path_str(&ckpt),
            "tensor W1 has shape [784, 16] in the file but the net needs [25, 16]",
            "other layer sizes",
        ],
    );
}

// ---------------------------------------------------------------------------------------------
// Arguments

#[test]
fn batch_size_zero() {
    train_fails_before_gpu(
        &["--batch-size", "0"],
        &["batch size must be at least 1", "--batch-size"],
    );
}

#[test]
fn epochs_zero() {
    train_fails_before_gpu(
        &["--epochs", "0"],
        &["epochs must be at least 1", "--epochs"],
    );
}

#[test]
fn lr_zero() {
    train_fails_before_gpu(
        &["--lr", "0"],
        &["learning rate must be a finite number > 0, got 0", "(--lr)"],
    );
}

/// `--lr -1` as a user types it. clap treats "-1" as an unknown flag unless `--lr` allows
/// negative numbers, which would hide the real problem behind "unexpected argument '-1'".
#[test]
fn lr_negative() {
    train_fails_before_gpu(
        &["--lr", "-1"],
        &[
            "learning rate must be a finite number > 0, got -1",
            "(--lr)",
        ],
    );
}

#[test]
fn lr_negative_with_equals_sign() {
    train_fails_before_gpu(
        &["--lr=-1"],
        &[
            "learning rate must be a finite number > 0, got -1",
            "(--lr)",
        ],
    );
}

#[test]
fn lr_nan() {
    train_fails_before_gpu(
        &["--lr", "NaN"],
        &[
            "learning rate must be a finite number > 0, got NaN",
            "(--lr)",
        ],
    );
}

#[test]
fn unknown_optimizer() {
    train_fails_before_gpu(
        &["--optimizer", "lbfgs"],
        &[
            "unknown optimizer 'lbfgs'",
            "sgd, momentum, nesterov, adagrad, rmsprop, adam, adamw",
        ],
    );
}

#[test]
fn unknown_activation() {
    train_fails_before_gpu(
        &["--activation", "swish"],
        &[
            "unknown activation 'swish'",
            "use 'relu', 'sigmoid' or 'tanh'",
        ],
    );
}

#[test]
fn hidden_layer_of_size_zero() {
    train_fails_before_gpu(
        &["--hidden", "100,0"],
        &[
            "hidden layer 2 has size 0",
            "every hidden size must be at least 1",
        ],
    );
}

// ---------------------------------------------------------------------------------------------
// Checkpoints

#[test]
fn init_from_a_file_that_is_not_safetensors() {
    let dir = TempDir::new().unwrap();
    let bogus = write(
        dir.path(),
        "notes.safetensors",
        b"these are notes, not tensors\n",
    );
    train_fails_before_gpu(
        &["--init-from", path_str(&bogus)],
        &[
            path_str(&bogus),
            "not a safetensors file",
            "expected a file written by wgrad or by safetensors' save_file",
        ],
    );
}

#[test]
fn init_from_a_checkpoint_of_other_layer_sizes() {
    let dir = TempDir::new().unwrap();
    let ckpt = trained_checkpoint(dir.path(), "20");
    train_fails_before_gpu(
        &["--hidden", "30", "--init-from", path_str(&ckpt)],
        &[
            path_str(&ckpt),
            "tensor W1 has shape [784, 20] in the file but the net needs [784, 30]",
            "the checkpoint was saved for a net with other layer sizes",
        ],
    );
}

#[test]
fn save_into_a_missing_folder_fails_before_training() {
    let parent = TempDir::new().unwrap();
    let missing = parent.path().join("no-such-dir");
    let target = missing.join("model.safetensors");
    let run = wgrad(&["train", "--save", path_str(&target), "--json"]);
    assert_eq!(run.code, Some(ERROR_EXIT), "{}", run.stderr);
    assert!(run.stdout.is_empty(), "{}", run.stdout);
    assert_mentions(
        &run.stderr,
        &[
            &format!("folder {} does not exist", missing.display()),
            &format!("mkdir -p {}", missing.display()),
        ],
    );
    // Before training: no adapter opened, no epoch run; and nothing created on the way.
    assert!(!run.stderr.contains("wgrad: adapter"), "{}", run.stderr);
    assert!(!run.stderr.contains("epoch"), "{}", run.stderr);
    assert_eq!(entries(parent.path()), Vec::<String>::new());
}

// ---------------------------------------------------------------------------------------------
// Divergence

/// The step number of "… at step N; …" in a divergence message.
fn diverged_step(stderr: &str) -> u64 {
    let after = stderr
        .split("at step ")
        .nth(1)
        .unwrap_or_else(|| panic!("no step number:\n{stderr}"));
    let digits: String = after.chars().take_while(char::is_ascii_digit).collect();
    digits
        .parse()
        .unwrap_or_else(|_| panic!("no step number:\n{stderr}"))
}

/// The loss value of "the loss became V at step …".
fn diverged_value(stderr: &str) -> String {
    let after = stderr
        .split("the loss became ")
        .nth(1)
        .unwrap_or_else(|| panic!("no loss value:\n{stderr}"));
    after.split(' ').next().unwrap().to_string()
}

#[test]
fn divergence_exits_non_zero_and_saves_nothing() {
    // Plain SGD with an absurd rate blows the f32 weights up within the first steps.
    let stderr = train_fails(
        &[
            "--optimizer",
            "sgd",
            "--lr",
            "1e20",
            "--hidden",
            "16",
            "--epochs",
            "1",
        ],
        &[
            "training diverged",
            "at step ",
            "lower the learning rate (--lr)",
        ],
    );
    let step = diverged_step(&stderr);
    // 8004 bundled images / batch 100 = 80 steps in the epoch.
    assert!((1..=80).contains(&step), "step {step}:\n{stderr}");
    assert!(!stderr.contains("saved"), "{stderr}");
}

/// The loss named in the message must be the one that was not finite, whatever the number of
/// steps per submit. (At lr 1e10 the loss goes infinite at one step and finite again after it,
/// so reading back "the last step's loss" at the end of a submit reports a finite number.)
#[test]
fn divergence_reports_the_loss_of_the_step_that_diverged() {
    let args = |steps_per_submit: &'static str| {
        [
            "--optimizer",
            "sgd",
            "--lr",
            "1e20",
            "--hidden",
            "16",
            "--epochs",
            "1",
            "--steps-per-submit",
            steps_per_submit,
        ]
    };
    let expected = ["training diverged", "lower the learning rate (--lr)"];
    let one = train_fails(&args("1"), &expected);
    let forty = train_fails(&args("40"), &expected);
    assert_eq!(diverged_step(&one), diverged_step(&forty), "{one}\n{forty}");
    for stderr in [&one, &forty] {
        let value = diverged_value(stderr);
        let parsed: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("loss {value:?} is not a number:\n{stderr}"));
        assert!(
            !parsed.is_finite(),
            "the message names a finite loss {value} as the divergence:\n{stderr}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Success paths

#[test]
fn devices_json_lists_an_adapter() {
    let run = wgrad(&["devices", "--json"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let adapters: Value = serde_json::from_str(&run.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}):\n{}", run.stdout));
    let list = adapters.as_array().expect("a JSON array of adapters");
    assert!(
        !list.is_empty(),
        "no adapter: install mesa-vulkan-drivers libvulkan1"
    );
    for a in list {
        for key in ["name", "backend", "device_type"] {
            assert!(
                a[key].as_str().is_some_and(|s| !s.is_empty()),
                "{key} in {a}"
            );
        }
        assert!(a["f64"].is_boolean(), "f64 in {a}");
    }
}

#[test]
fn train_json_saves_a_checkpoint_that_init_from_resumes() {
    let dir = TempDir::new().unwrap();
    let ckpt = dir.path().join("model.safetensors");
    let report = train_json(&["--hidden", "16", "--epochs", "1", "--save", path_str(&ckpt)]);
    for key in [
        "test_accuracy",
        "train_accuracy",
        "final_loss",
        "seconds",
        "samples_per_second",
    ] {
        let v = number(&report, key);
        assert!(v.is_finite() && v > 0.0, "{key} = {v} in {report}");
    }
    for key in ["test_accuracy", "train_accuracy"] {
        assert!(number(&report, key) <= 1.0, "{key} in {report}");
    }
    // One epoch of a 784-16-10 net on 8k real digits is far better than chance.
    assert!(number(&report, "test_accuracy") > 0.5, "{report}");
    assert_eq!(report["epochs"], 1, "{report}");
    for key in ["name", "backend", "device_type"] {
        assert!(
            report["adapter"][key]
                .as_str()
                .is_some_and(|s| !s.is_empty()),
            "adapter.{key} in {report}"
        );
    }
    // The checkpoint is there, whole, and holds exactly the net's tensors.
    assert_eq!(entries(dir.path()), ["model.safetensors"]);
    let spec = wgrad::nn::NetSpec::mlp(784, &[16], 10, wgrad::nn::Activation::Relu);
    let loaded = wgrad::checkpoint::load(&ckpt, &spec.layout()).unwrap();
    assert_eq!(loaded.metadata["format"], "wgrad-mlp");
    assert!(loaded.params.iter().any(|&v| v != 0.0));

    // Resuming starts from the trained weights: the first epoch's loss is already lower.
    let resumed = train_json(&[
        "--hidden",
        "16",
        "--epochs",
        "1",
        "--init-from",
        path_str(&ckpt),
    ]);
    assert!(
        number(&resumed, "final_loss") < number(&report, "final_loss"),
        "resumed {resumed}\nfirst {report}"
    );
}

#[test]
fn same_seed_gives_identical_results() {
    let args = ["--hidden", "16", "--epochs", "1", "--seed", "7"];
    let first = train_json(&args);
    let second = train_json(&args);
    for key in ["test_accuracy", "train_accuracy", "final_loss"] {
        assert_eq!(first[key], second[key], "{key}: {first}\n{second}");
    }
    let other = train_json(&["--hidden", "16", "--epochs", "1", "--seed", "8"]);
    assert_ne!(first["final_loss"], other["final_loss"], "the seed is used");
}

#[test]
fn bad_layer_specs_fail_before_the_gpu_opens() {
    train_fails_before_gpu(
        &["--layers", "conv8x3,relu,lstm8,affine10"],
        &["unknown layer", "lstm8"],
    );
    train_fails_before_gpu(
        &["--layers", "conv8x40,affine10"],
        &["larger than its 28×28 input"],
    );
    train_fails_before_gpu(&["--layers", "affine100,dropout1.5,affine10"], &["[0, 1)"]);
    train_fails_before_gpu(
        &["--layers", "conv8x3,relu,maxpool2,affine7"],
        &["10 classes", "affine10"],
    );
    train_fails_before_gpu(
        &["--model", "resnet"],
        &["unknown model 'resnet'", "simple-conv"],
    );
    train_fails_before_gpu(&["--model", "simple-conv", "--hidden", "50"], &["--hidden"]);
    train_fails_before_gpu(&["--dropout", "1"], &["dropout", "[0, 1)"]);
}

#[test]
fn batchnorm_checkpoint_keeps_its_running_statistics() {
    let out = TempDir::new().unwrap();
    let save = out.path().join("bn.safetensors");
    let args = [
        "--hidden",
        "16",
        "--batchnorm",
        "--dropout",
        "0.1",
        "--epochs",
        "1",
    ];
    let mut first: Vec<&str> = args.to_vec();
    first.extend(["--save", path_str(&save)]);
    train_json(&first);
    let var = wgrad::checkpoint::load_optional(&save, "running_var1", &[16])
        .unwrap()
        .expect("running_var1 is saved");
    assert!(
        var.iter().all(|v| v.is_finite() && *v > 0.0) && var.iter().any(|v| *v != 1.0),
        "{var:?}"
    );
    let mut resumed: Vec<&str> = args.to_vec();
    resumed.extend(["--init-from", path_str(&save)]);
    let run = train_json(&resumed);
    assert!(number(&run, "test_accuracy") > 0.5);
}

#[test]
fn gradcheck_after_some_training_steps_passes() {
    // `wgrad gradcheck` runs in f64 where the adapter has it, and these figures assume f64.
    if !common::f64_runs() {
        return;
    }
    let run = wgrad(&[
        "gradcheck",
        "--hidden",
        "8",
        "--after-steps",
        "30",
        "--params",
        "W2,b2",
        "--json",
    ]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let value: Value = serde_json::from_str(run.stdout.trim()).unwrap();
    assert_eq!(value["passed"], true);
    assert_eq!(value["tensors"].as_array().unwrap().len(), 2);
}

#[test]
fn gradcheck_saves_both_gradients_in_f64() {
    // `wgrad gradcheck` runs in f64 where the adapter has it, and these figures assume f64.
    if !common::f64_runs() {
        return;
    }
    let out = TempDir::new().unwrap();
    let grads = out.path().join("grads.safetensors");
    let run = wgrad(&[
        "gradcheck",
        "--hidden",
        "4",
        "--save-grads",
        path_str(&grads),
        "--json",
    ]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let report: Value = serde_json::from_str(run.stdout.trim()).unwrap();
    assert_eq!(report["passed"], true, "{report}");
    let bytes = std::fs::read(&grads).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let read = |name: &str| -> Vec<f64> {
        let t = file
            .tensor(name)
            .unwrap_or_else(|_| panic!("{name} missing"));
        assert_eq!(t.dtype(), safetensors::Dtype::F64, "{name}");
        t.data()
            .chunks_exact(8)
            .map(|b| f64::from_le_bytes(b.try_into().unwrap()))
            .collect()
    };
    assert_eq!(file.tensor("numeric.W1").unwrap().shape(), &[784, 4]);
    // The saved gradients are the ones the report's figures were computed from.
    let tensors = report["tensors"].as_array().unwrap();
    assert_eq!(tensors.len(), 4, "{report}");
    for t in tensors {
        let name = t["name"].as_str().unwrap();
        assert_eq!(t["kink_crossings"], 0, "{report}");
        let a = read(&format!("analytic.{name}"));
        let n = read(&format!("numeric.{name}"));
        assert_eq!(a.len(), n.len(), "{name}");
        assert_eq!(t["numel"], a.len(), "{name}");
        assert!(a != n, "{name}: the two gradients are the same values");
        let diff2: f64 = a.iter().zip(&n).map(|(x, y)| (x - y) * (x - y)).sum();
        let a2: f64 = a.iter().map(|x| x * x).sum();
        let mean_abs = a.iter().zip(&n).map(|(x, y)| (x - y).abs()).sum::<f64>() / a.len() as f64;
        for (key, value) in [
            ("norm_rel_err", (diff2 / a2).sqrt()),
            ("mean_abs_diff", mean_abs),
        ] {
            let reported = number(t, key);
            assert!(
                (reported - value).abs() <= 1e-9 * value.abs(),
                "{name}: the report's {key} {reported:e} is not that of the saved gradients ({value:e})"
            );
        }
    }
}

/// BatchNorm over one sample makes every gradient below it exactly 0, so the check passes
/// without checking anything (the book's ch06 check does this): the report says so, and says
/// nothing when the batch has two samples.
#[test]
fn gradcheck_flags_batchnorm_over_a_batch_of_one() {
    if !common::f64_runs() {
        return;
    }
    let check = |batch: &str| -> Value {
        let run = wgrad(&[
            "gradcheck",
            "--hidden",
            "6",
            "--batchnorm",
            "--crop",
            "8",
            "--batch",
            batch,
            "--json",
        ]);
        assert_eq!(run.code, Some(0), "{}", run.stderr);
        serde_json::from_str(run.stdout.trim()).unwrap()
    };
    let one = check("1");
    let why = one["degenerate"]
        .as_str()
        .expect("a batch of one is degenerate");
    assert!(why.contains("--batch 2"), "{why}");
    assert!(why.contains("W1, b1"), "{why}");
    let two = check("2");
    assert!(two["degenerate"].is_null(), "{two}");
    assert_eq!(two["passed"], true, "{two}");
}

/// A correct backward pass that fails against the central differences at h alone: BatchNorm
/// over the small pre-activations of the 0.01 init curves the loss sharply on the scale of h,
/// and W1's differences err by h² (2.2e-6 of its norm, past the 1e-6 bound). The check takes
/// the extrapolation from h and h/2 for it, which cancels the h² term, says that it did, and
/// passes; the other tensors pass at h and keep their figures there.
#[test]
fn gradcheck_extrapolates_past_truncation_error_that_fails_a_correct_gradient() {
    if !common::f64_runs() {
        return;
    }
    let run = wgrad(&[
        "gradcheck",
        "--layers",
        "affine12,bn,relu,affine9,bn,relu,affine10",
        "--crop",
        "8",
        "--params",
        "W1,W3",
        "--json",
    ]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let r: Value = serde_json::from_str(run.stdout.trim()).unwrap();
    assert_eq!(r["passed"], true, "{r}");
    let (w1, w3) = (&r["tensors"][0], &r["tensors"][1]);
    let at_h = w1["failed_at_h"]["norm_rel_err"]
        .as_f64()
        .expect("W1 failed at h");
    assert!(at_h > 1e-6, "{w1}");
    let extrapolated = w1["norm_rel_err"].as_f64().unwrap();
    assert!(extrapolated < 1e-8, "{w1}");
    assert!(w3["failed_at_h"].is_null(), "{w3}");
    // Two losses an element of W1 and W3 at h, and two of W1 at h/2.
    assert_eq!(r["perturbed_losses"], 2 * (768 + 90) + 2 * 768, "{r}");
}

/// A net too large for the adapter is refused before anything is allocated: 784-60000-60000-10
/// has 3.6e9 parameters (14 GB in f32, 29 GB as the host's f64), past any adapter's 4 GiB
/// binding limit. It used to abort in the host allocator, or, smaller, panic inside wgpu.
/// The two cases end the same way: 20000,20000 used to panic in wgpu (exit 101), and
/// 65535,65535 to abort the allocator (exit 134); the latter is now refused first for its width,
/// past what lavapipe's loop limit lets one invocation sum.
#[test]
fn a_net_too_large_for_the_adapter_is_refused_before_allocation() {
    let cases: [(&str, &[&str]); 3] = [
        (
            "60000,60000",
            &["parameters", "MiB", "binds at once", "narrower"],
        ),
        (
            "20000,20000",
            &["parameters", "MiB", "binds at once", "narrower"],
        ),
        ("65535,65535", &["65535 units", "65504", "narrower"]),
    ];
    for (hidden, expected) in cases {
        let run = wgrad(&["train", "--hidden", hidden, "--epochs", "1"]);
        assert_eq!(run.code, Some(2), "{hidden}: {}", run.stderr);
        assert_mentions(&run.stderr, expected);
        assert!(!run.stderr.contains("panicked"), "{}", run.stderr);
    }
}

/// Every buffer fits one binding, but together they do not fit any machine: 300 ReLU layers of
/// 30,000 units at a batch of 1000 keep 120 MB each, three times over (108 GB). Refused, naming
/// the memory and the fix, before anything is allocated.
#[test]
fn a_run_too_large_for_memory_is_refused_before_allocation() {
    let mut layers = vec!["affine30000"];
    layers.extend(["relu"; 300]);
    layers.push("affine10");
    let layers = layers.join(",");
    let run = wgrad(&["train", "--layers", &layers, "--batch-size", "1000"]);
    assert_eq!(run.code, Some(2), "{}", run.stderr);
    assert_mentions(&run.stderr, &["GiB of memory", "available", "--batch-size"]);
}

/// Ctrl-C (SIGINT) during training stops after the submit in flight: the run is evaluated,
/// reported as interrupted, saved to --save, and exits 130, where it used to be lost.
#[test]
fn an_interrupted_run_is_evaluated_saved_and_exits_130() {
    let out = TempDir::new().unwrap();
    let save = out.path().join("interrupted.safetensors");
    // Wait until training is under way (its first epoch line), then interrupt it.
    let run = Running::until(
        &[
            "train",
            "--hidden",
            "32",
            "--epochs",
            "500",
            "--steps-per-submit",
            "5",
            "--json",
            "--save",
            path_str(&save),
        ],
        |line| line.contains("epoch "),
    );
    send_signal(&run.child, "INT");
    let seen = run.seen.clone();
    let (status, stdout, rest) = run.finish();
    assert_eq!(status.code(), Some(130), "{seen}{rest}");
    assert_mentions(
        &rest,
        &["interrupted at step", "saved", "wgrad train --resume"],
    );
    let report: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["interrupted"], true, "{report}");
    let steps = report["steps"].as_u64().unwrap();
    assert!(steps > 0 && steps < 500 * 80, "{report}");
    let bytes = std::fs::read(&save).expect("the interrupted run was saved");
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    assert_eq!(file.tensor("W1").unwrap().shape(), &[784, 32]);
}

/// Ctrl-C ends a gradcheck at once, as the default action does: it has nothing to save, and its
/// gradient dump is written atomically at the end, so it leaves no file, half or whole, behind.
#[test]
fn an_interrupted_gradcheck_ends_at_once_and_leaves_no_file() {
    use std::os::unix::process::ExitStatusExt;
    let out = TempDir::new().unwrap();
    let grads = out.path().join("grads.safetensors");
    let check = ["gradcheck", "--hidden", "300,300", "--precision", "f32"];
    let args = [&check[..], &["--save-grads", path_str(&grads)]].concat();
    let run = Running::until(&args, |line| line.contains("adapter"));
    send_signal(&run.child, "INT");
    let status = run.finish().0;
    assert_eq!(status.signal(), Some(2), "{status:?}");
    assert_eq!(entries(out.path()), Vec::<String>::new());
}
